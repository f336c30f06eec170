"""Headline metrics: each script declares, in one place (its HEADLINE list), the numbers a paper table
reports; the script writes them to headline.csv and batch.py aggregates that file across a grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["task", "metric", "value", "ci_low", "ci_high"]


@dataclass(frozen=True)
class Metric:
    """One headline number per task (or per task x `by` value): read `value` from the rows of `file` that
    match `where`, or compute it with `fn(rows)`; `ci_low`/`ci_high` columns are carried where the CSV has them."""

    name: str  # may name `by` columns: "faithfulness@tau={tau:g}"
    file: str
    value: str | None = None
    where: dict = field(default_factory=dict)
    by: tuple[str, ...] = ()
    fn: Callable[[pd.DataFrame], float | tuple[float, float, float]] | None = None  # value or (value, low, high)
    ci: tuple[str, str] | None = None  # default: <value>_ci_low, <value>_ci_high


def _rows(metric: Metric, df) -> list[dict]:
    for col, want in metric.where.items():
        df = df[df[col] == want]
    out = []
    for task, rows in df.groupby("task", sort=False):
        groups = rows.groupby(list(metric.by), sort=False) if metric.by else [((), rows)]
        for key, part in groups:
            key = key if isinstance(key, tuple) else (key,)
            name = metric.name.format(**dict(zip(metric.by, key)))
            if metric.fn is not None:  # a value, or (value, ci_low, ci_high)
                got = metric.fn(part)
                value, lo, hi = got if isinstance(got, tuple) else (got, np.nan, np.nan)
            else:
                if len(part) != 1:
                    raise ValueError(f"headline {name}: {len(part)} rows of {metric.file} match for task {task}")
                row = part.iloc[0]
                value = row[metric.value]
                ci = metric.ci or (f"{metric.value}_ci_low", f"{metric.value}_ci_high")
                lo, hi = (row[c] if c in part.columns else np.nan for c in ci)
            out.append({"task": task, "metric": name, "value": float(value), "ci_low": float(lo), "ci_high": float(hi)})
    return out


def extract(metrics: list[Metric], run_dir: Path) -> pd.DataFrame:
    """The headline table (task, metric, value, ci_low, ci_high) of a run directory's CSVs."""
    import pandas as pd

    rows = []
    for metric in metrics:
        path = Path(run_dir) / metric.file
        if path.is_file():
            rows += _rows(metric, pd.read_csv(path))
    return pd.DataFrame(rows, columns=COLUMNS)
