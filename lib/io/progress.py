"""Progress reporting: live tqdm bars on a terminal, plain rate-limited lines in log files, nothing with --quiet."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY_SECONDS = 30.0  # a log line at least this often while work advances...
LINE_EVERY_FRACTION = 0.10  # ...and at every tenth of the total (so at most ~10 lines + one per 30 s)

_quiet = False


def set_quiet(quiet: bool) -> None:
    """--quiet: no progress output at all (batch use)."""
    global _quiet
    _quiet = quiet


def note(text: str) -> None:
    """One line of information on stderr (nothing with --quiet)."""
    if not _quiet:
        print(text, file=sys.stderr, flush=True)


class LineProgress:
    """tqdm's update/set_postfix/close interface, printed as plain lines (no carriage returns, no escapes)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream=None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.stream, self.clock = stream or sys.stderr, clock
        self.t0 = self.last_t = clock()
        self.last_n, self.postfix, self.closed = 0, "", False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        step = LINE_EVERY_FRACTION * self.total if self.total else float("inf")
        if self.n - self.last_n >= step or now - self.last_t >= LINE_EVERY_SECONDS:
            self._line(now)

    def set_postfix(self, ordered_dict: dict | None = None, **values) -> None:  # tqdm's signature
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **values}.items())

    def _line(self, now: float) -> None:
        elapsed = now - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {count} {self.unit}{pct}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s{extra}",
            file=self.stream,
            flush=True,
        )
        self.last_n, self.last_t = self.n, now

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._line(self.clock())
        self.closed = True


class _Silent:
    n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, **values) -> None:
        pass

    def close(self) -> None:
        pass


def silent_bar(total: int | None = None, desc: str = "", unit: str = "it"):
    """bar's signature, reporting nothing (callers that take a bar factory, run without output)."""
    return _Silent()


def bar(total: int | None, desc: str, unit: str = "it"):
    """A progress reporter for `total` units of work: tqdm on a terminal, LineProgress otherwise."""
    if _quiet:
        return silent_bar()
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=True)
    return LineProgress(total, desc, unit)
