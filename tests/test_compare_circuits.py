"""24_compare_circuits: Jaccard identities, bootstrap rediscovery by per-prompt scores against rerunning the
method, stability of a deterministic method on identical prompt sets, where the node set stops changing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.core.graph import Graph, graph_of
from lib.methods import comparison
from lib.methods.eap import edge_scores, edge_scores_per_prompt
from lib.methods.faithfulness import roc_point, top_k_mask
from tasks import TASKS

G = Graph(2, 2)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.booleans(), min_size=G.n_edges, max_size=G.n_edges),
    st.lists(st.booleans(), min_size=G.n_edges, max_size=G.n_edges),
)
def test_jaccard_identities(a_bits, b_bits):
    def mask(bits):
        m = torch.zeros_like(G.edge_exists)
        m[G.edge_exists] = torch.tensor(bits)
        return m

    a, b = mask(a_bits), mask(b_bits)
    assert comparison.jaccard(a, a) == 1.0 and comparison.node_jaccard(G, a, a) == 1.0
    assert comparison.jaccard(a, b) == comparison.jaccard(b, a)
    assert comparison.jaccard(a & ~b, b) == (1.0 if not (a & ~b).any() and not b.any() else 0.0)
    both, union = int((a & b).sum()), int((a | b).sum())
    assert comparison.jaccard(a, b) == (both / union if union else 1.0)


def test_disjoint_node_sets_have_node_jaccard_zero():
    a, b = G.mask_of(["input->a0.h0<q>"]), G.mask_of(["a1.h1->logits"])
    assert comparison.jaccard(a, b) == 0.0 and comparison.node_jaccard(G, a, b) == 0.0
    assert comparison.node_jaccard(G, a, G.mask_of(["input->m1"])) == pytest.approx(1 / 3)  # {input} of 3 nodes


def test_bootstrap_scores_equal_rerunning_the_method_on_the_resampled_prompts(tiny):
    g = graph_of(tiny)
    data = TASKS["ioi"].build(tiny.tokenizer, 6, 0)
    mean, items = edge_scores_per_prompt(tiny, g, data, 6, "eap")
    idx = comparison.bootstrap_indices(len(data), 2, seed=1)
    shortcut = comparison.resampled_scores(items, idx)
    for r in range(2):
        rerun = edge_scores(tiny, g, data.subset(torch.as_tensor(idx[r])), 6, "eap")
        torch.testing.assert_close(shortcut[r], rerun, atol=1e-5 * rerun.abs().max().item(), rtol=1e-4)
    torch.testing.assert_close(items.double().mean(0), mean, atol=1e-6, rtol=1e-5)


def test_stability_of_a_deterministic_method_on_identical_prompt_sets_is_one(tiny):
    g = graph_of(tiny)
    data = TASKS["ioi"].build(tiny.tokenizer, 6, 0)
    _, items = edge_scores_per_prompt(tiny, g, data, 6, "eap")
    identical = np.tile(np.arange(len(data)), (5, 1))  # every "resample" is the prompt set itself
    share = comparison.stability(g, items, 10, identical)
    kept = top_k_mask(g, items.double().mean(0), 10)
    assert (share[kept] == 1).all() and (share[~kept] == 0).all() and int(kept.sum()) == 10
    resampled = comparison.stability(g, items, 10, comparison.bootstrap_indices(len(data), 20, 0))
    assert 0 < float(resampled[resampled > 0].min()) < 1  # real resamples disagree somewhere


def test_node_set_stable_from():
    keeps = [
        G.mask_of(e) for e in (["input->m0"], ["input->m0", "m0->logits"], ["input->m0", "m0->logits", "input->logits"])
    ]
    assert comparison.node_set_stable_from(G, [1, 2, 3], keeps) == 2
    assert comparison.node_set_stable_from(G, [1, 2, 3], keeps[:1] * 3) == 1


def test_script_discovers_and_compares(tmp_path):
    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        "24_compare_circuits.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "8",
        "--top-k",
        "10",
        "--n-resamples",
        "5",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "24_compare_circuits").iterdir())
    circuits = pd.read_csv(run / "circuits.csv")
    # its page (tests/test_view.py drives the same page type in a browser): one step per circuit, its edges
    page = (run / "view.html").read_text()
    data = json.loads(page.split('id="view-data">')[1].split("</script>")[0])
    (view,) = data["views"]
    masks = json.loads((run / "circuits_ioi.json").read_text())
    edges = [f"{a}->{b}" for a, b in zip(view["edges"]["src"], view["edges"]["rcv"])]
    assert {s["label"].split(" (")[0]: sorted(edges[i] for i in s["members"]) for s in view["steps"]} == {
        k: sorted(v) for k, v in masks.items()
    }
    assert list(circuits.circuit) == ["eap-top10", "eap-ig-top10", "acdc@0.01"]
    assert len(pd.read_csv(run / "pairwise.csv")) == 3
    assert {
        "jaccard_ioi.png",
        "sensitivity.png",
        "stability_hist.png",
        "stability.csv",
        "sensitivity.csv",
        "headline.csv",
    } <= {p.name for p in run.iterdir()}
    stability = pd.read_csv(run / "stability_summary.csv")
    assert (stability.edges_in_every_resample <= 10).all()


def test_one_circuit_file_is_not_a_comparison(tmp_path):
    from conftest import run_cli

    f = tmp_path / "c.json"
    f.write_text('{"edges": ["input->logits"]}')
    r = run_cli("24_compare_circuits.py", "--circuits", str(f), "--model", "toy", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "at least two files" in r.stderr and not (tmp_path / "out").exists()


def test_roc_point_by_hand():
    g = Graph(1, 1)  # 8 edges
    reference = g.mask_of(["input->logits", "a0.h0->logits"])
    keep = g.mask_of(["input->logits", "input->m0", "m0->logits"])
    assert g.n_edges == 8
    assert roc_point(g, keep, reference) == pytest.approx({"tpr": 0.5, "fpr": 2 / 6, "reference_edges": 2})
    assert comparison.overlap(g, keep, reference)["reference_recall"] == 0.5
