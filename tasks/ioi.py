"""Indirect object identification (Wang et al. 2022): "... [B] gave a [OBJECT] to" -> " [A]"."""

from __future__ import annotations

from tasks.base import Task, TaskData, assemble, require, rng_for, single_tokens

# The 15 BABA templates of Wang et al.; [S1] is the first subject mention, [S2] the second.
BABA_TEMPLATES = [
    "Then, [S1] and [IO] went to the [PLACE]. [S2] gave a [OBJECT] to",
    "Then, [S1] and [IO] had a lot of fun at the [PLACE]. [S2] gave a [OBJECT] to",
    "Then, [S1] and [IO] were working at the [PLACE]. [S2] decided to give a [OBJECT] to",
    "Then, [S1] and [IO] were thinking about going to the [PLACE]. [S2] wanted to give a [OBJECT] to",
    "Then, [S1] and [IO] had a long argument, and afterwards [S2] said to",
    "After [S1] and [IO] went to the [PLACE], [S2] gave a [OBJECT] to",
    "When [S1] and [IO] got a [OBJECT] at the [PLACE], [S2] decided to give it to",
    "When [S1] and [IO] got a [OBJECT] at the [PLACE], [S2] decided to give the [OBJECT] to",
    "While [S1] and [IO] were working at the [PLACE], [S2] gave a [OBJECT] to",
    "While [S1] and [IO] were commuting to the [PLACE], [S2] gave a [OBJECT] to",
    "After the lunch, [S1] and [IO] went to the [PLACE]. [S2] gave a [OBJECT] to",
    "Afterwards, [S1] and [IO] went to the [PLACE]. [S2] gave a [OBJECT] to",
    "Then, [S1] and [IO] had a long argument. Afterwards [S2] said to",
    "The [PLACE] [S1] and [IO] went to had a [OBJECT]. [S2] gave it to",
    "Friends [S1] and [IO] found a [OBJECT] at the [PLACE]. [S2] gave it to",
]
# ABBA mirrors: the indirect object is named first.
ABBA_TEMPLATES = [t.replace("[S1] and [IO]", "[IO] and [S1]") for t in BABA_TEMPLATES]

NAMES = """Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake
Brandon Brian Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew Crystal
Daniel David Dean Edward Elizabeth Emily Eric Eva Ford Frank George Georgia Graham Grant Henry Ian
Jack Jacob Jake James Jamie Jane Jason Jay Jennifer Jeremy Jessica John Jonathan Jordan Joseph
Joshua Justin Kate Kelly Kevin Kyle Laura Leon Lewis Lisa Louis Luke Madison Marco Marcus Maria Mark
Martin Mary Matthew Max Michael Michelle Morgan Patrick Paul Peter Prince Rachel Richard River Robert
Roman Rose Ruby Russell Ryan Sarah Scott Sean""".split()  # 99 names
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
CORRUPTIONS = ("abc", "s2")

# Canonical circuit (Wang et al. 2022), as heads "layer.head" by class, and the ACDC edge rules.
CANONICAL = {
    "model": "gpt2",
    "classes": {
        "name_mover": ["9.9", "10.0", "9.6"],
        "backup_name_mover": ["10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0", "11.9"],
        "negative_name_mover": ["10.7", "11.10"],
        "s_inhibition": ["7.3", "7.9", "8.6", "8.10"],
        "induction": ["5.5", "5.8", "5.9", "6.9"],
        "duplicate_token": ["0.1", "0.10", "3.0"],
        "previous_token": ["2.2", "4.11"],
    },
    # (source class, receiver class, receiver inputs); "input" and "logits" are the graph's ends.
    "edge_rules": [
        ("input", "previous_token", "qkv"),
        ("input", "duplicate_token", "qkv"),
        ("input", "s_inhibition", "q"),
        ("input", "name_mover", "kv"),
        ("input", "backup_name_mover", "kv"),
        ("input", "negative_name_mover", "kv"),
        ("previous_token", "induction", "kv"),
        ("induction", "s_inhibition", "kv"),
        ("duplicate_token", "s_inhibition", "kv"),
        ("s_inhibition", "name_mover", "q"),
        ("s_inhibition", "backup_name_mover", "q"),
        ("s_inhibition", "negative_name_mover", "q"),
        ("name_mover", "logits", ""),
        ("backup_name_mover", "logits", ""),
        ("negative_name_mover", "logits", ""),
    ],
    "mlps_on_paths": True,  # MLPs belong to the input/output paths and keep their edges
    # Causal-scrubbing hypothesis (Wang et al.; Chan et al.): class -> (features its output depends on,
    # the positions where that holds). Nodes not named (MLPs, input) depend on the whole prompt.
    "scrub": {
        "name_mover": (("io_name",), "end"),
        "backup_name_mover": (("io_name",), "end"),
        "negative_name_mover": (("io_name",), "end"),
        "s_inhibition": (("s_name",), "end"),
        "induction": (("s_name",), "s2"),
        "duplicate_token": (("s_name",), "s2"),
        "previous_token": (("s_name",), "s1+1"),
    },
}


