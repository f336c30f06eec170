"""08: exact single-edge effects against one-edge runs of the edge engine, the interpolation's endpoints, the
agreement statistics against numpy/scipy, node attribution as the sum of the node's edge scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.core.forward import answer_logits
from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.patching import evaluate_mask
from lib.methods import agreement
from tasks import TASKS


@pytest.fixture(scope="module")
def setup(tiny):
    data = TASKS["ioi"].build(tiny.tokenizer, 6, 0)
    clean = data_metric(answer_logits(tiny, data.clean, data.answer_pos, 6), data).numpy()
    return tiny, graph_of(tiny), data, clean


def test_exact_effects_equal_single_edge_runs(setup):
    model, g, data, clean = setup
    edges = [tuple(e) for e in g.edge_exists.nonzero().tolist()[::7]]
    fast = agreement.exact_effects(model, g, data, edges, clean, batch_size=4, rows_per_pass=16)
    for i, (s, r) in enumerate(edges):
        keep = g.edge_exists.clone()
        keep[s, r] = False
        one = data_metric(evaluate_mask(model, g, data, keep, batch_size=4), data).numpy() - clean
        np.testing.assert_allclose(fast[i], one, atol=1e-4)
    assert np.abs(fast).max() > 1e-2


def test_interpolation_endpoints(setup):
    """lambda = 0 is the clean model, 1 the single-edge ablation, and 0.5 the edge engine with that edge's
    weight 0.5 (an independent implementation of the same intervention)."""
    from lib.core.patching import ablation_values, masked_answer_logits

    model, g, data, clean = setup
    edges = [tuple(e) for e in g.edge_exists.nonzero().tolist()[:3]]
    line = agreement.interpolation(model, g, data, edges, [0.0, 0.5, 1.0], batch_size=4)
    exact = agreement.exact_effects(model, g, data, edges, clean, batch_size=4).mean(1)
    np.testing.assert_allclose(line[:, 0], clean.mean(), atol=1e-5)
    np.testing.assert_allclose(line[:, 2], clean.mean() + exact, atol=1e-5)
    values = ablation_values(model, g, data, "resample")
    for i, (s, r) in enumerate(edges):
        half = torch.zeros(g.n_sources, g.n_receivers)
        half[s, r] = 0.5
        engine = data_metric(masked_answer_logits(model, g, data, values, half), data).mean().item()
        assert line[i, 1] == pytest.approx(engine, abs=1e-5)


def test_agreement_statistics_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 2 * x + 0.5 + rng.normal(scale=0.3, size=200)
    a = agreement.agreement(x, y, ks=(10,))
    slope, intercept = np.polyfit(x, y, 1)
    r = np.corrcoef(x, y)[0, 1]
    assert a["slope"] == pytest.approx(slope) and a["intercept"] == pytest.approx(intercept)
    assert a["pearson"] == pytest.approx(r) and a["r2"] == pytest.approx(
        1 - np.sum((y - slope * x - intercept) ** 2) / np.sum((y - y.mean()) ** 2)
    )
    assert agreement.agreement(x, x, ks=(10,))["top10_jaccard"] == 1.0


def test_stratified_sample_spans_the_ranking():
    scores = np.arange(100, dtype=float)
    picked = agreement.stratified_sample(scores, 10, seed=0)
    ranks = 99 - picked  # rank of |score| (largest first)
    assert len(picked) == 10 and sorted(ranks // 10) == list(range(10))
    assert list(agreement.stratified_sample(scores, 200, 0)) == list(range(100))


def test_node_attribution_is_the_sum_of_its_edges(setup):
    """EAP's gradient with respect to a node's output is the sum over its receivers, so the node score is the
    sum of its edge scores: check against attribution patching of hook_result directly."""
    from lib.core.forward import logits_at
    from lib.core.patching import source_outputs
    from lib.methods.eap import edge_scores

    model, g, data, _ = setup
    scores = edge_scores(model, g, data, 6, "eap")
    delta = source_outputs(model, g, data.corrupt) - source_outputs(model, g, data.clean)
    probe = torch.zeros(len(data), data.clean.shape[1], g.n_heads, model.d_model, requires_grad=True)
    logits = logits_at(
        model, data.clean, data.answer_pos, [("blocks.0.attn.hook_result", lambda x, hook: x + probe)], grad=True
    )
    data_metric(logits, data).sum().backward()
    assert probe.grad is not None
    for h in range(g.n_heads):
        direct = float((delta[g.head_source(0, h)] * probe.grad[:, :, h]).sum()) / len(data)
        assert float(scores[g.head_source(0, h)].sum()) == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_script_writes_a_complete_run(tmp_path):
    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        "08_attribution_vs_patching.py",
        "--tasks",
        "ioi",
        "greater-than",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--sample",
        "40",
        "--curves",
        "2",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "08_attribution_vs_patching").iterdir())
    names = {p.name for p in run.iterdir()}
    assert {
        "edges.csv",
        "agreement.csv",
        "outliers.csv",
        "curves.csv",
        "nodes.csv",
        "scatter_ioi.png",
        "interpolation_greater-than.png",
        "nodes.png",
        "headline.csv",
        "run.json",
    } <= names
    edges = pd.read_csv(run / "edges.csv")
    assert len(edges) == 2 * 40 and set(pd.read_csv(run / "agreement.csv").level) == {"edge", "node"}
    assert json.loads((run / "run.json").read_text())["options"]["rows_per_pass"] == 32  # the CPU default, resolved
