"""Subject-verb agreement (Finlayson et al. 2021 word lists): the next verb agrees with the subject."""

from __future__ import annotations

from tasks.base import Task, TaskData, assemble, require, rng_for, single_tokens

NOUNS = [
    ("athlete", "athletes"),
    ("aunt", "aunts"),
    ("boy", "boys"),
    ("carpenter", "carpenters"),
    ("doctor", "doctors"),
    ("farmer", "farmers"),
    ("father", "fathers"),
    ("friend", "friends"),
    ("girl", "girls"),
    ("guy", "guys"),
    ("kid", "kids"),
    ("lawyer", "lawyers"),
    ("man", "men"),
    ("mother", "mothers"),
    ("poet", "poets"),
    ("singer", "singers"),
    ("teacher", "teachers"),
    ("uncle", "uncles"),
    ("victim", "victims"),
    ("woman", "women"),
    ("guard", "guards"),
    ("chef", "chefs"),
    ("architect", "architects"),
    ("skater", "skaters"),
    ("dancer", "dancers"),
    ("minister", "ministers"),
    ("driver", "drivers"),
    ("assistant", "assistants"),
    ("executive", "executives"),
    ("parent", "parents"),
]
PREPOSITIONS = ["near", "behind", "beside"]
PREPNOUNS = ["bike", "car", "cat", "chair", "desk", "dog", "table", "tree", "truck", "window"]
# Transitive verbs of the relative clause, agreeing with its own subject (noun2).
RC_VERBS = [
    ("likes", "like"),
    ("hates", "hate"),
    ("loves", "love"),
    ("admires", "admire"),
    ("knows", "know"),
    ("sees", "see"),
]
# Answer verbs (singular, plural); pairs that are not single tokens are dropped per tokenizer.
ANSWER_VERBS = [
    ("is", "are"),
    ("has", "have"),
    ("does", "do"),
    ("goes", "go"),
    ("was", "were"),
    ("approves", "approve"),
    ("knows", "know"),
    ("likes", "like"),
    ("says", "say"),
    ("makes", "make"),
    ("takes", "take"),
    ("wants", "want"),
    ("seems", "seem"),
    ("looks", "look"),
    ("gets", "get"),
    ("thinks", "think"),
    ("needs", "need"),
    ("lives", "live"),
    ("works", "work"),
    ("writes", "write"),
]
STRUCTURES = ("simple", "pp", "rc")


# number: the subject's number flipped (same noun); other_noun: a different noun of the other number.
CORRUPTIONS = ("number", "other_noun")


def build(tokenizer, n: int, seed: int, corruption: str = "number") -> TaskData:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown SVA corruption {corruption!r}; choose from {CORRUPTIONS}")
    sing, _ = single_tokens(tokenizer, [s for s, _ in ANSWER_VERBS])
    plur, _ = single_tokens(tokenizer, [p for _, p in ANSWER_VERBS])
    verbs = [(s, p) for s, p in ANSWER_VERBS if s in sing and p in plur]
    dropped_verbs = [f"{s}/{p}" for s, p in ANSWER_VERBS if (s, p) not in verbs]
    require(verbs, 1, "SVA answer verb pairs", "sva")
    vid = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for pair in verbs for w in pair}
    sing_ids, plur_ids = [vid[s] for s, _ in verbs], [vid[p] for _, p in verbs]
    rng, alt = rng_for(seed, "sva"), rng_for(seed, "sva:other_noun")

    def candidates():
        while True:
            structure = rng.choice(STRUCTURES)
            pair = rng.choice(NOUNS)
            number = rng.choice(["singular", "plural"])
            noun, flipped = (pair[0], pair[1]) if number == "singular" else (pair[1], pair[0])
            if structure == "simple":
                suffix = ""
            elif structure == "pp":
                suffix = f" {rng.choice(PREPOSITIONS)} the {rng.choice(PREPNOUNS)}"
            else:
                other = rng.choice([p for p in NOUNS if p != pair])
                n2 = rng.randrange(2)
                suffix = f" that the {other[n2]} {rng.choice(RC_VERBS)[n2]}"
            singular = number == "singular"
            if corruption == "other_noun":  # its own stream: the clean prompts are those of every corruption
                flipped = alt.choice([p for p in NOUNS if p != pair])[1 if singular else 0]
            yield {
                "clean": f"The {noun}{suffix}",
                "corrupt": f"The {flipped}{suffix}",
                "correct": sing_ids if singular else plur_ids,
                "wrong": plur_ids if singular else sing_ids,
                "group": structure,
                "structure": structure,
                "number": number,
                "noun": noun,
                "answer": f"{number} verb",
                "wrong_answer": f"{'plural' if singular else 'singular'} verb",
            }

    return assemble("sva", tokenizer, candidates(), n, "prob_diff", {"verbs": dropped_verbs} if dropped_verbs else {})


TASK = Task(
    name="sva",
    build=build,
    description="subject-verb agreement; metric sum P(verbs of the subject's number) - sum P(other number)",
    canonical=None,  # no canonical head-level circuit for GPT-2
    features=("number",),
    aligned_by=("structure",),
    answer_feature="number",
    corruptions=CORRUPTIONS,
)
