"""The README's quoted times, measured on the README's own commands: each run as a user types it (a fresh
interpreter, default options), wall and CPU seconds, one after another so that no two share the cores.

    uv run python benchmarks/bench_readme.py [--only 02 09] [--with-trainer] [--with-tests]

Writes results/benchmarks/readme_times.csv (command, wall_seconds, cpu_seconds, exit code) and prints it;
the README quotes these numbers with the machine they came from. The offline commands need no network; the
gpt2-random ones need GPT2_TOKENIZER_DIR as every gpt2-random run does.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.core.errors import UserError  # noqa: E402
from lib.io import cli  # noqa: E402

app = cli.script_app(__doc__)

# (key, the README's command after `uv run python`); {tmp} is a scratch results root
COMMANDS = [
    ("02", "02_logit_diff.py --tasks all --model toy"),
    ("09", "09_feature_circuits.py --tasks all --model toy"),
    ("10", "10_attribution_graphs.py --tasks all --model toy"),
    ("05-mib", "05_eap.py --tasks greater-than --model gpt2-random --n-prompts 16"),
]
TRAINER = ("trainer", "-m lib.tools.dictionaries --model toy --out {tmp}/dictionaries")


def measure(command: str, tmp: str) -> dict:
    """Wall and CPU seconds (this child and its children) of one fresh-interpreter run."""
    args = command.format(tmp=tmp).split()
    if not args[0].startswith("-"):
        args += ["--out", tmp]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return {
        "command": f"uv run python {command.format(tmp='DIR')}",
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "exit_code": done.returncode,
    }


@app.command()
def main(
    only: Annotated[str, typer.Option(help="space-separated keys to run: 02 09 10 05-mib (default: all)")] = "",
    with_trainer: Annotated[bool, typer.Option(help="also retrain the shipped dictionaries (~3 min)")] = False,
    with_tests: Annotated[bool, typer.Option(help="also time `uv run pytest` (~5 min)")] = False,
    out: cli.OutOpt = Path("results"),
):
    import pandas as pd

    keys = only.split()
    unknown = [k for k in keys if k not in {key for key, _ in COMMANDS}]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: choose from {', '.join(k for k, _ in COMMANDS)}")
    chosen = [c for c in COMMANDS if not keys or c[0] in keys] + ([TRAINER] if with_trainer else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, command in chosen:
            print(f"{key}: {command}", flush=True)
            rows.append({"key": key, **measure(command, tmp)})
    if with_tests:
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=ROOT).returncode
        rows.append(
            {
                "key": "tests",
                "command": "uv run pytest",
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": float("nan"),
                "exit_code": code,
            }
        )
    table = pd.DataFrame(rows)
    where = Path(out) / "benchmarks"
    where.mkdir(parents=True, exist_ok=True)
    table.to_csv(where / "readme_times.csv", index=False)
    print(f"{os.cpu_count()} CPU cores")
    print(table.to_string(index=False))


if __name__ == "__main__":
    cli.main(app)
