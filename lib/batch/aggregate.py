"""Aggregation of a grid's finished cells: their headline.csv files in one tidy table, folded across seeds
(mean, std, 95% t-interval), as Markdown/LaTeX tables and plots with error bars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lib.io.results import FLOAT_FORMAT, atomic_write

CONFIDENCE = 0.95


def summary(out: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per finished cell x headline metric, with the cell's options as columns (no timings)."""
    frames, option_names = [], []
    for row in manifest[manifest.state == "done"].to_dict("records"):
        options = json.loads(row["options"])
        option_names += [k for k in options if k not in option_names and k != "tasks"]
        path = Path(out) / row["run_dir"] / "headline.csv"
        if not path.is_file():
            continue
        h = pd.read_csv(path)
        for k, v in options.items():
            if k != "tasks":
                h[k] = str(v)
        h["cell_id"], h["script"] = row["cell_id"], row["script"]
        frames.append(h)
    columns = ["cell_id", "script", "task", *option_names, "metric", "value", "ci_low", "ci_high"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def t_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high): the 95% Student-t interval of the mean across seeds (nan for one seed)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan, np.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(v.std(ddof=1))
    lo, hi = (
        stats.t.interval(CONFIDENCE, len(v) - 1, loc=mean, scale=std / np.sqrt(len(v))) if std > 0 else (mean, mean)
    )
    return mean, std, float(lo), float(hi)


def by_seed(table: pd.DataFrame) -> pd.DataFrame:
    """Cells that differ only in seed folded: mean, std, 95% interval across seeds, n_seeds."""
    keys = [c for c in table.columns if c not in ("cell_id", "seed", "value", "ci_low", "ci_high")]
    rows = []
    for key, d in table.groupby(keys, sort=False, dropna=False):
        mean, std, lo, hi = t_interval(d.value.to_numpy())
        rows.append(
            {
                **dict(zip(keys, key)),
                "n_seeds": int(np.isfinite(d.value).sum()),
                "mean": mean,
                "std": std,
                "ci_low": lo,
                "ci_high": hi,
                "seeds": " ".join(sorted(d["seed"].astype(str))) if "seed" in d else "",
            }
        )
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ("script", "task", "metric", "n_seeds", "mean", "std", "ci_low", "ci_high", "seeds")


def _varying(d: pd.DataFrame) -> list[str]:
    """The option columns whose value differs between the rows of one script's folded table."""
    return [c for c in d.columns if c not in SUMMARY_COLUMNS and d[c].nunique(dropna=False) > 1]


def _cell_text(r) -> str:
    if not np.isfinite(r["mean"]):
        return "–"
    if np.isfinite(r["ci_low"]):
        return f"{r['mean']:.3g} ± {(r['ci_high'] - r['ci_low']) / 2:.2g}"
    return f"{r['mean']:.3g}"


def tables(folded: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per script: rows = task (and every option that varies), columns = metrics, `mean ± half-width`."""
    out = {}
    for script, d in folded.groupby("script", sort=False):
        varying = _varying(d)
        d = d.assign(text=[_cell_text(r) for _, r in d.iterrows()])
        table = d.pivot_table(index=["task", *varying], columns="metric", values="text", aggfunc="first", sort=False)
        out[script] = table.reset_index()
    return out


def write_tables(out: Path, folded: pd.DataFrame) -> None:
    md, tex = [], []
    note = (
        f"Values: mean over seeds ± half-width of the {CONFIDENCE:.0%} Student-t interval across seeds "
        "(mean alone for one seed)."
    )
    for script, table in tables(folded).items():
        md += [f"## {script}", "", note, "", table.to_markdown(index=False), ""]
        tex += [
            f"% {script}: {note}",
            table.to_latex(index=False, caption=f"{script}: {note}", label=f"tab:{script.removesuffix('.py')}"),
            "",
        ]
    atomic_write(Path(out) / "tables.md", lambda p: p.write_text("\n".join(md)))
    atomic_write(Path(out) / "tables.tex", lambda p: p.write_text("\n".join(tex)))


def plots(out: Path, folded: pd.DataFrame) -> list[Path]:
    """One figure per script: a panel per headline metric, bars per task (and varying options), error bars
    = the 95% interval across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    (Path(out) / "plots").mkdir(exist_ok=True)
    for script, d in folded.groupby("script", sort=False):
        metrics = list(dict.fromkeys(d.metric))
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.6), squeeze=False, layout="constrained"
        )
        varying = _varying(d)
        for ax, metric in zip(axes[0], metrics):
            m = d[d.metric == metric]
            labels = [" ".join([r.task, *(f"{c}={r[c]}" for c in varying)]) for _, r in m.iterrows()]
            err = np.vstack([m["mean"] - m.ci_low, m.ci_high - m["mean"]])
            ax.bar(range(len(m)), m["mean"], yerr=np.nan_to_num(err), capsize=3, color="#7a9cc6")
            ax.set_xticks(range(len(m)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(metric, fontsize=9)
            ax.axhline(0, color="k", lw=0.5)
        axes[0][0].set_ylabel("mean over seeds")
        fig.suptitle(f"{script}: headline metrics, mean over seeds (error bars: 95% Student-t interval across seeds)")
        path = Path(out) / "plots" / f"{str(script).removesuffix('.py')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def summarize(out: Path, manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write summary.csv, summary_by_seed.csv, tables.md, tables.tex and plots/ under out."""
    table = summary(out, manifest)
    folded = by_seed(table) if len(table) else pd.DataFrame()
    atomic_write(Path(out) / "summary.csv", lambda p: table.to_csv(p, index=False, float_format=FLOAT_FORMAT))
    atomic_write(Path(out) / "summary_by_seed.csv", lambda p: folded.to_csv(p, index=False, float_format=FLOAT_FORMAT))
    if len(folded):
        write_tables(out, folded)
        plots(out, folded)
    return table, folded
