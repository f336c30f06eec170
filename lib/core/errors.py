"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input or an unavailable resource; the message is shown to the user as is."""


def user_path(spec: str, what: str):
    """A path the user typed, with `~` expanded; a `~user` that names no user is refused in one line."""
    from pathlib import Path

    try:
        return Path(spec).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise UserError(f"{what} {spec!r}: {spec.split('/')[0]!r} names no home directory") from None
