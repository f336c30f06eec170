"""The command line as typed: `--name=value`, variadic options (`--tasks ioi sva`), `--resume DIR`, and
refusals kept on one line."""

from __future__ import annotations

from pathlib import Path

from lib.core.errors import UserError

# Options that take several space-separated values (`--tasks ioi sva`); argv joins them with newlines (so
# messages can echo what was typed, and a value may hold a comma or a space).
VARIADIC = ("--tasks", "--thresholds", "--top-k", "--circuits", "--sites", "--models", "--dictionaries")


def split_equals(argv: list[str]) -> list[str]:
    """`--name=value` -> `--name value` (click accepts both; --resume and the variadic options are read here)."""
    out = []
    for arg in argv:
        out += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    return out


def join_variadic(argv: list[str]) -> list[str]:
    """`--tasks ioi sva` -> `--tasks "ioi\nsva"`; a variadic option followed by no value is refused."""
    argv, out, i = split_equals(argv), [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in VARIADIC:
            vals = []
            while i + 1 < len(argv) and not (argv[i + 1].startswith("--") or argv[i + 1] in ("-h",)):
                vals.append(argv[i + 1])
                i += 1
            if not vals:
                after = f" (it was followed by {argv[i + 1]})" if i + 1 < len(argv) else ""
                raise UserError(f"{arg} needs at least one value{after}")
            out += [arg, "\n".join(vals)]
        else:
            out.append(arg)
        i += 1
    return out


def resume_argv(argv: list[str], script: str) -> tuple[list[str], str | None]:
    """(arguments, resume dir): `--resume DIR` alone gives the interrupted run's own arguments and DIR."""
    from lib.io.results import read_checkpoint

    argv = split_equals(argv)
    if "--resume" not in argv:
        return argv, None
    i = argv.index("--resume")
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise UserError("--resume needs the interrupted run's directory")
    where, others = argv[i + 1], argv[:i] + argv[i + 2 :]
    if others:
        raise UserError(
            f"--resume continues an interrupted run with its own options; give no other option (got {' '.join(others)})"
        )
    return list(read_checkpoint(Path(where), script)["argv"]), where


LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # every boundary str.splitlines knows


def one_line(message: str) -> str:
    """A refusal as one line: a line break typed inside a value (a path, a name) is shown escaped."""
    return "".join(c.encode("unicode_escape").decode() if c in LINE_BREAKS else c for c in message)
