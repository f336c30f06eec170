"""Tasks from files: read and check a prompt-pair file without torch (so a bad file is refused before anything
heavy loads), detect its format from its columns, and register it as a task named after the file's stem.

Formats (the columns of the first row decide; every row must have them):
- `text-pairs` (ours, CSV or JSONL): clean, corrupted, correct, wrong [, group] [, metric]. correct and wrong are
  one or more answer strings (`|`-separated in CSV, a list or a string in JSONL), each tokenized exactly as
  written, so write the leading space a word needs (" Mary").
- `eap-ig-ids` (the EAP-IG library's CSV): clean, corrupted, correct_idx, incorrect_idx: token ids (an int, or a
  list such as "[318, 389]").
- `eap-ig-label` (EAP-IG's greater-than CSV): clean, corrupted, label: the start year's two digits YY; the answer
  set is the years after YY, the wrong set the years up to YY, scored by prob_diff (Hanna et al.'s metric).
- MIB's circuit-track task data (Mueller et al. 2025; as its HFEAPDataset reads them): `mib-ioi` (prompt,
  metadata.indirect_object/subject, s2_io_flip_counterfactual.prompt), `mib-mcqa` (MCQA and ARC: prompt, choices,
  answerKey, symbol_counterfactual), `mib-arithmetic` (prompt, label, operator, random_counterfactual): a local
  copy (JSONL, a JSON list, or a folder of its parquet/JSONL files), or `mib:<dataset>[:split]` from the hub.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lib.core.errors import UserError, user_path

FORMATS = ("text-pairs", "eap-ig-ids", "eap-ig-label", "mib-ioi", "mib-mcqa", "mib-arithmetic")
METRIC_KINDS = ("logit_diff", "logit_minus_max", "prob_diff")  # tasks/base.py
SUFFIXES = (".csv", ".jsonl", ".json")
MIB_HUB = "mib-bench"  # MIB's datasets on the Hugging Face hub: mib-bench/ioi, mib-bench/arithmetic_addition, ...
NOT_AVAILABLE = (
    "canonical circuit: ROC/AUC rows are omitted",
    "causal-scrubbing features beyond whole-prompt and answer-feature (the correct answer)",
    "a second corruption: 23's corruption=second settings are not applicable",
)


@dataclass
class FileSource:
    """A task file, read and checked: its rows (dicts) in file order, format, metric, provenance."""

    name: str
    path: str
    format: str
    rows: list[dict]
    metric: str
    size: int | None = None
    sha256: str | None = None
    stats: dict = field(default_factory=dict)  # filled by the builder: rows kept, dropped and why

    def provenance(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "format": self.format,
            "metric": self.metric,
            "rows": len(self.rows),
            **self.stats,
            "not_available": list(NOT_AVAILABLE),
        }


SOURCES: dict[str, FileSource] = {}  # task name -> its file, for every file named on the command line


def reset() -> None:
    """Forget the task files of an earlier command line (one process may parse several: tests, batch checks)."""
    SOURCES.clear()


def is_file_spec(token: str) -> bool:
    """Whether a --tasks value names a file (a path or mib:<dataset>) rather than a built-in task."""
    return token.startswith("mib:") or "/" in token or token.endswith(SUFFIXES) or Path(token).exists()


def register(spec: str, task_metric: str = "") -> str:
    """Read and check a task file (or mib:<dataset>), register it, and return its task name (the stem)."""
    from tasks.names import TASK_NAMES

    if task_metric and task_metric not in METRIC_KINDS:
        raise UserError(f"unknown --task-metric {task_metric!r}; choose from {', '.join(METRIC_KINDS)}")
    if spec.startswith("mib:"):
        source = _from_hub(spec)
    else:
        source = _from_path(user_path(spec, "task file"))
    if source.name in TASK_NAMES:
        raise UserError(f"task file {spec}: its name {source.name!r} is a built-in task's; rename the file")
    if source.name in SOURCES and SOURCES[source.name].path != source.path:
        raise UserError(
            f"task files {SOURCES[source.name].path} and {spec} have the same name {source.name!r}; rename one"
        )
    source.metric = _metric(source, task_metric, spec)
    SOURCES[source.name] = source  # tasks.TASKS reads SOURCES: the task is registered from here on
    return source.name


def _metric(source: FileSource, option: str, spec: str) -> str:
    named = {str(r.get("metric", "")).strip() for r in source.rows} - {""} if source.format == "text-pairs" else set()
    if len(named) > 1:
        raise UserError(
            f"task file {spec}: its metric column names several metrics ({', '.join(sorted(named))}); a task has one"
        )
    if named - set(METRIC_KINDS):
        raise UserError(f"task file {spec}: unknown metric {named.pop()!r}; choose from {', '.join(METRIC_KINDS)}")
    if source.format == "eap-ig-label":
        if option and option != "prob_diff":
            raise UserError(
                f"task file {spec}: the label format is scored by prob_diff (years after YY against "
                f"the rest), not {option}"
            )
        return "prob_diff"
    if named and option and named != {option}:
        raise UserError(f"task file {spec} names metric {named.pop()} but --task-metric is {option}")
    return option or (named.pop() if named else "logit_diff")


def _from_path(path: Path) -> FileSource:
    try:
        is_dir = path.is_dir()
        if not is_dir and not path.is_file():
            raise UserError(f"task file {path} does not exist")
        files = _data_files(path) if is_dir else [path]
        raw = b"".join(f.read_bytes() for f in files)
    except OSError as e:
        raise UserError(f"task file {path} cannot be read ({e.strerror or e})") from None
    rows = []
    for f in files:
        rows += _read_rows(f)
    if not rows:
        raise UserError(f"task file {path} has no rows")
    name = path.name if is_dir else path.stem
    return FileSource(name, str(path), detect(rows, str(path)), rows, "", len(raw), hashlib.sha256(raw).hexdigest())


def _data_files(folder: Path) -> list[Path]:
    """The data files of a local copy of a hub dataset (its parquet or JSON(L) files, in name order)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in (".parquet", ".jsonl", ".json")
        and p.is_file()
        and not p.name.startswith(("dataset_info", "state", "dataset_dict"))
    )
    if not files:
        raise UserError(f"task folder {folder} holds no .parquet, .jsonl or .json data files")
    return files


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any unreadable parquet file is one line
            raise UserError(f"task file {path} is not a readable parquet file ({type(e).__name__})") from None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"task file {path} is not UTF-8 text") from None
    if path.suffix == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            rows = [dict(r) for r in reader]
        except csv.Error as e:
            raise UserError(f"task file {path} is not valid CSV ({e})") from None
        if reader.fieldnames is None:
            raise UserError(f"task file {path} is empty")
        for i, r in enumerate(rows, 2):
            if None in r or any(v is None for v in r.values()):
                raise UserError(f"task file {path}, line {i}: the row has not as many fields as the header")
        return rows
    if path.suffix == ".jsonl" or (path.suffix == ".json" and text.lstrip().startswith("{")):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"task file {path}, line {i}: not a JSON object ({e.msg})") from None
    elif path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"task file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        raise UserError(
            f"task file {path}: unknown kind of file; use .csv, .jsonl or .json (or a folder of a hub dataset's files)"
        )
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"task file {path}: every row must be a JSON object")
    return rows


