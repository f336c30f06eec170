"""Docstring (Heimersheim & Janiak 2023): predict the next parameter name in a docstring."""

from __future__ import annotations

from tasks.base import Task, TaskData, assemble, require, rng_for, single_tokens

# Common variable names (the original uses 111 single-token names).
NAMES = """data file path name value key user text size index item line node table field model query
result source target url config context request response message state mode option token type code
content count date default error event filter format group header host image input label level limit
logger match module order output page parent port prefix project record ref root row sender shape
status step store string suffix tag task template timeout title update version view width height
location number position price player port results seed session server settings space start stop
summary target test client address account action agent alpha author base batch block buffer cache
callback channel check child color command""".split()
# Common single-token nouns for the descriptions (the original uses 687).
WORDS = """object file system user value number list string name type data model image line page
table point field group level state order result error event option class method function array
set map node tree graph edge path key index item entry record row column cell block unit part piece
message signal source target input output format mode process task job step stage phase cycle time
date hour day week month year period interval range limit size length width height depth weight
price cost rate score count total sum average mean maximum minimum factor ratio angle color shape
pattern style rule policy plan project program version release update change action request response
query answer question problem solution reason""".split()
FUNCTION_NAMES = """load save run check get set update create delete process parse build read write
send fetch compute apply handle render init reset start stop test validate""".split()
# random_random: the def's and the docstring's parameter names all replaced (Heimersheim & Janiak's default);
# random_doc: only the docstring's replaced, the def's kept (their "random_doc").
CORRUPTIONS = ("random_random", "random_doc")

TEMPLATE = (
    "\ndef {fname}({args}):\n"
    '    """{w1} {w2} {w3}\n\n'
    "    :param {dA}: {w4} {w5}\n"
    "    :param {dB}: {w6} {w7}\n"
    "    :param"
)


def build(tokenizer, n: int, seed: int, corruption: str = "random_random", varied: bool = False) -> TaskData:
    """The fixed template (p1, p2, A, B, C, s1); varied=True draws 0-3 prefix and 0-2 suffix args
    (used to train the toy model, so that it cannot answer from a fixed position)."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown docstring corruption {corruption!r}; choose from {CORRUPTIONS}")
    names, dropped_names = single_tokens(tokenizer, sorted(set(NAMES)))
    words, dropped_words = single_tokens(tokenizer, sorted(set(WORDS)))
    require(names, 10, "docstring names", "docstring")
    require(words, 1, "docstring description words", "docstring")
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in names}
    rng = rng_for(seed, "docstring")

    def candidates():
        while True:
            n_pre, n_suf = (rng.randint(0, 3), rng.randint(0, 2)) if varied else (2, 1)
            a, b, c, a2, b2, a3, b3, *rest = rng.sample(names, 7 + n_pre + n_suf)
            pre, suf = rest[:n_pre], rest[n_pre:]
            fname = rng.choice(FUNCTION_NAMES)
            desc = {f"w{i}": rng.choice(words) for i in range(1, 8)}

            def fill(A, B, dA, dB, pre=pre, c=c, suf=suf, fname=fname, desc=desc):
                args = ", ".join(["self", *pre, A, B, c, *suf])
                return TEMPLATE.format(fname=fname, args=args, dA=dA, dB=dB, **desc)

            others = [*pre, a, b, *suf]
            yield {
                "clean": fill(a, b, a, b),
                "corrupt": fill(a2, b2, a3, b3) if corruption == "random_random" else fill(a, b, a3, b3),
                "correct": [ids[c]],
                "wrong": [ids[w] for w in others],
                "group": f"prefix{n_pre}-suffix{n_suf}",
                "answer_param": c,
                "answer": " " + c,
                "wrong_answer": "".join(" " + w for w in others),
            }

    dropped = {k: v for k, v in [("names", dropped_names), ("words", dropped_words)] if v}
    return assemble("docstring", tokenizer, candidates(), n, "logit_minus_max", dropped)


TASK = Task(
    name="docstring",
    build=build,
    description="docstring parameter completion; metric logit(C) - max logit over the other parameters",
    canonical=None,  # the published circuit is for a 4-layer attention-only model, not GPT-2
    features=("answer_param",),
    aligned_by=("group",),
    answer_feature="answer_param",
    corruptions=CORRUPTIONS,
)
