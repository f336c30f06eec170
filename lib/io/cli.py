"""Options every script shares, task selection, and the error policy (one line, exit 2)."""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core.errors import UserError
from lib.io import argv as argv_
from lib.io import interrupts, progress
from lib.io.checks import check_at_least

# typer vendors its own click: take its exception classes from a public typer name, not the click package
_click_exceptions = sys.modules[typer.BadParameter.__module__]

TasksOpt = Annotated[
    str,
    typer.Option(
        "--tasks",
        help="task names, space-separated, or 'all'; or task files "
        "(text pairs, EAP-IG CSV, MIB task data: see README 'Your own task')",
    ),
]
TaskMetricOpt = Annotated[
    str,
    typer.Option(
        "--task-metric",
        help="for tasks from files without a metric column: logit_diff (default) | logit_minus_max | prob_diff",
    ),
]
ModelOpt = Annotated[str, typer.Option("--model", help="gpt2 | gpt2-random | toy | a local HF directory | a hub name")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | float16 | bfloat16 | float64")]
NPromptsOpt = Annotated[int, typer.Option("--n-prompts", help="prompts per task")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="prompts per forward pass")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for prompt generation and sampling")]
OutOpt = Annotated[Path, typer.Option("--out", help="results root; each run gets results/<script>/<run-id>/")]
NBootstrapOpt = Annotated[
    int,
    typer.Option(
        "--n-bootstrap",
        help="bootstrap resamples for the 95% intervals over prompts (seeded by --seed; 0: no intervals)",
    ),
]
ExportOpt = Annotated[
    str,
    typer.Option(
        "--export",
        help="eap-ig: also write every circuit in the EAP-IG "
        "library's graph JSON (the format of MIB submissions), as <name>.eap-ig.json",
    ),
]
RowsPerPassOpt = Annotated[
    int | None,
    typer.Option(
        "--rows-per-pass",
        help="prompt copies per forward pass when interventions share one (interventions x prompts); "
        "default 256 on a GPU, 32 on CPU (wider passes are slower per row there)",
    ),
]
DictionariesOpt = Annotated[
    str,
    typer.Option(
        "--dictionaries",
        help="toy (the set shipped with the toy model) | gemma, llama (circuit-tracer's transcoder names) | a "
        "local folder (SAELens folders, circuit-tracer's config.yaml set or CLT layout) | a hub repo id",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet/--no-quiet", help="no progress output (batch jobs)")]
ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="continue an interrupted run (<run-id>.interrupted, or a killed run's .staging-<run-id>) "
        "with its own options; give no other option",
    ),
]
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and every derived seed stay in range
MAX_PROMPTS = 100_000  # more prompts per task than one run needs; a typo here would fill memory for minutes
BOOTSTRAP_RANGE = (40, 100_000)  # under 40 none falls beyond the 2.5 % point; more cost memory (resamples x prompts)
ARGV: list[str] = []  # the script's own arguments, as given (recorded, and replayed by --resume)


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
    n_bootstrap: int = 1000
    task_metric: str = ""  # for tasks from files (tasks/files.py)
    processing: dict | None = None  # the model's weight processing when dictionaries ask for another (09, 10)


def _existing_path(text: str) -> bool:
    try:
        return bool(text) and Path(text).exists()
    except (OSError, ValueError):
        return False


def parse_tasks(spec: str, task_metric: str = "") -> list[str]:
    """'ioi,sva', 'all', or task files (tasks/files.py) -> task names in the order given (a file's name is its
    stem); unknown names list the valid ones. Files are read and checked here, before any model loads."""
    from tasks import TASK_NAMES, files

    files.reset()
    names = []
    for part in spec.split("\n"):  # the variadic values as typed: a path may hold a comma or a space
        part = part.strip()
        # one existing path is one file (its name may hold a space); otherwise a value is a list of names and
        # files, separated by spaces or commas ("all ioi" and "a.csv b.csv" alike); a built-in name wins
        tokens = [part] if _existing_path(part) else [s for s in part.replace(",", " ").split() if s]
        for token in tokens:
            if token not in (*TASK_NAMES, "all") and files.is_file_spec(token):
                names.append(files.register(token, task_metric))
            else:
                names.append(token)
    if not names:
        raise UserError(f"--tasks needs at least one task; valid: {', '.join(TASK_NAMES)} or all, or a task file")
    if "all" in names:
        if len(names) > 1:
            raise UserError(f"--tasks all cannot be combined with task names (got {' '.join(names)})")
        names = list(TASK_NAMES)
    unknown = [n for n in names if n not in TASK_NAMES and n not in files.SOURCES]
    if unknown:
        raise UserError(
            f"unknown task {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASK_NAMES)} or all, "
            "or a task file (.csv, .jsonl, .json, a folder of a hub dataset's files, mib:<dataset>)"
        )
    if task_metric and not files.SOURCES:
        raise UserError("--task-metric applies to tasks from files only (the built-in tasks have their own metrics)")
    return list(dict.fromkeys(names))


def common(
    tasks: str,
    model: str,
    device: str,
    dtype: str,
    n_prompts: int,
    batch_size: int,
    seed: int,
    out: Path,
    quiet: bool = False,
    n_bootstrap: int = 1000,
    task_metric: str = "",
) -> Common:
    """Validate the shared options (before any model is loaded)."""
    from lib.core.choices import check_device_name, check_dtype_name, check_model_name

    check_at_least(1, ("--n-prompts", n_prompts), ("--batch-size", batch_size))
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be between 0 and {SEED_MAX} (got {seed})")
    if n_prompts > MAX_PROMPTS:
        raise UserError(
            f"--n-prompts must be at most {MAX_PROMPTS:,} (got {n_prompts:,}); split larger sets over seeds"
        )
    low, high = BOOTSTRAP_RANGE
    if n_bootstrap != 0 and not low <= n_bootstrap <= high:
        raise UserError(
            f"--n-bootstrap must be 0 (no intervals) or between {low} and {high:,} (got {n_bootstrap:,}): "
            f"fewer leave no resample beyond the 2.5 % and 97.5 % points"
        )
    names = parse_tasks(tasks, task_metric)
    check_model_name(model)
    check_device_name(device)
    check_dtype_name(dtype)
    if _check_only:  # every option is checked before this call; the rest of the script is the work
        raise _Checked
    progress.set_quiet(quiet)
    return Common(names, model, device, dtype, n_prompts, batch_size, seed, out, n_bootstrap, task_metric)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Suspended(Exception):
    """An interrupted run, reported in one line; code is the exit status (128 + signal)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Checked(Exception):
    """Raised where a script would start loading its model, when only its options are being checked."""


_check_only = False


def check_argv(app: typer.Typer, argv: list[str]) -> str | None:
    """Run a script's own option parsing and checks on argv, stopping before the model loads; returns the
    error line it would print (None if the options are accepted). Nothing is written."""
    global _check_only
    command = typer.main.get_command(app)
    _check_only = True
    try:
        command.main(args=argv_.join_variadic(list(argv)), prog_name="check", standalone_mode=False)
    except _Checked:
        return None
    except UserError as e:
        return str(e)
    except _click_exceptions.UsageError as e:
        return e.format_message()
    finally:
        _check_only = False
    return None


def load_script(name: str):
    """A numbered script's module (its typer `app`, HEADLINE, ...) by file name, e.g. '06_acdc.py'."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / name
    if not (path.is_file() and name[:2].isdigit() and name.endswith(".py")):
        raise UserError(f"unknown script {name!r}")
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load script {name!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def experiment(script: str, opts: Common, resume: Path | None = None, headline: list | None = None, **extra_options):
    """Load the model, open a run directory; on success the run's headline metrics (the script's HEADLINE,
    lib.io.headline) are written to headline.csv and the run is moved into place whole. opts.processing: the
    weight processing the run's dictionaries were trained on (lib.features.files.processing_of; default processed).
    An interrupted run (Ctrl-C, SIGTERM, SIGHUP) keeps its finished units of work for --resume."""
    from lib.core.model import load_model

    def load(run):
        model = load_model(opts.model, opts.device, opts.dtype, seed=opts.seed, processing=opts.processing)
        run.record["model"] = model.describe()
        if "rows_per_pass" in extra_options and extra_options["rows_per_pass"] is None:  # the device's default
            run.record["options"]["rows_per_pass"] = model.rows_per_pass
        return model

    with _experiment(script, opts, resume, headline, load, extra_options) as (model, run):
        yield model, run


@contextmanager
def experiment_pair(
    script: str,
    opts: Common,
    second: tuple[str, dict | None],
    resume: Path | None = None,
    headline: list | None = None,
    **extra_options,
):
    """experiment with two models (11): opts.model (A) and second = (name, weight processing) (B), recorded as
    run.json's model and model_b; the same name and processing twice is loaded once and used for both."""
    from lib.core.model import load_model

    def load(run):
        model = load_model(opts.model, opts.device, opts.dtype, seed=opts.seed, processing=opts.processing)
        name, processing = second
        same = name == opts.model and processing == opts.processing
        other = model if same else load_model(name, opts.device, opts.dtype, seed=opts.seed, processing=processing)
        run.record["model"], run.record["model_b"] = model.describe(), other.describe()
        return model, other

    with _experiment(script, opts, resume, headline, load, extra_options) as (models, run):
        yield models, run


@contextmanager
def _experiment(script: str, opts: Common, resume: Path | None, headline: list | None, load, extra_options: dict):
    """The run around load(run) (which loads the model or models and records them): see experiment."""
    from lib.io.headline import extract
    from lib.io.results import RunDir

    if _check_only:
        raise _Checked
    seed_everything(opts.seed)
    record = {"options": {**asdict(opts), "out": str(opts.out), **extra_options}, "seed": opts.seed}
    run = RunDir(opts.out, script, record, ARGV, resume=resume)  # checks --out is writable before the model load
    try:
        yield load(run), run
    except KeyboardInterrupt as e:
        where, name = run.suspend(), getattr(e, "name", "Ctrl-C")
        if where is None:
            raise Suspended(
                f"interrupted by {name} before any unit of work finished; nothing was kept", interrupts.exit_code(e)
            ) from None
        raise Suspended(
            f"interrupted by {name}; finished work kept in {where}; continue with: "
            f"uv run python {script}.py --resume {where}",
            interrupts.exit_code(e),
        ) from None
    except BaseException:
        if resume is None:
            run.abort()
        raise
    from tasks import files

    if any(name in files.SOURCES for name in opts.tasks):  # provenance of every task read from a file
        run.record["task_files"] = {n: files.SOURCES[n].provenance() for n in opts.tasks if n in files.SOURCES}
    if headline:
        run.csv("headline.csv", extract(headline, run.path))
    from lib.io import view_page

    if script in view_page.SCRIPTS:  # the run's page, from the files just written
        view_page.write(run)
    final = run.finish()
    print(f"wrote {final}")


def per_task(run, names, compute, key=str) -> dict:
    """{name: compute(name)} with each result checkpointed as it finishes: a resumed run reuses the tasks
    an interrupted run completed (their results are pickled in the run directory, so reruns are identical)."""
    results = {}
    for name in names:
        results[name] = run.unit(key(name))
        if results[name] is None:
            results[name] = compute(name)
            run.save_unit(key(name), results[name])
    return results


def guarded(prog: str, invoke, interrupted_note: str = "") -> None:
    """Run a typer command (invoke() returns its exit code) under the error policy: usage and input errors
    print one line and exit 2; Ctrl-C, SIGTERM and SIGHUP exit 128 + the signal number (130, 143, 129)."""
    with interrupts.handled():
        try:
            code = invoke()
            if isinstance(code, int) and code:  # typer turns Ctrl-C into exit code 130, returned not raised
                if code == 130:
                    raise interrupts.last or KeyboardInterrupt
                sys.exit(code)
        except UserError as e:
            print(f"error: {argv_.one_line(str(e))}", file=sys.stderr)
            sys.exit(2)
        except _click_exceptions.UsageError as e:
            print(f"error: {argv_.one_line(e.format_message())} (see {prog} --help)", file=sys.stderr)
            sys.exit(2)
        except Suspended as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.code)
        except (typer.Abort, KeyboardInterrupt) as e:
            print(f"error: interrupted by {getattr(e, 'name', 'Ctrl-C')}{interrupted_note}", file=sys.stderr)
            sys.exit(interrupts.exit_code(e))


def main(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a numbered script's typer app under the error policy (see guarded); `--resume DIR` replays the
    interrupted run's own arguments."""
    command = typer.main.get_command(app)
    callback = app.registered_commands[0].callback
    assert callback is not None, "a script's app has one command"
    script = Path(callback.__code__.co_filename).stem

    def invoke():
        global ARGV
        ARGV, resume = argv_.resume_argv(list(sys.argv[1:] if argv is None else argv), script)
        args = argv_.join_variadic(ARGV) + (["--resume", resume] if resume else [])
        return command.main(args=args, prog_name=f"{script}.py", standalone_mode=False)

    guarded(f"{script}.py", invoke)


def script_app(help_text: str | None) -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=help_text)


def task_builds(model, opts: Common, seed: int | None = None) -> dict:
    """Each selected task's dataset for this model's tokenizer."""
    from tasks import TASKS

    seed = opts.seed if seed is None else seed
    return {name: TASKS[name].build(model.tokenizer, opts.n_prompts, seed) for name in opts.tasks}


def task_split(run, name: str, tokenizer, opts: Common, check=None):
    """A task's discovery and held-out prompts (lib.methods.faithfulness.discovery_and_held_out), the split
    recorded in run.json under `splits` and, where a task file was too small for --n-prompts, said."""
    from lib.methods.faithfulness import discovery_and_held_out

    split = discovery_and_held_out(name, tokenizer, opts.n_prompts, opts.seed)
    if check is not None:  # the caller's refusals come before the note: a refusal is one line
        check(split)
    run.record.setdefault("splits", {})[name] = split.record
    if split.halved:
        progress.note(
            f"{name}: {split.record['usable_prompts']} usable prompts, fewer than 2 x --n-prompts "
            f"({2 * opts.n_prompts}): split in halves, {len(split.discovery)} to discover the circuit and "
            f"{len(split.held_out)} to evaluate it (rows in run.json)"
        )
    return split
