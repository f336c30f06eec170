"""Greater-than (Hanna et al. 2023): "The {noun} lasted from the year {XXYY} to the year {XX}" -> YY' > YY."""

from __future__ import annotations

from lib.core.errors import UserError
from tasks.base import Task, TaskData, assemble, require, rng_for, single_tokens, token_ids

NOUNS = """abduction accord affair agreement appraisal assaults assessment attack attempts campaign
captivity case challenge chaos clash collaboration coma competition confrontation consequence
conspiracy construction consultation contact contract convention cooperation custody deal decline
decrease demonstrations development disagreement disorder dispute domination dynasty effect effort
employment endeavor engagement epidemic evaluation exchange existence expansion expedition
experiments fall fame flights friendship growth hardship hostility illness impact imprisonment
improvement incarceration increase insurgency invasion investigation journey kingdom marriage
modernization negotiation notoriety obstruction operation order outbreak outcome overhaul patrols
pilgrimage plague plan practice process program progress project pursuit quest raids reforms reign
relationship retaliation riot rise rivalry romance rule sanctions shift siege slump stature stint
strikes study test testing tests therapy tour tradition treaty trial trip unemployment voyage
warfare work""".split()
CENTURIES = range(11, 18)  # years 1100-1799

# Canonical circuit (Hanna et al. 2023, ACDC-style): node groups connected input->early->mid->late->logits.
CANONICAL = {
    "model": "gpt2",
    "groups": [
        ["input"],
        ["a0.h1", "a0.h3", "a0.h5", "m0", "m1", "m2", "m3"],
        ["a5.h5", "a6.h1", "a6.h9", "a7.h10", "a8.h11", "a9.h1"],
        ["m8", "m9", "m10", "m11"],
        ["logits"],
    ],
    # Causal-scrubbing hypothesis: every node of the circuit depends only on the start year YY.
    "scrub": {"*": (("yy",), "all")},
}


def year_tokens(tokenizer) -> dict[int, int]:
    """Token id of each two-digit year suffix "00".."99" that is a single token."""
    out = {}
    for yy in range(100):
        t = token_ids(tokenizer, f"{yy:02d}")
        if len(t) == 1:
            out[yy] = t[0]
    return out


def valid_years(tokenizer) -> list[int]:
    """Years XXYY whose " XXYY" tokenizes as [" XX", "YY"], minus each century's first and last."""
    yy_ids = year_tokens(tokenizer)
    years = []
    for xx in CENTURIES:
        ok = []
        for yy in range(100):
            xx_ids = token_ids(tokenizer, f" {xx}")
            if yy in yy_ids and len(xx_ids) == 1 and token_ids(tokenizer, f" {xx}{yy:02d}") == xx_ids + [yy_ids[yy]]:
                ok.append(xx * 100 + yy)
        years += ok[1:-1]
    return years


# 01: the start year XX01, so every two-digit answer is "greater" (Hanna et al.); random_year: another valid
# year of the same century, so the answer set changes rather than disappears.
CORRUPTIONS = ("01", "random_year")


def build(tokenizer, n: int, seed: int, corruption: str = "01") -> TaskData:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown greater-than corruption {corruption!r}; choose from {CORRUPTIONS}")
    nouns, dropped_nouns = single_tokens(tokenizer, NOUNS)
    require(nouns, 1, "greater-than nouns", "greater-than")
    yy_ids = year_tokens(tokenizer)
    if len(yy_ids) < 100:  # e.g. Llama and Qwen tokenizers split numbers into single digits
        raise UserError(
            f"task greater-than needs every two-digit year ending 00..99 as one token (its metric is "
            f"the probability of the later ones); this tokenizer has {len(yy_ids)} of the 100, so the "
            "task is not defined for it"
        )
    years = require(valid_years(tokenizer), 1, "greater-than years", "greater-than")
    rng, alt = rng_for(seed, "greater-than"), rng_for(seed, "greater-than:random_year")

    def candidates():
        while True:
            noun, year = rng.choice(nouns), rng.choice(years)
            xx, yy = divmod(year, 100)
            text = "The {} lasted from the year {} to the year {}"
            start = xx * 100 + 1
            if corruption == "random_year":  # its own stream: the clean prompts are those of every corruption
                start = alt.choice([y for y in years if y // 100 == xx and y != year])
            yield {
                "clean": text.format(noun, year, xx),
                "corrupt": text.format(noun, start, xx),
                "correct": [yy_ids[y] for y in range(yy + 1, 100)],
                "wrong": [yy_ids[y] for y in range(0, yy + 1)],
                "group": f"{xx}xx",
                "noun": noun,
                "year": year,
                "yy": yy,
                "answer": f">{yy:02d}",
                "wrong_answer": f"<={yy:02d}",
            }

    return assemble(
        "greater-than", tokenizer, candidates(), n, "prob_diff", {"nouns": dropped_nouns} if dropped_nouns else {}
    )


TASK = Task(
    name="greater-than",
    build=build,
    description="greater-than; metric sum P(YY' > YY) - sum P(YY' <= YY) over two-digit tokens",
    canonical=CANONICAL,
    features=("yy",),
    answer_feature="yy",
    corruptions=CORRUPTIONS,
)
