"""Plots shared by the scripts (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid(n: int, width: float = 4.2, height: float = 3.6):
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def heatmaps(panels: dict[str, np.ndarray], title: str, xlabel: str, ylabel: str, cbar: str,
             xticklabels=None, diverging: bool = True):
    """One heatmap per panel (e.g. per task), layer on the y axis."""
    fig, axes = _grid(len(panels))
    for ax, (name, values) in zip(axes, panels.items()):
        values = np.asarray(values, dtype=float)
        lim = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
        lim = lim if lim > 0 else 1.0
        kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim) if diverging else dict(cmap="viridis")
        im = ax.imshow(values, aspect="auto", origin="lower", **kw)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)))
            ax.set_xticklabels(xticklabels, rotation=90, fontsize=6)
        fig.colorbar(im, ax=ax, label=cbar)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def top_bars(panels: dict[str, tuple[list[str], np.ndarray, np.ndarray]], title: str, xlabel: str, k: int = 15):
    """Horizontal bars of the k components with the largest |value| per panel, with error bars."""
    fig, axes = _grid(len(panels), width=4.6, height=0.28 * k + 1.2)
    for ax, (name, (labels, values, errors)) in zip(axes, panels.items()):
        order = np.argsort(-np.abs(values))[:k][::-1]
        ax.barh(range(len(order)), values[order], xerr=errors[order], color=np.where(values[order] >= 0, "C0", "C3"))
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([labels[i] for i in order], fontsize=8)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def histograms(panels: dict[str, dict[str, np.ndarray]], title: str, xlabel: str):
    """Overlaid histograms per panel (e.g. clean vs corrupted metric per task)."""
    fig, axes = _grid(len(panels))
    for ax, (name, series) in zip(axes, panels.items()):
        finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in series.values()])
        bins = np.histogram_bin_edges(finite, bins=30) if len(finite) else 10
        for label, values in series.items():
            ax.hist(values, bins=bins, alpha=0.55, label=label)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _label_axes(fig, ax, title: str, xlabel: str, ylabel: str, legend: bool = True):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
           logx: bool = False, diagonal: bool = False, labels: dict[str, str] | None = None):
    """One line per panel on shared axes (faithfulness vs edges kept, ROC curves)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, (x, y) in panels.items():
        ax.plot(x, y, marker=".", label=(labels or {}).get(name, name))
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
    if logx:
        ax.set_xscale("log")
    return _label_axes(fig, ax, title, xlabel, ylabel)


def circuit_diagram(edges: list[tuple[str, str, float]], n_layers: int, n_heads: int, title: str):
    """Nodes laid out by layer (rows) and head (columns), edges as lines with width ~ |score|."""
    def xy(node: str) -> tuple[float, float]:
        node = node.split("<")[0]
        if node == "input":
            return (n_heads / 2, -1.0)
        if node == "logits":
            return (n_heads / 2, n_layers)
        if node.startswith("m"):
            return (n_heads + 0.5, int(node[1:]) + 0.5)
        layer, head = node[1:].split(".h")
        return (int(head), int(layer))

    fig, ax = plt.subplots(figsize=(0.55 * n_heads + 3, 0.55 * n_layers + 2.5))
    top = max((abs(s) for _, _, s in edges if np.isfinite(s)), default=1.0) or 1.0
    nodes = set()
    for u, v, s in edges:
        (x0, y0), (x1, y1) = xy(u), xy(v)
        w = 0.4 + 3.0 * abs(s) / top if np.isfinite(s) else 1.0
        color = {"q": "C0", "k": "C2", "v": "C1"}.get(v[-2] if v.endswith(">") else "", "0.4")
        ax.plot([x0, x1], [y0, y1], color=color, lw=w, alpha=0.6, zorder=1)
        nodes |= {u, v.split("<")[0]}
    for n in nodes:
        x, y = xy(n)
        ax.scatter([x], [y], s=120, color="white", edgecolor="k", zorder=2)
        ax.annotate(n, (x, y), fontsize=6, ha="center", va="center", zorder=3)
    ax.set_xlim(-1, n_heads + 1.5)
    ax.set_ylim(-1.7, n_layers + 0.7)
    ax.set_xlabel("head (MLPs at the right); edge colour: q blue, k green, v orange, other grey")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def grouped_bars(table, title: str, ylabel: str):
    """Bars grouped by row (e.g. task), one colour per column (e.g. metric); table is a DataFrame."""
    fig, ax = plt.subplots(figsize=(1.8 * len(table) + 3, 4))
    width = 0.8 / max(len(table.columns), 1)
    x = np.arange(len(table))
    for i, col in enumerate(table.columns):
        ax.bar(x + i * width - 0.4 + width / 2, table[col].to_numpy(dtype=float), width, label=col)
    ax.set_xticks(x)
    ax.set_xticklabels(table.index)
    ax.axhline(0, color="k", lw=0.6)
    return _label_axes(fig, ax, title, "", ylabel)


def scatter(panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
            loglog: bool = False):
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (x, y) in panels.items():
        ax.scatter(x, y, s=10, alpha=0.6, label=name)
    if loglog:
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_yscale("symlog", linthresh=1e-4)
    return _label_axes(fig, ax, title, xlabel, ylabel)


def scrubbing(seeds, task: str):
    """Per hypothesis: mean KL(full || scrubbed) and loss recovered, bars = mean over seeds, dots = seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = list(dict.fromkeys(seeds.hypothesis))
    x = np.arange(len(labels))
    for ax, col, ylabel in ((axes[0], "kl_mean", "KL(full || scrubbed), nats"),
                            (axes[1], "loss_recovered_ratio_of_means", "loss recovered (ratio of means)")):
        per = [seeds[seeds.hypothesis == h][col].to_numpy(dtype=float) for h in labels]
        ax.bar(x, [v.mean() for v in per], color="#9ab", width=0.6)
        for i, v in enumerate(per):
            ax.scatter(np.full(len(v), i), v, s=14, color="k", zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels([h.replace(" (", "\n(") for h in labels], fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("symlog", linthresh=1e-3)  # the baseline's KL is orders of magnitude above the rest
    fig.suptitle(f"Causal scrubbing: {task} (bars: mean over seeds; dots: seeds)")
    fig.tight_layout()
    return fig
