"""Scripts started as processes forked from a server that already holds the heavy imports.

Importing TransformerLens costs ~15 s per process; a grid cell on the toy model does a few seconds of work.
A multiprocessing forkserver imports torch, TransformerLens, transformers, pandas, scipy, matplotlib and lib/
once (lib.batch.preload; imports only: no computation, CUDA never initialised), and every script run is a
fresh fork of it: its own process and session (signals reach it alone), its own threads, stdout/stderr in its
own log, the script run as `__main__` with its argv, exactly as `python SCRIPT ARGS` would. The handle mimics
subprocess.Popen (pid, poll, wait, send_signal, kill, returncode), so callers treat both alike.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = ["lib.batch.preload"]
_context = None
_lock = threading.Lock()
# A forkserver child's exit code is read once from its sentinel pipe; two threads reading it at once (one cell's
# wait and another cell's Process.start, which polls every child) leave one with EOF and the exit code 255
# (seen in CI: a finished 01_dla cell reported failed). Every read of an exit code and every start hold this lock.
_exit_codes = threading.Lock()


def context():
    """The forkserver context (its server starts on the first run, with the preload)."""
    global _context
    with _lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        return _context


def start() -> None:
    """Start the server now (it preloads in the background) so its imports overlap the caller's own work."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def thread_env(threads: int | None) -> dict:
    """The environment that caps a process's CPU threads at threads (empty without a cap)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def _child(script: str, args: list[str], stdout: str, stderr: str, cwd: str, env: dict, threads: int | None) -> None:
    """In the forked process: a new session, the output files as fds 1 and 2, then the script as __main__."""
    import io
    import runpy

    os.setsid()
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    os.chdir(cwd)
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = str(ROOT / script)
    sys.argv = [path, *args]
    sys.path[0] = str(ROOT)
    runpy.run_path(path, run_name="__main__")
    sys.stdout.flush()
    sys.stderr.flush()


class ForkedScript:
    """A running script (see the module docstring); returncode as Popen's (negative: killed by a signal)."""

    def __init__(
        self,
        script: str,
        args: list[str],
        stdout: Path,
        stderr: Path | None = None,
        env: dict | None = None,
        threads: int | None = None,
        cwd: Path | None = None,
    ):
        env = {**(env or {}), **thread_env(threads)}
        self.process = context().Process(
            target=_child,
            args=(script, list(args), str(stdout), str(stderr or stdout), str(cwd or os.getcwd()), env, threads),
            daemon=False,
        )
        with _exit_codes:  # start() polls every other child of this process (multiprocessing's _cleanup)
            self.process.start()
        assert self.process.pid is not None  # set by start()
        self.pid: int = self.process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with _exit_codes:
                self.returncode = self.process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time
        from multiprocessing.connection import wait

        start = time.monotonic()
        while (code := self.poll()) is None:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if timeout is not None and left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"forked script {self.pid}", timeout)
            wait([self.process.sentinel], left)  # readable once the exit code is there; read under the lock
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(script: str, args: list[str], where: Path, env: dict | None = None, timeout: float = 600):
    """Run a script to its end in a fork; a subprocess.CompletedProcess with its stdout and stderr as text."""
    import subprocess
    import tempfile

    Path(where).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = ForkedScript(script, args, out, err, env=env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return subprocess.CompletedProcess(
            [script, *args], code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )
