"""Logs and plots: plain bounded progress lines off a terminal; shared colour scales, integer ticks, labelled
axes; circuit diagrams on the layer x head grid with a legend, and as DOT."""

import io

import numpy as np
import pandas as pd

from lib.io import diagram, plots
from lib.io.progress import LineProgress


def test_line_progress_is_plain_and_bounded():
    clock = iter(np.arange(0, 10_000, 0.01))  # 10 ms per update
    stream = io.StringIO()
    bar = LineProgress(5000, "sva tau=0.01: edges tried", "edge", stream=stream, clock=lambda: next(clock))
    for _ in range(5000):
        bar.update(1)
        bar.set_postfix(kept=3)
    bar.close()
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 10 <= len(lines) <= 10 + 50 / 30 + 2  # every tenth, plus one per 30 s of the 50 s run
    assert lines[-1].startswith("sva tau=0.01: edges tried: 5000/5000 edge (100%)") and "kept=3" in lines[-1]


def test_heatmaps_share_one_symmetric_scale_with_integer_ticks():
    fig = plots.heatmaps(
        {"a": np.array([[0.1, -0.2], [0.3, 0.0]]), "b": np.array([[2.0, 1.0], [0.0, -0.5]])},
        "t",
        "head",
        "layer",
        "DLA (logit difference)",
    )
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(im.get_clim() == (-2.0, 2.0) for im in images)
    for ax in fig.axes[:2]:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
        assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    assert "±2" in fig.get_suptitle()
    colorbars = [ax for ax in fig.axes if ax.get_ylabel() == "DLA (logit difference)"]
    assert len(colorbars) == 1  # one colour bar for the figure


def test_histograms_label_both_axes():
    fig = plots.histograms({"ioi": {"clean": np.array([1.0, 2.0])}}, "t", {"ioi": "logit difference"})
    assert fig.axes[0].get_ylabel() == "prompts" and fig.axes[0].get_xlabel() == "logit difference"


EDGES = [("input", "a0.h1<q>", 2.0), ("a0.h1", "m0", -1.0), ("m0", "a1.h0<v>", 0.5), ("a1.h0", "logits", float("nan"))]


def test_diagram_nodes_on_the_layer_head_grid():
    assert diagram.grid_position("a3.h2", 4, 4) == (2.0, 3.0)
    assert diagram.grid_position("m1", 4, 4) == (4.5, 1.0)  # MLPs in their own column, on their layer
    assert diagram.grid_position("input", 4, 4)[1] < 0 < 4 == diagram.grid_position("logits", 4, 4)[1]
    fig = diagram.circuit_figure(EDGES, 2, 2, "t", "EAP score")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "MLP"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert "EAP score > 0" in legend and "EAP score < 0" in legend and "no score" in legend
    assert any(t.startswith("|EAP score| = 2") for t in legend) and "into k" in legend
    widths = sorted(p.get_linewidth() for p in ax.patches)
    assert widths[0] == diagram.MIN_WIDTH and widths[-1] == diagram.MAX_WIDTH


def test_diagram_dot():
    dot = diagram.circuit_dot(EDGES, 2, 2, "ioi: top 4", "EAP score")
    assert dot.startswith("digraph circuit {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == len(EDGES)
    assert '"input" -> "a0.h1" [color="#1f63b4", penwidth=4.50, style=solid, label="q"' in dot
    assert '"a0.h1" -> "m0" [color="#c8372d"' in dot and '"m0" -> "a1.h0"' in dot and "style=dotted" in dot
    assert '{ rank=same; "a0.h1"; "m0" [shape=box]; }' in dot


def test_grouped_bars_panels_have_their_own_units():
    table = pd.DataFrame({"kl": [0.1, 0.2], "js": [0.01, 0.02]}, index=["ioi", "sva"])
    fig = plots.grouped_bars({"divergences": (table, "nats"), "faithfulness": (table[["kl"]], "ratio")}, "t")
    assert [ax.get_ylabel() for ax in fig.axes] == ["nats", "ratio"]