def build(tokenizer, n: int, seed: int, corruption: str = "abc") -> TaskData:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown IOI corruption {corruption!r}; choose from {CORRUPTIONS}")
    names, dropped_names = single_tokens(tokenizer, NAMES)
    places, dropped_places = single_tokens(tokenizer, PLACES)
    objects, dropped_objects = single_tokens(tokenizer, OBJECTS)
    require(names, 6, "IOI names", "ioi")
    require(places, 1, "IOI places", "ioi")
    require(objects, 1, "IOI objects", "ioi")
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in names}
    rng = rng_for(seed, "ioi")

    def candidates():
        while True:
            order = rng.choice(["BABA", "ABBA"])
            t = rng.randrange(len(BABA_TEMPLATES))
            template = (BABA_TEMPLATES if order == "BABA" else ABBA_TEMPLATES)[t]
            io, s, x, y, z = rng.sample(names, 5)
            place, obj = rng.choice(places), rng.choice(objects)

            def fill(s1, io_name, s2, template=template, place=place, obj=obj):
                return (
                    template.replace("[S1]", s1)
                    .replace("[IO]", io_name)
                    .replace("[S2]", s2)
                    .replace("[PLACE]", place)
                    .replace("[OBJECT]", obj)
                )

            corrupt = fill(x, y, z) if corruption == "abc" else fill(s, io, x)
            yield {
                "clean": fill(s, io, s),
                "corrupt": corrupt,
                "correct": [ids[io]],
                "wrong": [ids[s]],
                "group": f"{order}-{t:02d}",
                "order": order,
                "template": t,
                "io_name": io,
                "s_name": s,
                "answer": " " + io,
                "wrong_answer": " " + s,
            }

    dropped = {
        k: v for k, v in [("names", dropped_names), ("places", dropped_places), ("objects", dropped_objects)] if v
    }
    return assemble("ioi", tokenizer, candidates(), n, "logit_diff", dropped)


def positions(data: TaskData) -> dict:
    """Per item: the answer position (end), the second subject mention (s2), and the token after the first
    (s1+1); the subject's token is the wrong answer's."""
    import torch

    is_s = data.clean == data.wrong[:, :1]  # [N, P]
    count = is_s.long().cumsum(1)
    s1 = (is_s & (count == 1)).long().argmax(1)
    s2 = (is_s & (count == 2)).long().argmax(1)
    if not bool((count[:, -1] >= 2).all()):
        raise ValueError("an IOI prompt does not mention the subject twice")
    return {"end": data.answer_pos, "s2": s2, "s1+1": torch.minimum(s1 + 1, data.answer_pos)}


TASK = Task(
    name="ioi",
    build=build,
    description="indirect object identification; metric logit(IO) - logit(S)",
    canonical=CANONICAL,
    features=("io_name", "s_name", "order", "template"),
    aligned_by=("order", "template"),
    answer_feature="io_name",
    positions=positions,
    corruptions=CORRUPTIONS,
)
