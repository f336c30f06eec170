"""Rebuild a finished run's view.html from its files (the scripts write it themselves):

uv run python -m lib.io.view RUN_DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lib.core.errors import UserError
from lib.io import cli

app = cli.script_app(__doc__)


@app.command()
def main(run_dir: Annotated[Path, typer.Argument(help="a finished run of 05, 06, 09, 10 or 24")]) -> None:
    """(Re)build RUN_DIR/view.html from the run's files."""
    from lib.io.results import atomic_write
    from lib.io.view_page import build

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    text = build(run_dir)
    atomic_write(run_dir / "view.html", lambda p: Path(p).write_text(text, encoding="utf-8"))
    print(f"wrote {run_dir / 'view.html'} ({len(text.encode()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    cli.main(app)
