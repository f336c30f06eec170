"""Plots read as a researcher reads them: nothing hidden, nothing overlapping, numbers written as they are."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from lib.io import diagram, plots
from lib.io.diagram import plt


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_null_distribution_of_distances_is_visible_and_positive():
    rng = np.random.default_rng(0)
    null = np.r_[np.zeros(3), 10 ** rng.uniform(-9, -7, 40)]  # a small circuit: tiny distances, some exactly 0
    fig = plots.null_distributions(
        {
            "sufficiency": {
                "null": null,
                "p_value": 0.99961,
                "null_label": "random circuits",
                "positive": True,
                "observed": [(2e-8, "circuit", "C3")],
                "xlabel": "distance",
            }
        },
        "t",
    )
    renderer = drawn(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > 0  # a distance has no negative axis
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert sum(p.get_height() for p in bars) == len(null)  # every value drawn, zeros at the left edge
    assert all(p.get_window_extent(renderer).width >= 1 for p in bars)  # visible
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text() and t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert "p > 0.999" in ax.get_title() and "p = 1" not in ax.get_title()
    legend = ax.get_legend()
    assert legend is not None and "3 of 43 are 0" in legend.get_texts()[0].get_text()


def test_null_distribution_on_a_short_span_labels_do_not_collide():
    """Distances within one decade (a circuit's random circuits all alike): minor log labels used to collide."""
    fig = plots.null_distributions(
        {
            "sufficiency": {
                "null": np.linspace(150, 320, 30),
                "p_value": 0.04,
                "positive": True,
                "observed": [(18.0, "circuit", "C3")],
                "xlabel": "distance",
            }
        },
        "t",
    )
    renderer = drawn(fig)
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text() and t.get_visible()]
    lo, hi = ax.get_xlim()
    labels = [t for t in labels if lo <= t.get_position()[0] <= hi]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(boxes) >= 2 and not any(overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize(
    "p, text", [(1.0, "p = 1"), (0.99961, "p > 0.999"), (0.04, "p = 0.04"), (2e-5, "p = 2.00e-05")]
)
def test_p_values_as_text(p, text):
    assert plots.p_text(p) == text


def test_fit_line_has_no_plus_minus():
    assert plots.line_text(7.04, -0.025) == "7.04 x - 0.025"
    assert plots.line_text(0.5, 0.25) == "0.5 x + 0.25"


def test_grouped_bars_keep_legends_off_the_bars_and_accept_intervals_without_their_estimate():
    table = pd.DataFrame({"kl": [3.0, 0.5], "reverse_kl": [2.0, 0.4]}, index=["ioi", "sva"])
    low, high = table * 0.8, table * 1.2
    low.iloc[0, 0] = 3.1  # an interval that excludes its estimate (a skewed bootstrap): no negative bar
    fig = plots.grouped_bars({"KL": (table, "nats", (low, high))}, "t")
    renderer = drawn(fig)
    ax = fig.axes[0]
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = legend_box.get_window_extent(renderer)
    assert not overlaps(legend, ax.get_window_extent(renderer))  # below the axes: covers no error bar


def test_output_variants_puts_unbounded_and_bounded_divergences_apart(tmp_path):
    from conftest import run_cli

    from lib.io import cli

    r = run_cli(
        "21_output_variants.py",
        "--tasks",
        "ioi",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "21_output_variants").iterdir()
    fig = cli.load_script("21_output_variants.py").metrics_figure(
        pd.read_csv(run / "summary.csv"), ["ioi", "sva"], "resample"
    )
    renderer = drawn(fig)
    shown = [{t.get_text() for t in ax.get_legend().get_texts()} for ax in fig.axes]
    assert shown[:2] == [{"kl", "reverse_kl"}, {"js", "tv"}]  # KL beside JS/TV would flatten them to nothing
    for ax in fig.axes:
        assert not overlaps(ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))


def test_one_point_curves_are_marked_and_centred():
    fig = plots.curves(
        {"ioi": (np.array([37]), np.array([0.8])), "sva": (np.array([37]), np.array([0.6]))},
        "t",
        "edges",
        "f",
        logx=True,
    )
    drawn(fig)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 37 / 2 and hi > 37 * 2  # the point sits inside a visible axis, not on its edge
    assert all(line.get_marker() == "o" and line.get_markersize() >= 6 for line in ax.get_lines()[:2])
    assert {"37, 0.8", "37, 0.6"} <= {t.get_text() for t in ax.texts}