def detect(rows: list[dict], where: str) -> str:
    """The format whose columns the first row has; every row must have them too."""
    keys = set(rows[0])
    if {"clean", "corrupted", "correct", "wrong"} <= keys:
        form, need = "text-pairs", ("clean", "corrupted", "correct", "wrong")
    elif {"clean", "corrupted", "correct_idx", "incorrect_idx"} <= keys:
        form, need = "eap-ig-ids", ("clean", "corrupted", "correct_idx", "incorrect_idx")
    elif {"clean", "corrupted", "label"} <= keys:
        form, need = "eap-ig-label", ("clean", "corrupted", "label")
    elif "prompt" in keys and isinstance(rows[0].get("metadata"), dict) and "s2_io_flip_counterfactual" in keys:
        form, need = "mib-ioi", ("prompt", "metadata", "s2_io_flip_counterfactual")
    elif {"prompt", "choices", "answerKey", "symbol_counterfactual"} <= keys:
        form, need = "mib-mcqa", ("prompt", "choices", "answerKey", "symbol_counterfactual")
    elif {"prompt", "label", "random_counterfactual"} <= keys:
        form, need = "mib-arithmetic", ("prompt", "label", "random_counterfactual")
    else:
        raise UserError(
            f"task file {where}: no known format fits its columns ({', '.join(sorted(map(str, keys)))}); "
            "expected clean, corrupted, correct, wrong (text pairs), clean, corrupted, correct_idx, "
            "incorrect_idx or clean, corrupted, label (EAP-IG), or MIB's task data"
        )
    for i, r in enumerate(rows, 1):
        missing = [k for k in need if k not in r]
        if missing:
            raise UserError(
                f"task file {where}, row {i}: no {', '.join(missing)} (a {form} file needs them in every row)"
            )
    if form == "text-pairs" and any(str(r.get("group", "")).strip() == "all" for r in rows):
        raise UserError(f"task file {where}: group 'all' is reserved for the summary over every item; rename it")
    return form


def parse_ids(value, what: str) -> list[int]:
    """A token-id cell: an int, or a list of ints (EAP-IG writes "[318]" or "318")."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise UserError(f"{what} {value!r} is not a token id or a list of them") from None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise UserError(f"{what} {value!r} is not a token id or a list of them")
    return ids


def _from_hub(spec: str) -> FileSource:
    """mib:<dataset>[:split] through the datasets library (the real loading code; offline it is one line)."""
    _, _, rest = spec.partition(":")
    dataset, _, split = rest.partition(":")
    if not dataset:
        raise UserError("--tasks mib:<dataset>[:split] needs a dataset name, e.g. mib:ioi or mib:arithmetic_addition")
    from lib.core.model import hub_reachable

    if not hub_reachable():
        raise UserError(
            f"cannot load {spec} from the Hugging Face hub (offline or unreachable); use a local copy "
            "of the dataset's files: --tasks path/to/folder"
        )
    try:
        from datasets import load_dataset

        config = "4_answer_choices" if "mcqa" in dataset else None  # as MIB's HFEAPDataset loads MCQA
        rows = [dict(row) for row in load_dataset(f"{MIB_HUB}/{dataset}", config, split=split or "train")]
    except Exception as e:  # noqa: BLE001 - any failure of the hub is one line
        raise UserError(
            f"cannot load {spec} from the hub ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if not rows:
        raise UserError(f"{spec} has no rows")
    return FileSource(dataset, spec, detect(rows, spec), rows, "")
