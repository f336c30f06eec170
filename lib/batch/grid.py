"""Grid files (TOML): defaults plus experiments; every list-valued option expands as a Cartesian product, and
each cell (one script invocation for one task and one point of the grid) is checked by the script's own
option parser before anything runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lib.core.errors import UserError
from lib.io import cli

RESERVED = {"out", "resume"}  # set by the runner for every cell
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Cell:
    """One script invocation: the script and its full option set (one task)."""

    script: str
    options: tuple[tuple[str, Scalar], ...]  # (option name without dashes, value), in grid order
    experiment: int  # index of its [[experiment]] table, for messages

    @property
    def id(self) -> str:
        """A stable hash of the script and its full option set (order-independent)."""
        key = json.dumps({"script": self.script, "options": dict(sorted(self.options))}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def task(self) -> str:
        return str(dict(self.options)["tasks"])

    def argv(self) -> list[str]:
        """The script's command-line arguments (without --out)."""
        out = []
        for name, value in self.options:
            if isinstance(value, bool):  # every flag is a --name/--no-name pair, so false is said, not dropped
                out += [f"--{name}" if value else f"--no-{name}"]
            else:
                out += (
                    [f"--{name}", *str(value).split()]
                    if name in ("tasks", "thresholds", "top-k")
                    else [f"--{name}", str(value)]
                )
        return out

    def describe(self) -> str:
        return f"{self.script} " + " ".join(f"{k}={v}" for k, v in self.options)


def _name(key: str) -> str:
    return key.replace("_", "-")


def _values(where: str, key: str, value) -> list[Scalar]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserError(f"{where}: option {key} has an empty list")
    for v in values:
        if not isinstance(v, (str, int, float, bool)):
            raise UserError(f"{where}: option {key} must be a string, number or boolean (or a list of them), got {v!r}")
    return values


def expand(grid: dict, source: str = "grid") -> list[Cell]:
    """Cells of a parsed grid, in order: experiments in file order, then the product of their options."""
    from tasks import TASK_NAMES

    unknown = set(grid) - {"defaults", "experiment"}
    if unknown:
        raise UserError(
            f"{source}: unknown table(s) {', '.join(sorted(unknown))}; a grid has [defaults] and [[experiment]]"
        )
    defaults = grid.get("defaults", {})
    experiments = grid.get("experiment", [])
    if not isinstance(defaults, dict) or not isinstance(experiments, list) or not experiments:
        raise UserError(f"{source}: needs at least one [[experiment]] table (and [defaults] as a table)")
    cells = []
    for i, exp in enumerate(experiments, 1):
        where = f"{source} experiment {i}"
        if not isinstance(exp, dict) or not isinstance(exp.get("script"), str):
            raise UserError(f'{where}: needs script = "NN_name.py"')
        merged = {_name(k): v for k, v in defaults.items()} | {_name(k): v for k, v in exp.items() if k != "script"}
        bad = RESERVED & set(merged)
        if bad:
            raise UserError(f"{where}: option {', '.join(sorted(bad))} is set by the runner for every cell")
        if "tasks" not in merged or merged["tasks"] == "all":
            merged["tasks"] = list(TASK_NAMES)
        elif isinstance(merged["tasks"], str):
            merged["tasks"] = merged["tasks"].split()
        names = ["tasks"] + [k for k in merged if k != "tasks"]
        axes = [_values(where, k, merged[k]) for k in names]
        for point in itertools.product(*axes):
            cells.append(Cell(exp["script"], tuple(zip(names, point)), i))
    seen = {}
    for c in cells:
        if c.id in seen:
            raise UserError(f"{source}: the same cell appears twice ({c.describe()})")
        seen[c.id] = c
    return cells


def load(path: Path) -> tuple[str, list[Cell]]:
    """(the grid file's text, its cells); a missing, unreadable or malformed file is one UserError."""
    try:
        text = Path(path).read_text()
        grid = tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"grid file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"grid file {path} cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"grid file {path} is not valid TOML ({e})") from None
    return text, expand(grid, str(path))


def check(cells: list[Cell], source: str = "grid") -> None:
    """Ask each script's own option parser about every cell; the first refusal is one UserError naming the
    cell and the script's message (which names the option)."""
    modules = {}
    for cell in cells:
        if cell.script not in modules:
            try:
                modules[cell.script] = cli.load_script(cell.script)
            except UserError:
                raise UserError(f"{source} experiment {cell.experiment}: unknown script {cell.script!r}") from None
        error = cli.check_argv(modules[cell.script].app, cell.argv())
        if error:
            raise UserError(f"{source} experiment {cell.experiment}, cell {cell.describe()}: {error}")