def test_a_log_axis_with_no_positive_x_stays_linear_and_says_so():
    """Circuits of 0 edges only (ACDC at a high tau): no crash, a linear axis, no "(log scale)" in its label."""
    fig = plots.curves({"ioi": (np.array([0]), np.array([0.0]))}, "t", "edges kept (log scale)", "f", logx=True)
    drawn(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "edges kept"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0"]


def test_diagram_names_every_node_and_keeps_edges_off_the_input_label():
    edges = [
        ("input", "a0.h1<q>", 1.0),
        ("input", "m0", -0.5),
        ("input", "a2.h3<v>", 0.3),
        ("a0.h1", "a2.h0<k>", 0.4),
        ("a2.h0", "logits", 2.0),
        ("m0", "logits", 0.2),
        ("input", "logits", 0.1),
    ]
    fig = diagram.circuit_figure(edges, 3, 4, "t")
    renderer = drawn(fig)
    ax = fig.axes[0]
    names = {t.get_text(): t for t in ax.texts}
    assert {"input", "logits", "a0.h1", "m0", "a2.h3", "a2.h0"} <= set(names)
    box = names["input"].get_window_extent(renderer)
    for patch in ax.patches:
        path = patch.get_path().transformed(patch.get_transform())
        points = np.asarray(path.interpolated(50).vertices)
        inside = (points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (points[:, 1] < box.y1)
        assert not inside.any(), "an edge crosses the input label"


def _feature_circuit(n_nodes: int, n_edges: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sites = ["embed"] + [f"{k}{l}" for l in range(4) for k in ("attn", "mlp", "resid")]
    nodes = []
    for i in range(n_nodes):
        site, error = sites[i % len(sites)], i % 37 == 0
        name = f"{site}/err@end-{i}" if error else f"{site}/f{i}@end"
        nodes.append({"site": site, "node": name, "feature": -1 if error else i, "effect": float(rng.normal())})
    pairs = rng.integers(0, n_nodes, (n_edges, 2))
    edges = [
        {"upstream": nodes[a]["node"], "downstream": nodes[b]["node"], "effect": float(rng.normal())} for a, b in pairs
    ]
    return nodes, edges


def test_feature_circuit_picture_draws_the_strongest_and_counts_the_rest():
    """09's toy IOI circuit had 310 nodes and 2,141 edges: the picture draws the 30 strongest nodes and the 40
    strongest edges among them, says so, explains colour in the task's terms and fits a page."""
    nodes, edges = _feature_circuit(310, 2141)
    fig = diagram.feature_figure(nodes, "ioi: feature circuit", edges=edges)
    ax = fig.axes[0]
    strongest = sorted(nodes, key=lambda n: -abs(n["effect"]))[:30]
    drawn = {t.get_text().split("\n")[0] for t in ax.texts if t.get_text()}
    assert drawn == {n["node"].split("/", 1)[1] for n in strongest}
    names = {n["node"] for n in strongest}
    between = sorted(
        (e for e in edges if e["upstream"] in names and e["downstream"] in names), key=lambda e: -abs(e["effect"])
    )
    arrows = [t for t in ax.texts if isinstance(t, Annotation) and t.arrow_patch is not None]
    assert len(arrows) == min(40, len(between)) > 0
    width, height = fig.get_size_inches()
    assert width <= 11 and height <= 8.5
    assert min(float(t.get_fontsize()) for t in ax.texts) >= 7
    caption = fig.get_supxlabel()
    assert f"30 strongest of 310 nodes and the {len(arrows)} strongest of 2,141 edges" in caption
    legend = ax.get_legend()
    assert legend is not None
    assert any("supports the task" in t.get_text() for t in legend.get_texts())
    # rows only for the sites that have a drawn node, bottom to top in forward order
    sites = [t.get_text() for t in ax.get_yticklabels()]
    assert sites == sorted({n["site"] for n in strongest}, key=diagram.site_row)
    plt.close(fig)


def test_feature_circuit_picture_of_a_small_circuit_draws_everything():
    nodes, edges = _feature_circuit(5, 3)
    fig = diagram.feature_figure(nodes, "tiny", edges=edges)
    assert "The 5 strongest of 5 nodes" in fig.get_supxlabel()
    assert len(fig.axes[0].collections) == 5
    plt.close(fig)


def _graph_model(prompt_tokens: list[str], feature_layers: list[int], n_layers: int) -> dict:
    last = len(prompt_tokens) - 1
    nodes = [
        {
            "node_id": f"E_{i}_{i}",
            "layer": "E",
            "ctx_idx": i,
            "feature_type": "embedding",
            "clerp": "",
            "activation": None,
        }
        for i in range(len(prompt_tokens))
    ]
    nodes += [
        {
            "node_id": f"{l}_{k}_{last}",
            "layer": str(l),
            "ctx_idx": last,
            "feature_type": "cross layer transcoder",
            "clerp": "",
            "activation": 1.0,
        }
        for k, l in enumerate(feature_layers)
    ]
    nodes.append(
        {
            "node_id": f"{n_layers + 1}_7_{last}",
            "layer": str(n_layers + 1),
            "ctx_idx": last,
            "feature_type": "logit",
            "clerp": 'Output " Mary" (p=0.9)',
            "token_prob": 0.9,
        }
    )
    links = [{"source": f"E_{last}_{last}", "target": nodes[-1]["node_id"], "weight": 0.5}]
    links += [
        {"source": n["node_id"], "target": nodes[-1]["node_id"], "weight": -0.2}
        for n in nodes
        if n["feature_type"] == "cross layer transcoder"
    ]
    prompt = "".join(prompt_tokens)
    return {"nodes": nodes, "links": links, "metadata": {"prompt_tokens": prompt_tokens, "prompt": prompt}}


def test_graph_picture_leaves_out_empty_layers_and_keeps_the_whole_prompt():
    """10's PNG of a 2-feature graph (toy ioi_6) filled its page with empty layer rows, rotated small token
    labels and cut the prompt in the title."""
    from lib.io import graph_plot

    tokens = [
        "<|endoftext|>",
        "When",
        " Mary",
        " and",
        " John",
        " went",
        " to",
        " the",
        " store",
        ",",
        " John",
        " gave",
    ]
    model = _graph_model(tokens, [2, 2], n_layers=6)
    fig = graph_plot.figure(model, 6, {}, "ioi_6: attribution graph")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tokens", "layer 2", "logits"]
    assert "5 layers without nodes not drawn" in fig.get_supxlabel()
    title = " ".join(ax.get_title().split())
    assert " ".join(repr("".join(tokens)).split()) in title  # the whole prompt, wrapped but not cut
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == [repr(t)[1:-1] for t in tokens]
    assert all(t.get_rotation() == 0 and float(t.get_fontsize()) >= 8 for t in labels)
    width, height = fig.get_size_inches()
    assert width <= 16 and height <= 6
    plt.close(fig)
