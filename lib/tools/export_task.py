"""Write a built-in task as a text-pairs file (tasks/files.py), to start a task of your own from a working one:

    uv run python -m lib.tools.export_task ioi --model toy --n 200 --out ioi_pairs.csv

The items are exactly those `--tasks <name> --n-prompts <n> --seed <seed>` builds for that model's tokenizer,
in the same order; each answer is written as its token's text, checked to encode back to the same token."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated

import typer

from lib.core.errors import UserError
from lib.io import checks, cli

app = cli.script_app(__doc__)


def rows_of(data, tokenizer) -> list[dict]:
    """One text-pairs row per item; every answer token's text must encode back to that one token."""
    from tasks.base import token_ids

    def texts(ids) -> list[str]:
        out = []
        for i in (int(t) for t in ids if t >= 0):
            text = tokenizer.decode([i])
            if token_ids(tokenizer, text) != [i]:
                raise UserError(
                    f"answer token {i} ({text!r}) does not encode back to itself with this tokenizer; "
                    "it cannot be written as text"
                )
            out.append(text)
        return out

    return [
        {
            "clean": data.info.clean_text[i],
            "corrupted": data.info.corrupt_text[i],
            "correct": texts(data.correct[i]),
            "wrong": texts(data.wrong[i]),
            "group": str(data.info.group[i]),
            "metric": data.metric_kind,
        }
        for i in range(len(data))
    ]


def write(rows: list[dict], out: Path) -> None:
    """CSV (answers joined by '|') or JSONL (answers as lists), by out's suffix; atomically."""
    from lib.io.results import atomic_write

    if out.suffix == ".csv":
        if any("|" in a for r in rows for a in r["correct"] + r["wrong"]):
            raise UserError("an answer contains '|', the CSV answer separator; write --out as .jsonl")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "correct": "|".join(r["correct"]), "wrong": "|".join(r["wrong"])} for r in rows)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@app.command()
def main(
    task: Annotated[str, typer.Argument(help="a built-in task: ioi, sva, docstring, greater-than")],
    out: Annotated[Path, typer.Option("--out", help="the file to write: .csv or .jsonl (never overwritten)")],
    model: cli.ModelOpt = "gpt2",
    n: Annotated[int, typer.Option("--n", help="items")] = 100,
    seed: cli.SeedOpt = 0,
    corruption: Annotated[str, typer.Option(help="the task's corruption (default: its first)")] = "",
):
    from lib.core.choices import check_model_name
    from tasks import TASK_NAMES

    if task not in TASK_NAMES:
        raise UserError(f"unknown task {task!r}; export one of {', '.join(TASK_NAMES)}")
    checks.check_between(1, cli.MAX_PROMPTS, ("--n", n))
    if not 0 <= seed <= cli.SEED_MAX:
        raise UserError(f"--seed must be between 0 and {cli.SEED_MAX} (got {seed})")
    if out.suffix not in (".csv", ".jsonl"):
        raise UserError(f"--out {out}: write a .csv or a .jsonl file")
    if out.exists():
        raise UserError(f"--out {out} exists; it is never overwritten")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such directory {out.parent}")
    check_model_name(model)
    from lib.core.model import tokenizer_of
    from tasks import TASKS

    spec = TASKS[task]
    if corruption and corruption not in spec.corruptions:
        raise UserError(f"unknown corruption {corruption!r} of {task}; choose from {', '.join(spec.corruptions)}")
    tokenizer = tokenizer_of(model)
    data = spec.build(tokenizer, n, seed, **({"corruption": corruption} if corruption else {}))
    write(rows_of(data, tokenizer), out)
    print(f"wrote {out} ({len(data)} items of {task}, {model}'s tokenizer, seed {seed})")


if __name__ == "__main__":
    cli.main(app)
