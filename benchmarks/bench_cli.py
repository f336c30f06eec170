"""How fast the command line answers, and what a batch cell costs beyond its work, in one run.

    uv run python benchmarks/bench_cli.py [--repeats 3] [--jobs 2]

(a) `python NN_script.py --help` and an option error (`--n-prompts 0`), fresh interpreters, median wall time
    per script, against `python -c "import typer"` (the floor: the interpreter and the CLI library);
(b) one toy cell (02_logit_diff.py, 12 IOI prompts): its work in a warm process, the same cell forked from
    the preloaded server (the local executor's default), and as a fresh interpreter (--no-fork): the
    per-cell overhead is each wall time minus the work;
(c) grids/smoke.toml (10 cells, --jobs 2) with --fork and with --no-fork: wall time, the speed-up, and
    whether the two summary.csv files are byte-identical.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.io import checks, cli  # noqa: E402

app = cli.script_app(__doc__)
CELL = ["--tasks", "ioi", "--model", "toy", "--n-prompts", "12", "--device", "cpu", "--quiet"]


def wall(argv: list[str], repeats: int) -> float:
    """Median wall time of a fresh process."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@app.command()
def main(
    repeats: int = typer.Option(3, help="fresh processes per measurement (median)"),
    jobs: int = typer.Option(2, help="parallel cells of the smoke grid"),
    out: cli.OutOpt = Path("results"),
):
    checks.check_at_least(1, ("--repeats", repeats), ("--jobs", jobs))
    import pandas as pd

    from lib.batch import forked
    from lib.io.results import RunDir

    py = sys.executable
    rows = []
    floor = wall([py, "-c", "import typer"], repeats)
    scripts = sorted(p.name for p in ROOT.glob("[0-9][0-9]_*.py")) + ["batch.py"]
    for script in scripts:
        t_help = wall([py, script, "--help"], repeats)
        rows.append({"measure": f"{script} --help", "seconds": t_help, "floor_seconds": floor, "ratio": t_help / floor})
        if script != "batch.py":
            t_err = wall([py, script, "--n-prompts", "0"], repeats)
            rows.append(
                {
                    "measure": f"{script} --n-prompts 0 (refused)",
                    "seconds": t_err,
                    "floor_seconds": floor,
                    "ratio": t_err / floor,
                }
            )
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # (b) one cell: the work in a warm process (imports already paid), forked, fresh interpreter
        module = cli.load_script("02_logit_diff.py")
        warm = []
        for i in range(repeats + 1):  # the first run also pays lazy imports inside libraries
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(module.app, [*CELL, "--out", str(tmp / f"warm{i}")])
            warm.append(time.perf_counter() - t)
        t_work = statistics.median(warm[1:])
        forked.start()
        forked.run("02_logit_diff.py", [*CELL, "--out", str(tmp / "f0")], tmp)  # the server's preload, not counted
        fork_times = []
        for i in range(repeats):
            t = time.perf_counter()
            r = forked.run("02_logit_diff.py", [*CELL, "--out", str(tmp / f"f{i + 1}")], tmp)
            fork_times.append(time.perf_counter() - t)
            assert r.returncode == 0, r.stderr
        t_fork = statistics.median(fork_times)
        t_fresh = wall([py, "02_logit_diff.py", *CELL, "--out", str(tmp / "fresh")], repeats)
        cell_rows = [
            {"measure": "toy cell: work in a warm process", "seconds": t_work, "floor_seconds": t_work, "ratio": 1.0},
            {
                "measure": "toy cell forked: overhead beyond the work",
                "seconds": t_fork - t_work,
                "floor_seconds": t_work,
                "ratio": t_fork / t_work,
            },
            {
                "measure": "toy cell fresh interpreter: overhead beyond the work",
                "seconds": t_fresh - t_work,
                "floor_seconds": t_work,
                "ratio": t_fresh / t_work,
            },
        ]
        print(pd.DataFrame(cell_rows).to_string(index=False, float_format="%.3f"), flush=True)

        # (c) the smoke grid both ways
        grid_rows, summaries = [], {}
        for fork in (False, True):
            where = tmp / ("fork" if fork else "no-fork")
            t = time.perf_counter()
            r = subprocess.run(
                [
                    py,
                    "batch.py",
                    "run",
                    "grids/smoke.toml",
                    "--out",
                    str(where),
                    "--jobs",
                    str(jobs),
                    "--fork" if fork else "--no-fork",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - t
            assert r.returncode == 0, r.stderr[-2000:]
            summaries[fork] = (where / "summary.csv").read_bytes()
            grid_rows.append(
                {
                    "measure": f"smoke grid, {jobs} jobs, {'--fork' if fork else '--no-fork'}",
                    "seconds": seconds,
                    "floor_seconds": float("nan"),
                    "ratio": float("nan"),
                }
            )
        grid_rows[1]["floor_seconds"] = grid_rows[0]["seconds"]
        grid_rows[1]["ratio"] = grid_rows[0]["seconds"] / grid_rows[1]["seconds"]  # the speed-up
        identical = summaries[True] == summaries[False]
        print(pd.DataFrame(grid_rows).to_string(index=False, float_format="%.3f"))
        print(f"smoke grid speed-up {grid_rows[1]['ratio']:.2f}x; summary.csv byte-identical: {identical}")

    table = pd.DataFrame(rows + cell_rows + grid_rows).assign(summary_identical=identical)
    run = RunDir(out, "benchmarks", {"options": {"repeats": repeats, "jobs": jobs}}, sys.argv[1:])
    run.csv("bench_cli.csv", table)
    print(f"wrote {run.finish()}")


if __name__ == "__main__":
    cli.main(app)
