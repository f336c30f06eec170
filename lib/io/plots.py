"""Plots shared by the scripts (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TASK_METRIC_LABELS = {  # the x label of a task metric, with its unit (tasks/base.py METRIC_KINDS)
    "logit_diff": "logit(correct) − logit(wrong), logits",
    "logit_minus_max": "logit(correct) − max logit(wrong names), logits",
    "prob_diff": "P(correct set) − P(wrong set), probability",
}


def _grid(n: int, width: float = 4.2, height: float = 3.6):
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _integer_ticks(ax, n: int, axis: str, labels=None, max_ticks: int = 40) -> None:
    """Integer ticks 0..n-1 (thinned to at most max_ticks unless labels must all show)."""
    step = 1 if labels is not None else max(1, -(-n // max_ticks))
    ticks = list(range(0, n, step))
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    if labels is None:
        set_ticks(ticks, [str(t) for t in ticks])
    else:
        set_ticks(ticks, list(labels), rotation=90 if axis == "x" else 0, fontsize=6 if n > 12 else 8)


def heatmaps(
    panels: Mapping[str, np.ndarray],
    title: str,
    xlabel: str,
    ylabel: str,
    cbar: str,
    xticklabels=None,
    yticklabels=None,
    diverging: bool = True,
):
    """One heatmap per panel (e.g. per task, layer on the y axis) on one colour scale shared by all panels,
    symmetric about 0 when diverging; the scale is stated in the title."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()])
    if diverging:
        lim = float(np.abs(finite).max()) if len(finite) and np.abs(finite).max() > 0 else 1.0
        kw, scale = dict(cmap="RdBu_r", vmin=-lim, vmax=lim), f"±{lim:.3g}"
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        kw, scale = dict(cmap="viridis", vmin=lo, vmax=hi), f"{lo:.3g} to {hi:.3g}"
    wide = xticklabels is not None and len(xticklabels) > 12
    width = max(4.2, 0.3 * len(xticklabels) + 2.5) if xticklabels is not None and wide else 4.2
    fig, axes = _grid(len(arrays), width=width)
    for ax, (name, values) in zip(axes, arrays.items()):
        im = ax.imshow(values, aspect="auto", origin="lower", interpolation="nearest", **kw)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _integer_ticks(ax, values.shape[1], "x", xticklabels)
        _integer_ticks(ax, values.shape[0], "y", yticklabels)
    fig.colorbar(im, ax=axes, label=cbar, shrink=0.9)
    shared = "shared by all panels: " if len(arrays) > 1 else ""
    fig.suptitle(f"{title}\n(colour scale {shared}{scale})")
    return fig


def top_bars(panels: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]], title: str, xlabel: str, k: int = 15):
    """Horizontal bars of the k components with the largest |value| per panel, with error bars (named in
    the title by the caller)."""
    fig, axes = _grid(len(panels), width=4.6, height=0.28 * k + 1.2)
    for ax, (name, (labels, values, errors)) in zip(axes, panels.items()):
        order = np.argsort(-np.abs(values))[:k][::-1]
        ax.barh(range(len(order)), values[order], xerr=errors[order], color=np.where(values[order] >= 0, "C0", "C3"))
        ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=8)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    fig.suptitle(title)
    return fig


def _bins(finite: np.ndarray, n: int = 30):
    """Histogram bin edges of finite values; values that (nearly) all agree get bins of width 0.1 around them
    (numpy cannot split a range of zero width)."""
    if not len(finite):
        return 10
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        return np.linspace(lo - 0.5, hi + 0.5, 11)
    return np.histogram_bin_edges(finite, bins=n)


