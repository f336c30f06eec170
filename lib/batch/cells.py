"""Running grid cells as processes, and the manifest of their states.

Each cell runs its script with `--out DIR/runs/<cell-id>` and writes `DIR/runs/<cell-id>/cell.json` (state,
run directory, wall time, error line) when it ends; the manifest is rebuilt from those files, so it survives
a killed runner. A cell whose earlier run was interrupted or killed continues it with the script's --resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lib.batch.grid import Cell
from lib.io.results import atomic_write

ROOT = Path(__file__).resolve().parents[2]
STATES = ("done", "failed", "interrupted", "pending")
MANIFEST_COLUMNS = ["cell_id", "script", "task", "options", "state", "run_dir", "wall_seconds", "error"]

_running: dict = {}  # cell id -> its process (Popen or ForkedScript), for forwarding signals
_lock = threading.Lock()


class _Stopping(threading.Event):
    """Set by stop_running; signum is the signal it forwards to running cells."""

    signum: int = 0


_stopping = _Stopping()


def cell_dir(out: Path, cell_id: str) -> Path:
    return Path(out) / "runs" / cell_id


def read_outcome(out: Path, cell_id: str) -> dict | None:
    try:
        return json.loads((cell_dir(out, cell_id) / "cell.json").read_text())
    except (OSError, ValueError):
        return None


def _leftover(where: Path) -> Path | None:
    """An interrupted (<id>.interrupted) or killed (.staging-<id>) run of the cell's script, to resume."""
    found = [
        p
        for p in where.glob("*/*")
        if p.is_dir()
        and (p.name.endswith(".interrupted") or p.name.startswith(".staging-"))
        and (p / "checkpoint.json").is_file()
    ]
    return sorted(found)[-1] if found else None


def _error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


def run_cell(
    cell: Cell, out: str, threads: int | None = None, python: str = sys.executable, forked: bool = False
) -> dict:
    """Run one cell to its end (a fresh run, or --resume of its interrupted one); write and return its outcome.
    threads caps the cell's CPU threads (so parallel cells do not oversubscribe the cores). forked: start it
    from the forkserver that holds the heavy imports (lib.batch.forked; the local executor), else as a new
    interpreter (a SLURM job runs one cell). Module-level and picklable: submitit runs it inside a SLURM job."""
    where = cell_dir(Path(out), cell.id)
    where.mkdir(parents=True, exist_ok=True)
    leftover = _leftover(where)
    args = ["--resume", str(leftover)] if leftover else [*cell.argv(), "--out", str(where)]
    log = where / "log.txt"
    with log.open("a") as f:
        f.write(f"$ {cell.script} {' '.join(args)}\n")
    from lib.batch.forked import ForkedScript, thread_env

    if forked:
        proc = ForkedScript(cell.script, args, log, threads=threads)  # returns once forked (the server ready)
        t0 = time.time()
    else:
        env = {**os.environ, **thread_env(threads)}
        t0 = time.time()
        with log.open("a") as f:
            proc = subprocess.Popen(
                [python, str(ROOT / cell.script), *args],
                cwd=os.getcwd(),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
    with _lock:
        _running[cell.id] = proc
        if _stopping.is_set():  # stop_running came while this cell was starting
            proc.send_signal(_stopping.signum)
    try:
        code = proc.wait()
    finally:
        with _lock:
            _running.pop(cell.id, None)
    runs = sorted(
        p
        for p in where.glob(f"{cell.script[:-3]}/*")
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".interrupted")
    )
    state = "done" if code == 0 and runs else "interrupted" if code in (129, 130, 143) else "failed"
    outcome = {
        "cell_id": cell.id,
        "state": state,
        "exit_code": code,
        "run_dir": str(runs[-1].relative_to(out)) if state == "done" else "",
        "wall_seconds": round(time.time() - t0, 3),
        "error": "" if state == "done" else _error_line(log),
    }
    atomic_write(where / "cell.json", lambda p: p.write_text(json.dumps(outcome, indent=1) + "\n"))
    return outcome


def stop_running(signum: int = signal.SIGTERM, timeout: float = 120.0) -> None:
    """Forward a signal to every cell process still running and wait for them to checkpoint and exit."""
    with _lock:
        _stopping.signum = signum
        _stopping.set()
        procs = list(_running.values())
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def manifest(out: Path, cells: list[Cell]):
    """The state of every cell, from the outcome files (pending where a cell has none yet): a DataFrame."""
    import pandas as pd

    rows = []
    for c in cells:
        o = read_outcome(out, c.id) or {}
        rows.append(
            {
                "cell_id": c.id,
                "script": c.script,
                "task": c.task,
                "options": json.dumps(dict(c.options), sort_keys=True),
                "state": o.get("state", "pending"),
                "run_dir": o.get("run_dir", ""),
                "wall_seconds": o.get("wall_seconds", float("nan")),
                "error": o.get("error", ""),
            }
        )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_manifest(out: Path, cells: list[Cell]):
    """Rewrite DIR/manifest.csv atomically; returns it."""
    df = manifest(out, cells)
    atomic_write(Path(out) / "manifest.csv", lambda p: df.to_csv(p, index=False))
    return df
