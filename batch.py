"""Grid reruns: every cell of a grid file run as its own process (locally, or as a SLURM job array through
submitit), resumable, with one aggregated table of the headline metrics across seeds."""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Annotated

import typer

from lib.batch import cells, grid
from lib.core.errors import UserError
from lib.io import checks, cli
from lib.io.results import atomic_write, git_commit, probe_writable, versions

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
EXECUTORS = ("local", "slurm", "submitit-local")


def _out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_writable(out)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write under --out {out}: {getattr(e, 'strerror', None) or e}") from None
    return out


def _counts(m) -> str:
    """'done=.. failed=.. interrupted=.. pending=..' of a manifest."""
    counts = m.state.value_counts()
    return " ".join(f"{s}={int(counts.get(s, 0))}" for s in cells.STATES)


def _outcome_line(cell, state: str, detail: str = "", error: str = "") -> str:
    return f"{state:>11}  {cell.describe()}{'  ' + detail if detail else ''}{'  ' + error if error else ''}"


def _todo(out: Path, all_cells: list, only_failed: bool) -> list:
    """Cells to run: not done (or done but its run directory is gone); with only_failed, the failed ones."""
    m = cells.manifest(out, all_cells).set_index("cell_id")
    todo = []
    for c in all_cells:
        state, run_dir = m.at[c.id, "state"], m.at[c.id, "run_dir"]
        finished = state == "done" and (out / str(run_dir)).is_dir()
        if not finished and (state == "failed" or not only_failed):
            todo.append(c)
    return todo


def _record(out: Path, grid_file: Path, text: str, all_cells: list, executor: dict) -> None:
    record = {
        "grid_file": str(grid_file),
        "grid": text,
        "cells": [{"cell_id": c.id, "script": c.script, "options": dict(c.options)} for c in all_cells],
        "executor": executor,
        "git": git_commit(),
        "versions": versions(),
        "python": sys.executable,
    }
    atomic_write(out / "batch.json", lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))


def _run_local(out: Path, all_cells: list, todo: list, jobs: int, fork: bool = True) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pending = {pool.submit(cells.run_cell, c, str(out), threads, forked=fork): c for c in todo}
        try:
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in done:
                    c = pending.pop(f)
                    o = f.result()
                    print(_outcome_line(c, o["state"], f"({o['wall_seconds']:.1f} s)", o["error"]), flush=True)
                    cells.write_manifest(out, all_cells)
        except KeyboardInterrupt:
            for f in pending:
                f.cancel()
            cells.stop_running()  # the cells checkpoint and exit...
            wait(pending)  # ...and their threads write their outcomes before the manifest is
            raise
        finally:
            cells.write_manifest(out, all_cells)


def _run_submitit(out: Path, all_cells: list, todo: list, cluster: str, params: dict) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    executor.update_parameters(**params)
    threads = [params["cpus_per_task"]] * len(todo)
    jobs = executor.map_array(cells.run_cell, todo, [str(out)] * len(todo), threads)
    print(f"submitted {len(jobs)} cells as {cluster} job(s) {jobs[0].job_id if jobs else ''}", flush=True)
    pending = dict(zip(jobs, todo))
    while pending:
        for job in [j for j in pending if j.done()]:
            c = pending.pop(job)
            try:
                o = job.result()
                line = _outcome_line(c, o["state"], error=o["error"])
            except Exception as e:  # noqa: BLE001 - the job itself failed (node lost, timeout): the cell is failed
                line = _outcome_line(c, "failed", f"job {job.job_id}: {type(e).__name__}")
            print(line, flush=True)
            cells.write_manifest(out, all_cells)
        time.sleep(1.0)
    cells.write_manifest(out, all_cells)