def histograms(
    panels: Mapping[str, Mapping[str, np.ndarray]], title: str, xlabels: dict[str, str] | str, ylabel: str = "prompts"
):
    """Overlaid histograms per panel (e.g. clean vs corrupted metric per task); x label per panel."""
    fig, axes = _grid(len(panels))
    for ax, (name, series) in zip(axes, panels.items()):
        finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in series.values()])
        bins = _bins(finite)
        for label, values in series.items():
            ax.hist(values, bins=bins, alpha=0.55, label=label)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel(xlabels if isinstance(xlabels, str) else xlabels[name])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _label_axes(fig, ax, title: str, xlabel: str, ylabel: str, legend: bool = True):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    diagonal: bool = False,
    labels: dict[str, str] | None = None,
    hlines: dict[float, str] | None = None,
    xticks: list[str] | None = None,
):
    """One line per panel on shared axes (faithfulness vs edges kept, ROC curves); hlines marks references."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    lone = all(len(np.atleast_1d(x)) == 1 for x, _ in panels.values())  # one point per curve (one threshold)
    for name, (x, y) in panels.items():
        ax.plot(x, y, marker="o" if lone else ".", markersize=7 if lone else 6, label=(labels or {}).get(name, name))
        if lone:  # a point alone says nothing unless its values are written next to it
            ax.annotate(
                f"{np.atleast_1d(x)[0]:g}, {np.atleast_1d(y)[0]:.3g}",
                (np.atleast_1d(x)[0], np.atleast_1d(y)[0]),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=7,
            )
    for y, text in (hlines or {}).items():
        ax.axhline(y, color="grey", lw=0.7, ls=":")
        ax.annotate(text, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7, color="grey", va="bottom")
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--", label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    if xticks is not None:  # named x positions 0..n-1
        ax.set_xticks(range(len(xticks)), xticks, rotation=60, ha="right", fontsize=7)
    xs = np.unique(np.concatenate([np.atleast_1d(np.asarray(x, dtype=float)) for x, _ in panels.values()]))
    if logx and (xs > 0).any():  # no positive x (e.g. circuits of 0 edges only): a linear axis, not a crash
        ax.set_xscale("log")
        if len(xs) <= 10:  # less than a decade or two: label the points themselves, not log minor ticks
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if len(xs) == 1 and xs[0] > 0:  # one x: centre it in a decade rather than on a degenerate axis
            ax.set_xlim(xs[0] / 3.16, xs[0] * 3.16)
    elif logx:  # the axis stays linear: its label says no log scale, and only the points' own values are ticks
        xlabel = xlabel.replace(" (log scale)", "")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    return _label_axes(fig, ax, textwrap.fill(title, 70), xlabel, ylabel)


def grouped_bars(panels: Mapping[str, tuple], title: str):
    """Side-by-side panels {panel title: (table, y label[, (low table, high table)])}; in each, bars grouped by
    row (e.g. task), one colour per column (e.g. metric), with interval error bars where given. Quantities
    with different units go in different panels."""
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(sum(1.2 * len(p[0]) + 2.5 for p in panels.values()) + 1, 4),
        squeeze=False,
        layout="constrained",
    )
    for ax, (name, (table, ylabel, *ci)) in zip(axes[0], panels.items()):
        width = 0.8 / max(len(table.columns), 1)
        x = np.arange(len(table))
        for i, col in enumerate(table.columns):
            v = table[col].to_numpy(dtype=float)
            err = None
            if ci:  # an interval need not contain its estimate (a skewed bootstrap): no negative bar lengths
                err = np.clip(
                    np.vstack([v - ci[0][0][col].to_numpy(dtype=float), ci[0][1][col].to_numpy(dtype=float) - v]),
                    0,
                    None,
                )
            ax.bar(x + i * width - 0.4 + width / 2, v, width, yerr=err, capsize=2, label=col)
        ax.set_xticks(x, table.index)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        # below the axes, where it cannot cover a bar or an error bar
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(table.columns), 2))
    fig.suptitle(title)
    return fig


def scatter(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str, loglog: bool = False
):
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (x, y) in panels.items():
        ax.scatter(x, y, s=10, alpha=0.6, label=name)
    if loglog:
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_yscale("symlog", linthresh=1e-4)
    return _label_axes(fig, ax, title, xlabel, ylabel)


def scrubbing(seeds, task: str):
    """Per hypothesis: mean KL(full || scrubbed) and loss recovered, bars = mean over seeds, dots = seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    labels = list(dict.fromkeys(seeds.hypothesis))
    x = np.arange(len(labels))
    for ax, col, ylabel in (
        (axes[0], "kl_mean", "KL(full || scrubbed), nats"),
        (axes[1], "loss_recovered_ratio_of_means", "loss recovered, ratio of means\n(1 = full model, 0 = baseline)"),
    ):
        per = [seeds[seeds.hypothesis == h][col].to_numpy(dtype=float) for h in labels]
        ax.bar(x, [v.mean() for v in per], color="#9ab", width=0.6)
        for i, v in enumerate(per):
            ax.scatter(np.full(len(v), i), v, s=14, color="k", zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels([h.replace(" (", "\n(") for h in labels], fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("symlog", linthresh=1e-3)  # the baseline's KL is orders of magnitude above the rest
    axes[0].set_ylabel("KL(full || scrubbed), nats (symlog)")
    fig.suptitle(f"Causal scrubbing: {task} (bars: mean over seeds; dots: seeds)")
    return fig


def area_curves(curves, title: str):
    """Per task panel: faithfulness of the signed (CPR) and |score| (CMD) rankings against the fraction of edges
    (log axis), with the mean and 2.5-97.5 % band of random circuits; curves is mib_curve.csv as a DataFrame."""
    tasks = list(dict.fromkeys(curves.task))
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        d = curves[curves.task == task]
        for ranking, style in (("signed", "C0"), ("abs", "C1")):
            r = d[d.ranking == ranking]
            ax.plot(
                r.fraction * 100,
                r.faithfulness,
                marker=".",
                color=style,
                label={"signed": "signed score (CPR)", "abs": "|score| (CMD)"}[ranking],
            )
        r = d[d.ranking == "signed"]
        if r.random_mean.notna().any():
            ax.plot(r.fraction * 100, r.random_mean, color="0.4", ls="--", label="random circuits (mean)")
            ax.fill_between(
                r.fraction * 100,
                r.random_low,
                r.random_high,
                color="0.8",
                alpha=0.6,
                label="random circuits (2.5-97.5 %)",
            )
        ax.axhline(1, color="grey", lw=0.6, ls=":")
        ax.axhline(0, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("edges kept, % of all edges (log scale)")
        ax.set_ylabel("faithfulness")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}\nfaithfulness: 1 = full model, 0 = empty circuit")
    return fig


def line_text(slope: float, intercept: float) -> str:
    """'7.04 x - 0.025' (never '+ -')."""
    return f"{slope:.3g} x {'-' if intercept < 0 else '+'} {abs(intercept):.2g}"


def p_text(p: float) -> str:
    """A p-value as text that does not round to a value it is not: 'p > 0.999' for 0.9996, not 'p = 1'."""
    if p >= 1:
        return "p = 1"
    if p > 0.999:
        return "p > 0.999"
    return f"p = {p:.2e}" if p < 1e-3 else f"p = {p:.3g}"


def null_distributions(panels: Mapping[str, dict], title: str):
    """One panel per test: its null distribution (bars of a pmf, or a histogram of simulated statistics)
    with the observed statistic as a vertical line, the p-value in the panel title. Panels of distances
    (`positive`: non-negative quantities spanning orders of magnitude) use a log axis over their positive
    values, with zeros drawn at the axis floor and counted in the legend."""
    fig, axes = _grid(len(panels), width=4.4, height=3.4)
    for ax, (name, p) in zip(axes, panels.items()):
        observed = list(p.get("observed", []))
        if "pmf" in p:
            x, y = p["pmf"]
            ax.bar(x, y, width=(x[1] - x[0]) if len(x) > 1 else 0.05, color="0.7", label="null (boundary of H0)")
            ax.set_ylabel("probability")
        elif p.get("positive"):
            values = np.asarray(p.get("null", []), dtype=float)
            seen = np.r_[values, [v for v, _, _ in observed]]
            positive = seen[seen > 0]
            lo, hi = (positive.min(), positive.max()) if len(positive) else (1e-12, 1e-11)
            lo, hi = lo / 2, hi * 2  # a visible width even when every value is equal
            floor = lo
            zeros = int((values <= 0).sum())
            label = p.get("null_label", "null") + (
                f" ({zeros} of {len(values)} are 0, drawn at the left edge)" if zeros else ""
            )
            ax.hist(np.maximum(values, floor), bins=np.geomspace(floor, hi, 25), color="0.5", label=label)
            ax.set_xscale("log")
            ax.set_xlim(floor, hi)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short spans
            if np.log10(hi / floor) < 3:  # under three decades: four labelled ticks of the span itself
                ticks = np.geomspace(floor * 1.2, hi / 1.2, 4)
                ax.set_xticks(ticks, [f"{v:.3g}" for v in ticks])
            else:
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(numticks=6))
            observed = [(max(v, floor), lab, c) for v, lab, c in observed]
            ax.set_ylabel("count")
        elif len(p.get("null", [])):
            ax.hist(np.asarray(p["null"], dtype=float), bins=30, color="0.5", label=p.get("null_label", "null"))
            ax.set_ylabel("count")
        for value, label, color in observed:
            ax.axvline(value, color=color, lw=1.2, label=label)
        ax.set_xlabel(p["xlabel"])
        ax.set_title(f"{name} ({p_text(p['p_value'])})", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return fig


def matrix(
    values: np.ndarray,
    rows: list[str],
    cols: list[str],
    title: str,
    cbar: str,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """One annotated heatmap (rows x columns, e.g. choices x tasks or circuit x circuit); nan cells grey."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(
        figsize=(max(4.5, 1.1 * len(cols) + 3), max(3.0, 0.42 * len(rows) + 1.8)), layout="constrained"
    )
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(
        np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    ax.set_xticks(
        range(len(cols)), cols, rotation=30 if len(cols) > 3 else 0, ha="right" if len(cols) > 3 else "center"
    )
    ax.set_yticks(range(len(rows)), rows)
    lo, hi = im.get_clim()
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
        light = np.isfinite(v) and (v - lo) < 0.5 * (hi - lo)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    fig.colorbar(im, ax=ax, label=cbar, shrink=0.9)
    ax.set_title("\n".join(textwrap.wrap(title, 80)) if "\n" not in title else title, fontsize=10)
    return fig


def fit_scatter(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    points: str = "edges",
):
    """One scatter per panel (x, y, marked [bool] or None, (slope, intercept)) with the line of best fit and
    y = x; marked points (e.g. the canonical circuit's edges) drawn in another colour."""
    fig, axes = _grid(len(panels), width=4.6, height=4.2)
    for ax, (name, (x, y, marked, (slope, intercept))) in zip(axes, panels.items()):
        ax.scatter(x, y, s=8, alpha=0.5, color="C0", label=points)
        if marked is not None and marked.any():
            ax.scatter(x[marked], y[marked], s=14, color="C3", label="canonical circuit")
        lo, hi = float(x.min()), float(x.max())  # lines over the scores' range
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.7, ls="--", label="y = x")
        ax.plot(
            [lo, hi],
            [slope * lo + intercept, slope * hi + intercept],
            color="k",
            lw=0.9,
            label=f"fit: {line_text(slope, intercept)}",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def paired_curves(
    pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    solid: str,
    dashed: str,
):
    """Per key one colour: (x, y_solid, y_dashed), e.g. the exact metric along an interpolation and a linear
    estimate of it."""
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for i, (name, (x, a, b)) in enumerate(pairs.items()):
        ax.plot(x, a, color=f"C{i}", marker=".", label=f"{name}")
        ax.plot(x, b, color=f"C{i}", ls="--", lw=0.9)
    ax.plot([], [], color="k", label=solid)
    ax.plot([], [], color="k", ls="--", label=dashed)
    return _label_axes(fig, ax, textwrap.fill(title, 70), xlabel, ylabel)


def clustered_heatmap(values: np.ndarray, tree: np.ndarray, labels: list[str], title: str, cbar: str):
    """A square matrix (rows and columns the same items) reordered by a hierarchical clustering, with the
    dendrogram (scipy linkage matrix `tree`) above it."""
    from scipy.cluster.hierarchy import dendrogram

    n = len(labels)
    fig = plt.figure(figsize=(max(5.0, 0.32 * n + 3), max(5.5, 0.32 * n + 4)), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 3])
    order = list(
        dendrogram(tree, ax=top, no_labels=True, color_threshold=0, above_threshold_color="0.3")["leaves"] or []
    )
    top.set_axis_off()
    im = bottom.imshow(np.asarray(values)[np.ix_(order, order)], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ticks = [labels[i] for i in order]
    bottom.set_xticks(range(n), ticks, rotation=90, fontsize=7)
    bottom.set_yticks(range(n), ticks, fontsize=7)
    bottom.set_xlabel("prompt (model B's graph)")
    bottom.set_ylabel("prompt (model A's graph)")
    fig.colorbar(im, ax=bottom, label=cbar, shrink=0.9)
    fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=10)
    return fig
