"""Options every script shares, task selection, and the error policy (one line, exit 2)."""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from lib.errors import UserError

# typer vendors its own click: take its exception classes from a public typer name, not the click package
_click_exceptions = sys.modules[typer.BadParameter.__module__]

# Options that take several space-separated values (`--tasks ioi sva`); argv is rewritten to commas.
VARIADIC = ("--tasks", "--thresholds", "--top-k")

TasksOpt = Annotated[str, typer.Option("--tasks", help="task names, space-separated, or 'all'")]
ModelOpt = Annotated[str, typer.Option("--model", help="gpt2 | gpt2-random | toy | a local HF directory | a hub name")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | float16 | bfloat16 | float64")]
NPromptsOpt = Annotated[int, typer.Option("--n-prompts", help="prompts per task")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="prompts per forward pass")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for prompt generation and sampling")]
OutOpt = Annotated[Path, typer.Option("--out", help="results root; each run gets results/<script>/<run-id>/")]


@dataclass
class Common:
    """The shared options, as recorded in run.json."""

    tasks: list[str]
    model: str
    device: str
    dtype: str
    n_prompts: int
    batch_size: int
    seed: int
    out: Path


def parse_tasks(spec: str) -> list[str]:
    """'ioi,sva' or 'all' -> task names in the order given; unknown names list the valid ones."""
    from tasks import TASKS

    names = [s for s in spec.replace(",", " ").split() if s]
    if not names:
        raise UserError(f"--tasks needs at least one task; valid: {', '.join(TASKS)} or all")
    if "all" in names:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"unknown task {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASKS)} or all")
    return list(dict.fromkeys(names))


def parse_floats(spec: str, what: str) -> list[float]:
    try:
        return [float(s) for s in spec.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} must be numbers, got {spec!r}") from None


def common(tasks: str, model: str, device: str, dtype: str, n_prompts: int, batch_size: int, seed: int,
           out: Path) -> Common:
    """Validate the shared options (before any model is loaded)."""
    if n_prompts < 1:
        raise UserError(f"--n-prompts must be at least 1 (got {n_prompts})")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    return Common(parse_tasks(tasks), model, device, dtype, n_prompts, batch_size, seed, out)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Suspended(Exception):
    """An interrupted run whose finished work was kept for --resume (exit 130)."""


@contextmanager
def experiment(script: str, opts: Common, resume: Path | None = None, suspendable: bool = False, **extra_options):
    """Load the model, open a run directory; on success the run is moved into place whole.
    A suspendable run interrupted by Ctrl-C keeps its finished work for --resume."""
    from lib.model import load_model
    from lib.results import RunDir

    seed_everything(opts.seed)
    record = {"options": {**asdict(opts), "out": str(opts.out), **extra_options}, "seed": opts.seed}
    run = RunDir(opts.out, script, record, resume=resume)  # checks --out is writable before the model load
    try:
        model = load_model(opts.model, opts.device, opts.dtype, seed=opts.seed)
        run.record["model"] = model.describe()
        yield model, run
    except KeyboardInterrupt:
        if not suspendable:
            run.abort()
            raise
        where = run.suspend()
        raise Suspended(f"interrupted; finished work kept in {where}; continue with --resume {where}") from None
    except BaseException:
        if resume is None:
            run.abort()
        raise
    final = run.finish()
    print(f"wrote {final}")


def _join_variadic(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in VARIADIC:
            vals = []
            while i + 1 < len(argv) and not (argv[i + 1].startswith("--") or argv[i + 1] in ("-h",)):
                vals.append(argv[i + 1])
                i += 1
            out += [arg, ",".join(vals)] if vals else [arg]
        else:
            out.append(arg)
        i += 1
    return out


def main(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a script's typer app: usage and input errors print one line and exit 2."""
    argv = _join_variadic(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    prog = Path(sys.argv[0]).name
    try:
        code = command.main(args=argv, prog_name=prog, standalone_mode=False)
        if isinstance(code, int) and code:  # typer turns Ctrl-C into exit code 130, returned not raised
            if code == 130:
                print("error: interrupted", file=sys.stderr)
            sys.exit(code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except _click_exceptions.UsageError as e:
        print(f"error: {e.format_message()} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Suspended as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(130)


def script_app(help_text: str) -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=help_text)


def task_builds(model, opts: Common, seed: int | None = None) -> dict:
    """Each selected task's dataset for this model's tokenizer."""
    from tasks import TASKS

    seed = opts.seed if seed is None else seed
    return {name: TASKS[name].build(model.tokenizer, opts.n_prompts, seed) for name in opts.tasks}