@app.command()
def run(
    grid_file: Annotated[Path, typer.Argument(help="the grid (TOML)")],
    out: Annotated[Path, typer.Option("--out", help="the batch directory")],
    executor: Annotated[
        str,
        typer.Option(
            help="local | slurm | submitit-local (the SLURM path run on this machine by submitit's local executor)"
        ),
    ] = "local",
    jobs: Annotated[int, typer.Option(help="parallel processes (local executor)")] = 1,
    only_failed: Annotated[bool, typer.Option("--only-failed", help="rerun only the failed cells")] = False,
    fork: Annotated[
        bool,
        typer.Option(
            "--fork/--no-fork",
            help="local executor: fork each cell from a server "
            "that holds the heavy imports (default), or start each as a fresh "
            "interpreter, exactly as a shell would",
        ),
    ] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the cells and what would run; run nothing")] = False,
    partition: Annotated[str | None, typer.Option(help="SLURM partition")] = None,
    gpus_per_task: Annotated[int, typer.Option(help="SLURM GPUs per task")] = 1,
    cpus_per_task: Annotated[int, typer.Option(help="CPUs per task")] = 4,
    mem_gb: Annotated[float, typer.Option(help="memory per task, GB")] = 32.0,
    timeout_min: Annotated[int, typer.Option(help="time limit per task, minutes")] = 120,
    slurm_array_parallelism: Annotated[int, typer.Option(help="cells running at once on SLURM")] = 64,
    sbatch: Annotated[
        list[str] | None,
        typer.Option(
            help="extra sbatch parameter KEY=VALUE (repeatable), e.g. --sbatch account=myproj --sbatch qos=high"
        ),
    ] = None,
):
    """Run every cell of GRID_FILE not yet finished; then summarize."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    checks.check_at_least(
        1,
        ("--jobs", jobs),
        ("--cpus-per-task", cpus_per_task),
        ("--timeout-min", timeout_min),
        ("--slurm-array-parallelism", slurm_array_parallelism),
    )
    if gpus_per_task < 0 or not mem_gb > 0:
        raise UserError("--gpus-per-task must be >= 0 and --mem-gb > 0")
    extra = {}
    for item in sbatch or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch takes KEY=VALUE, got {item!r}")
        extra[key] = value
    text, all_cells = grid.load(grid_file)
    grid.check(all_cells, str(grid_file))  # every cell, by its script's own parser, before anything runs
    params = {
        "timeout_min": timeout_min,
        "mem_gb": mem_gb,
        "cpus_per_task": cpus_per_task,
        "name": "circuit-grid",
        "slurm_partition": partition,
        "slurm_gpus_per_task": gpus_per_task,
        "slurm_array_parallelism": slurm_array_parallelism,
        "slurm_additional_parameters": extra or None,
    }
    if dry_run:
        todo = {c.id for c in _todo(out, all_cells, only_failed)} if out.is_dir() else {c.id for c in all_cells}
        for c in all_cells:
            print(f"{c.id}  {'run ' if c.id in todo else 'skip'}  {c.script} {' '.join(c.argv())}")
        print(f"{len(todo)} of {len(all_cells)} cells would run ({executor} executor)")
        return
    out = _out_dir(out)
    if executor == "local" and fork:
        from lib.batch import forked

        forked.start()  # its imports overlap the manifest and the first cells' scheduling
    _record(
        out,
        grid_file,
        text,
        all_cells,
        {"executor": executor, "jobs": jobs, "fork": fork, **({} if executor == "local" else params)},
    )
    todo = _todo(out, all_cells, only_failed)
    print(f"{len(todo)} of {len(all_cells)} cells to run ({len(all_cells) - len(todo)} finished earlier)", flush=True)
    cells.write_manifest(out, all_cells)
    if executor == "local":
        _run_local(out, all_cells, todo, jobs, fork)
    else:
        _run_submitit(out, all_cells, todo, "slurm" if executor == "slurm" else "local", params)
    m = _summarize(out, all_cells)
    unfinished = m[m.state != "done"]
    if len(unfinished):  # the summary covers the finished cells; the run as a whole did not succeed
        print(
            f"error: {len(unfinished)} of {len(m)} cells did not finish ({_counts(m)}); see "
            f"uv run python batch.py status {out}",
            file=sys.stderr,
        )
        sys.exit(1)


def _summarize(out: Path, all_cells: list):
    """Write the summary files; returns the manifest."""
    from lib.batch import aggregate

    m = cells.write_manifest(out, all_cells)
    table, folded = aggregate.summarize(out, m)
    print(_counts(m) + f"; wrote {out}/summary.csv ({len(table)} rows), summary_by_seed.csv, tables.md, tables.tex")
    return m


def _cells_of(out: Path) -> list:
    try:
        record = json.loads((out / "batch.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{out} is not a batch directory (no readable batch.json)") from None
    return grid.expand(tomllib.loads(record["grid"]), record["grid_file"])


@app.command()
def status(out: Annotated[Path, typer.Argument(help="the batch directory")]):
    """Counts of cells by state, and the failed cells' error lines."""
    m = cells.write_manifest(out, _cells_of(out))
    print(_counts(m) + f" (of {len(m)})")
    for r in m[m.state.isin(["failed", "interrupted"])].itertuples():
        print(f"{r.state}  {r.cell_id}  {r.script} {r.task}  {r.error}")


@app.command()
def summarize(out: Annotated[Path, typer.Argument(help="the batch directory")]):
    """Rewrite the summary files from the finished cells."""
    _summarize(out, _cells_of(out))


def main(argv: list[str] | None = None) -> None:
    command = typer.main.get_command(app)
    cli.guarded(
        "batch.py",
        lambda: command.main(args=sys.argv[1:] if argv is None else argv, prog_name="batch.py", standalone_mode=False),
        interrupted_note="; finished cells are counted in the manifest; rerun the same command to continue",
    )


if __name__ == "__main__":
    main()
