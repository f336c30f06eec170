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
