"""view.html in headless Chromium (the distribution's chromium and chromium-driver, driven by Selenium): every page
type loads from file:// without console errors, draws the saved circuit's nodes and edges, follows its slider,
shows the CSVs' numbers on hover, and the attribution-graph page prunes exactly as lib.features.influence.prune.
Screenshots of each page type go to $VIEW_SCREENSHOTS (default: this session's temporary directory)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, completed_run, run_app

TOY = ["--model", "toy", "--quiet", "--n-bootstrap", "40"]
RUNS = {
    "05_eap.py": ["--tasks", "ioi", "--n-prompts", "8", "--n-random", "1", "--top-k", "1", "5"],
    "06_acdc.py": [
        *["--tasks", "ioi", "--n-prompts", "8", "--thresholds", "0.03", "0.3", "--n-random", "0"],
        *["--prune-with", "eap", "--prune-top", "40", "--no-plain"],  # the hybrid: ACDC over EAP's top 40
    ],
    "09_feature_circuits.py": ["--tasks", "ioi", "--n-prompts", "8", "--method", "attrib", "--n-random", "0"],
    "10_attribution_graphs.py": ["--tasks", "ioi", "--n-prompts", "8", "--n-graphs", "2", "--n-intervene", "2"],
    # a model against itself, end to end: every part, the shared dictionary too
    "11_compare_models.py": [
        *["--models", "toy", "toy", "--dictionaries", "toy", "toy", "--tasks", "ioi", "--n-prompts", "6"],
        *["--top-k", "20", "--ig-steps", "2", "--n-graphs", "2", "--n-permutations", "10", "--n-resamples", "2"],
        *["--shared-dictionary", "resid1", "--crosscoder-steps", "30", "--crosscoder-width", "32"],
        *["--crosscoder-prompts", "10"],
    ],
    "file": [
        "--tasks",
        str(ROOT / "tasks" / "examples" / "ioi_pairs.csv"),
        "--n-prompts",
        "4",
        "--top-k",
        "3",
        "--n-random",
        "0",
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small toy run of each script with a page, and a 05 run of a task from a file."""
    where = tmp_path_factory.mktemp("view-runs")
    out = {}
    for key, args in RUNS.items():
        script = "05_eap.py" if key == "file" else key
        common = TOY[2:] if key == "11_compare_models.py" else TOY  # 11 takes --models, not --model
        out[key] = completed_run(where / key.removesuffix(".py"), script, *args, *common)
    return out


@pytest.fixture(scope="module")
def browser():
    from lib.core.errors import UserError
    from lib.io.view_browser import headless_chromium

    try:
        driver = headless_chromium()
    except UserError as e:
        pytest.fail(f"browser tests: {e}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    where = Path(os.environ.get("VIEW_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def open_page(browser, run: Path, view: str | None = None):
    url = (run / "view.html").as_uri() + (f"#view={view}" if view else "")
    browser.get(url)
    assert browser.execute_script("return document.body.dataset.ready") == "1"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors


def drawn(browser) -> dict:
    return browser.execute_script(
        "return {nodes: viewer.state.drawn.nodes, edges: viewer.state.drawn.edges, "
        "svgNodes: document.querySelectorAll('#canvas svg .node').length, "
        "svgEdges: document.querySelectorAll('#canvas svg .edge').length}"
    )


def slide(browser, element_id: str, value) -> None:
    browser.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];s.dispatchEvent(new Event('input'));",
        element_id,
        value,
    )


def info_numbers(browser) -> dict:
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#info tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    return {k: v for k, v in rows}


def hover(browser, css: str) -> None:
    """A mouseover on the element, as the pointer entering it sends (a curved edge's box centre is off its stroke)."""
    browser.execute_script(
        "document.querySelector(arguments[0]).dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", css
    )


def test_pages_are_written_small_and_rebuilt_identically(runs, tmp_path):
    for key, run in runs.items():
        page = run / "view.html"
        assert page.is_file() and "view.html" in json.loads((run / "run.json").read_text())["files"], key
        assert page.stat().st_size < 2_000_000, (key, page.stat().st_size)
        text = page.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        copy = tmp_path / key.removesuffix(".py")
        shutil.copytree(run, copy)
        (copy / "view.html").unlink()
        r = run_cli_view(str(copy))
        assert r.returncode == 0, r.stderr
        assert (copy / "view.html").read_bytes() == page.read_bytes(), key


