"""SIGINT, SIGTERM and SIGHUP handled alike: an Interrupted exception in the main thread (never inside a
critical section), so finished work can be kept and the run resumed. Exit status 128 + signal number."""

from __future__ import annotations

import signal
from contextlib import contextmanager

HANDLED: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupted(KeyboardInterrupt):
    """Raised for a handled signal; code is the conventional exit status (130, 143, 129)."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum, self.code, self.name = signum, 128 + signum, HANDLED.get(signum, f"signal {signum}")
        super().__init__(self.name)


def exit_code(exc: BaseException) -> int:
    return exc.code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


_depth = 0  # nesting of deferred() sections
_pending: int | None = None  # a signal that arrived inside one
last: Interrupted | None = None  # the last one raised (typer swallows KeyboardInterrupt into exit code 130)


def _raise(signum: int):
    global last
    last = Interrupted(signum)
    raise last


def _handler(signum, frame):
    global _pending
    if _depth:
        _pending = signum
        return
    _raise(signum)


@contextmanager
def deferred():
    """A critical section (e.g. updating a search state and its checkpoint together): a signal arriving
    inside it is raised when the section ends, never half-way through."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)


@contextmanager
def handled():
    """Install the handlers for the duration of a script (main thread only); restore the old ones after."""
    global last
    last = None
    try:
        old = {s: signal.signal(s, _handler) for s in HANDLED}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