def run_cli_view(*args):
    from lib.io import view

    return run_app(view.app, *args)


def test_view_command_refuses_in_one_line(tmp_path, runs):
    cases = {
        str(tmp_path / "missing"): "is not a directory",
        str(tmp_path): "has no run.json: not a finished run directory",
    }
    dla = tmp_path / "dla"
    dla.mkdir()
    (dla / "run.json").write_text(json.dumps({"script": "01_dla"}))
    cases[str(dla)] = "is a run of 01_dla, which holds no circuit or graph"
    broken = tmp_path / "broken"
    shutil.copytree(runs["05_eap.py"], broken)
    (broken / "edge_scores.csv").unlink()
    cases[str(broken)] = "is missing edge_scores.csv: an incomplete run"
    for arg, message in cases.items():
        r = run_cli_view(arg)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            arg,
            r.stderr,
        )


def test_edge_circuit_page_draws_each_size_and_hovers_scores(runs, browser, shots):
    run = runs["05_eap.py"]
    open_page(browser, run)
    one = json.loads((run / "circuit_ioi_top1.json").read_text())
    d = drawn(browser)  # the default: the smallest saved circuit, here a circuit of one edge
    assert d["edges"] == [e["edge"] for e in one["edges"]] and d["svgEdges"] == 1
    assert sorted(d["nodes"]) == sorted(one["nodes"]) and d["svgNodes"] == len(one["nodes"])
    steps = browser.execute_script("return viewer.state.view.steps.map(s => s.size)")
    five = json.loads((run / "circuit_ioi_top5.json").read_text())
    slide(browser, "step", steps.index(5))
    d = drawn(browser)
    assert sorted(d["edges"]) == sorted(e["edge"] for e in five["edges"]) and d["svgEdges"] == 5
    assert sorted(d["nodes"]) == sorted(five["nodes"])
    curve = pd.read_csv(run / "faithfulness_curve.csv")
    k = int(curve.edges_kept.iloc[len(curve) // 2])
    slide(browser, "step", steps.index(k))
    assert (
        len(drawn(browser)["edges"])
        == browser.execute_script("return document.querySelectorAll('#canvas svg .edge').length")
        == k
    )
    shown = browser.execute_script("return document.getElementById('numbers').textContent")
    f = float(curve[curve.edges_kept == k].faithfulness.iloc[0])
    assert f"{float(f'{f:.6g}'):g}"[:6] in shown
    scores = pd.read_csv(run / "edge_scores.csv").set_index("edge")
    hover(browser, "#canvas svg path.edge[data-i='0']")
    info = info_numbers(browser)
    edge = info["edge"]
    assert np.isclose(float(info[next(x for x in info if x.startswith("eap-ig score"))]), scores.score[edge], rtol=1e-5)
    assert int(info["rank by |score|"]) == scores.abs_rank[edge] == 1
    browser.save_screenshot(str(shots / "view_edges.png"))


def test_model_comparison_of_a_model_with_itself_and_its_page(runs, browser, shots):
    """11 on toy against toy: every distance 0, every feature matched at correlation 1, the maps the identity
    (R^2 1), patching keeps everything, the verdict injective; the page steps through both circuits."""
    run = runs["11_compare_models.py"]
    read = lambda name: pd.read_csv(run / name)  # noqa: E731
    assert read("verdict.csv").verdict.tolist() == ["injective"]
    base = read("baselines.csv").set_index(["level", "comparison"])
    assert base.loc[("heads", "A vs B"), "score_spearman"] == pytest.approx(1.0)
    assert base.loc[("heads", "A vs B"), "edge_jaccard"] == 1.0
    assert base.loc[("graphs", "A vs B, same prompt"), "edit_distance_normalized"] == 0.0
    assert (read("tests.csv").p_value == 1.0).all()
    graphs = read("graphs.csv")
    assert len(graphs) == 2 and (graphs.edit_distance == 0).all() and (graphs.spectral_distance == 0).all()
    features = read("features.csv")
    assert (features.share_matched_at_min_correlation == 1.0).all()
    assert np.allclose(features.matched_correlation_mean, 1.0) and np.allclose(features.effect_cosine, 1.0)
    assert (read("convert.csv").r2_held_out > 1 - 1e-6).all()
    patching = read("patching.csv")
    assert np.allclose(patching.preserved, 1.0, atol=1e-4) and (patching.kl < 1e-6).all()
    assert (read("kl.csv").kl_a_b < 1e-9).all()
    crosscoder = read("crosscoder.csv")
    assert len(crosscoder) == 32 and crosscoder.relative_norm.between(0, 1).all()
    for plot in ("layers_ioi.png", "convert.png", "patching.png", "graph_clusters_ioi.png", "crosscoder.png"):
        assert (run / plot).stat().st_size > 10_000, plot
    open_page(browser, run)
    masks = json.loads((run / "circuits.json").read_text())["ioi"]
    steps = browser.execute_script("return viewer.state.view.steps.map(s => s.label)")
    assert len(steps) == 3 and steps[2].startswith("kept by both")
    for step, edges in enumerate([*masks.values(), list(masks.values())[0]]):
        slide(browser, "step", step)
        assert sorted(drawn(browser)["edges"]) == sorted(edges)
    browser.save_screenshot(str(shots / "view_compare_models.png"))


def test_acdc_page_steps_through_thresholds(runs, browser, shots):
    run = runs["06_acdc.py"]
    open_page(browser, run)
    sweep = pd.read_csv(run / "acdc_sweep.csv")
    sweep = sweep[sweep.method == "acdc+eap-top40"].sort_values("tau")  # (the eap-top40 row is the candidates)
    assert len(sweep) == 2 and browser.execute_script("return viewer.DATA.views.length") == 1
    for step, row in enumerate(sweep.itertuples()):
        slide(browser, "step", step)
        d = drawn(browser)
        circuit = json.loads((run / f"circuit_ioi_tau{row.tau:g}_pruned.json").read_text())
        assert sorted(d["edges"]) == sorted(e["edge"] for e in circuit["edges"]) and d["svgEdges"] == row.edges_kept
        assert sorted(d["nodes"]) == sorted(circuit["nodes"])
    browser.save_screenshot(str(shots / "view_acdc.png"))


def test_feature_circuit_page_follows_the_sweep(runs, browser, shots):
    run = runs["09_feature_circuits.py"]
    open_page(browser, run)
    circuit = json.loads((run / "circuit_ioi.json").read_text())
    d = drawn(browser)
    assert sorted(d["nodes"]) == sorted(n["node"] for n in circuit["nodes"]) and d["svgNodes"] == len(circuit["nodes"])
    assert sorted(d["edges"]) == sorted(e["edge"] for e in circuit["edges"]) and d["svgEdges"] == len(circuit["edges"])
    steps = browser.execute_script("return viewer.state.view.steps")
    curve = pd.read_csv(run / "faithfulness_curve.csv")
    curve = curve[(curve.variant == "features") & (curve.threshold > 0)]
    for i in (0, len(steps) // 2, len(steps) - 1):
        slide(browser, "step", i)
        row = curve[np.isclose(curve.threshold, steps[i]["threshold"])]
        if len(row):  # the curve's own sizes (the saved circuit's threshold may lie between them)
            assert len(drawn(browser)["nodes"]) == int(row.nodes_kept.iloc[0])
    slide(browser, "step", next(i for i, s in enumerate(steps) if s["threshold"] == 0.1))
    effects = pd.read_csv(run / "node_effects.csv").set_index("node")
    hover(browser, "#canvas svg .node[data-i]")
    info = info_numbers(browser)
    assert np.isclose(float(info["effect"]), effects.effect[info["node"]], rtol=1e-5)
    browser.save_screenshot(str(shots / "view_features.png"))


def python_prune(run: Path, slug: str, node_threshold: float, edge_threshold: float):
    from lib.features.influence import logit_weights, prune

    z = np.load(run / "graphs" / f"{slug}.npz")
    n = len(z["influence"])
    weights = logit_weights(n, torch.from_numpy(z["logit_probs"]))
    p = prune(
        torch.from_numpy(z["adjacency"]),
        weights,
        len(z["selected"]),
        len(z["tokens"]),
        len(z["logit_probs"]),
        node_threshold,
        edge_threshold,
    )
    ids = [str(x) for x in z["node_ids"]]
    targets, sources = p.edge_mask.nonzero(as_tuple=True)
    nodes = {ids[i] for i in p.node_mask.nonzero().flatten().tolist()}
    features = int(p.node_mask[: len(z["selected"])].sum())
    return nodes, {f"{ids[s]}->{ids[t]}" for t, s in zip(targets.tolist(), sources.tolist())}, features


def page_prune(browser, slug: str, node_threshold: float, edge_threshold: float):
    return browser.execute_script(
        "const v = viewer.DATA.views.find(v => v.id === arguments[0]);"
        "const p = viewer.prune(v, arguments[1], arguments[2]);"
        "return {nodes: v.nodes.id.filter((_, i) => p.node[i]),"
        " edges: v.edges.t.map((t, k) => p.edge[k] ? v.nodes.id[v.edges.s[k]] + '->' + v.nodes.id[t] : null)"
        ".filter(x => x)};",
        slug,
        node_threshold,
        edge_threshold,
    )


def test_graph_page_prunes_as_prune_graph(runs, browser, shots):
    run = runs["10_attribution_graphs.py"]
    slugs = list(pd.read_csv(run / "scores.csv").graph)
    for slug in slugs:
        open_page(browser, run, slug)
        front = json.loads((run / "graphs" / f"{slug}.json").read_text())
        d = drawn(browser)  # at the run's thresholds: the nodes and links of the run's graph JSON
        assert sorted(d["nodes"]) == sorted(n["node_id"] for n in front["nodes"])
        assert sorted(d["edges"]) == sorted(f"{x['source']}->{x['target']}" for x in front["links"])
        assert d["svgNodes"] == len(front["nodes"]) and d["svgEdges"] == len(front["links"])
        for node_t, edge_t in ((0.5, 0.9), (0.7, 0.95), (0.9, 0.99)):
            nodes, edges, _ = python_prune(run, slug, node_t, edge_t)
            page = page_prune(browser, slug, node_t, edge_t)
            assert set(page["nodes"]) == nodes and set(page["edges"]) == edges, (slug, node_t, edge_t)
        slide(browser, "node-threshold", 0.5)
        slide(browser, "edge-threshold", 0.9)
        nodes, edges, _ = python_prune(run, slug, 0.5, 0.9)
        d = drawn(browser)
        assert set(d["edges"]) == edges and set(d["nodes"]) <= nodes
    # hover a feature: its activation and influence as the run's npz holds them; click pins it
    open_page(browser, run, slugs[0])
    z = np.load(run / "graphs" / f"{slugs[0]}.npz")
    ids = [str(x) for x in z["node_ids"]]
    hover(browser, "#canvas svg circle.node")
    info = info_numbers(browser)
    i = ids.index(info["node"])
    assert np.isclose(float(info["activation"]), z["activations"][int(z["selected"][i])], rtol=1e-5)
    assert np.isclose(float(info["influence"]), z["influence"][i], rtol=1e-5)
    # an intervened feature: its rows of interventions.csv (predicted, frozen, real, circuit-tracer's modes)
    inter = pd.read_csv(run / "interventions.csv")
    inter = inter[(inter.graph == slugs[0]) & (inter.n_features == 1)]
    ceiling = browser.execute_script("return viewer.state.view.slider.node[1]")
    slide(browser, "node-threshold", ceiling)
    slide(browser, "edge-threshold", 0.99)
    shown = [f for f in inter.features if f in drawn(browser)["nodes"]]
    assert shown, "no intervened feature is drawn at the page's loosest thresholds"
    index = browser.execute_script("return viewer.state.view.nodes.id.indexOf(arguments[0])", shown[0])
    hover(browser, f"#canvas svg .node[data-i='{index}']")
    info = info_numbers(browser)
    for row in inter[inter.features == shown[0]].itertuples():
        for col in ("predicted_graph", "frozen", "real", "ct_default"):
            assert np.isclose(float(info[f"{row.intervention}: {col}"]), getattr(row, col), rtol=1e-5, atol=1e-9)
    browser.find_element("css selector", "#canvas svg circle.node").click()
    assert "Strongest inputs" in browser.find_element("id", "info").text
    browser.save_screenshot(str(shots / "view_graph.png"))


def test_graph_page_with_no_feature_left_renders(runs, browser):
    """A threshold pair at which pruning leaves no feature (found by the Python side) draws tokens, errors and
    logits, and says so."""
    run = runs["10_attribution_graphs.py"]
    slug = pd.read_csv(run / "scores.csv").graph.iloc[0]
    pairs = [(n, e) for n in (0.05, 0.1, 0.2, 0.3, 0.5) for e in (0.3, 0.5, 0.7)]
    empty = [(n, e) for n, e in pairs if python_prune(run, slug, n, e)[2] == 0]
    assert empty, "no threshold pair leaves 0 features on this graph"
    node_t, edge_t = empty[0]
    open_page(browser, run, slug)
    slide(browser, "node-threshold", node_t)
    slide(browser, "edge-threshold", edge_t)
    assert browser.execute_script("return document.querySelectorAll('#canvas svg circle.node').length") == 0
    assert "No feature survives pruning" in browser.find_element("id", "numbers").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_page_of_a_task_from_a_file(runs, browser):
    run = runs["file"]
    open_page(browser, run)
    circuit = json.loads((run / "circuit_ioi_pairs_top3.json").read_text())
    assert sorted(drawn(browser)["edges"]) == sorted(e["edge"] for e in circuit["edges"])
    assert "ioi_pairs" in browser.find_element("id", "index").text


def test_canonical_edges_are_marked_true_and_false_positives(browser, tmp_path):
    """On GPT-2 small's graph the IOI circuit's edges are solid (true positives) and the others dashed: a page
    of EAP-like scores built by view_data over every edge, its top 200 drawn."""
    from lib.core.graph import Graph
    from lib.io.view_data import EAP_LEGEND, _canonical, _edge_view
    from lib.io.view_page import page
    from lib.methods.canonical import canonical_circuit

    record = {"model": {"name": "gpt2", "n_layers": 12, "n_heads": 12}}
    graph = Graph(12, 12)
    edges = graph.edge_names
    reference = canonical_circuit("ioi", graph, "gpt2")
    assert reference is not None
    marks = _canonical(record, "ioi", edges)
    assert marks is not None and sum(marks) == int(reference.sum())
    scores = list(np.random.default_rng(0).normal(size=len(edges)))
    steps = [{"label": "top 200", "size": 200, "numbers": {}}]
    view = _edge_view(
        record,
        "ioi",
        "ioi",
        "ioi",
        edges,
        scores,
        steps,
        0,
        score_label="score",
        helps_sign=-1,
        slider_label="size",
        legend=dict(EAP_LEGEND),
    )
    (tmp_path / "view.html").write_text(page("canonical", "", [view]))
    open_page(browser, tmp_path)
    tp = browser.execute_script("return document.querySelectorAll('#canvas svg .edge.tp').length")
    fp = browser.execute_script("return document.querySelectorAll('#canvas svg .edge.fp').length")
    assert tp == sum(marks[:200]) and fp == 200 - tp and tp > 0
    text = browser.find_element("id", "numbers").text
    assert f"canonical edges missed {sum(marks) - tp}" in text.replace("\n", " ")


def test_dense_graphs_are_painted_on_a_canvas(runs, browser):
    """Above LIMITS.svgEdges kept edges the page paints them on a canvas (above paintMax, the strongest paintMax);
    lowered limits put a toy graph there: the counts stay those of every kept edge."""
    run = runs["10_attribution_graphs.py"]
    slug = pd.read_csv(run / "scores.csv").graph.iloc[0]
    open_page(browser, run, slug)
    kept = len(drawn(browser)["edges"])
    browser.execute_script("viewer.LIMITS.svgEdges = 5; viewer.LIMITS.paintMax = 10; viewer.draw()")
    assert browser.execute_script("return document.querySelectorAll('#canvas canvas').length") == 1
    d = drawn(browser)
    assert d["svgEdges"] == 0 and len(d["edges"]) == kept > 10
    text = browser.find_element("id", "numbers").text
    assert f"{kept} edges kept: the strongest 10 painted" in text and f"edges drawn {kept}" in text.replace("\n", " ")
    browser.find_element("css selector", "#canvas svg circle.node").click()  # pinning repaints, dimming the rest
    assert "Strongest inputs" in browser.find_element("id", "info").text
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
