"""MIB area metrics (CPR, CMD) against hand computations, pruning of dangling edges, random circuits, the
curve on the toy model, and circuits in the EAP-IG library's graph JSON."""

import json

import numpy as np
import pytest
import torch

from lib.core.errors import UserError
from lib.core.graph import Graph
from lib.io.circuit_json import Circuit
from lib.methods import area

G = Graph(2, 2)


def test_areas_by_hand():
    x = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    f = [0, 0, 0, 0, 0, 0, 0.5, 0.5, 1.0, 1.0]
    a = area.areas(x, f)
    # trapezoids on the linear axis: (0.1-0.05)*0.25 + (0.2-0.1)*0.5 + (0.5-0.2)*0.75 + (1-0.5)*1
    assert np.isclose(a["area"], 0.0125 + 0.05 + 0.225 + 0.5)
    assert np.isclose(a["area_from_1"], (1.0 - 0.001) - a["area"])  # f in [0, 1]: |1 - f| = 1 - f
    perfect = area.areas(x, np.ones(10))
    # MIB's grid starts at 0.1 %: a perfect circuit scores 1 - 0.001 on the linear axis, 1 on the log axis
    assert np.isclose(perfect["area"], 0.999) and perfect["area_from_1"] == 0 and np.isclose(perfect["log_area"], 1)
    lx = np.log10(x)
    assert np.isclose(a["log_area"], np.trapezoid(f, lx) / 3)


def test_prune_dangling_by_hand():
    keep = G.mask_of(["a1.h0->logits"])  # a1.h0 reads nothing kept: dangling
    assert not area.prune_dangling(G, keep).any()
    keep = G.mask_of(["input->a0.h1<q>", "a0.h1->logits", "a0.h0->m0"])  # a0.h0 has no input; m0 no output
    assert G.edges_of(area.prune_dangling(G, keep)) == ["input->a0.h1<q>", "a0.h1->logits"]
    keep = G.mask_of(["input->a0.h0<k>", "a0.h0->m0", "m0->logits"])
    assert torch.equal(area.prune_dangling(G, keep), keep)  # a connected chain stays whole
    assert torch.equal(area.prune_dangling(G, G.edge_exists), G.edge_exists)


def test_random_circuits_have_the_requested_size_and_structure():
    rng = np.random.default_rng(0)
    for n in (1, 5, 20, G.n_edges):
        key = torch.as_tensor(rng.random(G.edge_exists.shape))
        flat = torch.where(G.edge_exists, key, torch.tensor(-1.0, dtype=torch.float64)).flatten()
        drawn = (flat >= torch.sort(flat, descending=True).values[n - 1]) & G.edge_exists.flatten()
        assert int(drawn.sum()) == n  # the draw has exactly n edges...
        keep = area.random_circuit(G, n, np.random.default_rng(int(rng.integers(1 << 30))))
        assert int(keep.sum()) <= n and torch.equal(area.prune_dangling(G, keep), keep)  # ...pruned like a ranked one
    assert torch.equal(area.random_circuit(G, G.n_edges, rng), G.edge_exists)


def test_signed_ranking_keeps_the_most_negative_scores_first():
    scores = torch.zeros(G.n_sources, G.n_receivers, dtype=torch.float64)
    scores[G.edge_index("a0.h1->logits")] = -5.0  # ablating it lowers the metric most
    scores[G.edge_index("input->a0.h1<v>")] = -4.0
    scores[G.edge_index("m1->logits")] = 6.0  # ablating it raises the metric
    signed = area.top_n(G, area.ranking_key(-scores, "signed"), 2)  # EAP importance is -score
    assert G.edges_of(signed) == ["input->a0.h1<v>", "a0.h1->logits"]
    key = area.ranking_key(-scores, "abs")
    assert key[G.edge_index("m1->logits")] == key.max()  # first by |score|, but alone it dangles (m1 reads nothing)
    assert not area.top_n(G, key, 1).any()


def test_curve_on_toy_ends_at_the_full_model(toy):
    from lib.core.graph import graph_of
    from lib.methods.eap import edge_scores
    from lib.methods.faithfulness import Evaluator
    from tasks import TASKS

    g, data = graph_of(toy), TASKS["sva"].build(toy.tokenizer, 8, 0)
    scores = edge_scores(toy, g, data, 8, "eap")
    rows, areas = area.mib_curves(
        Evaluator(toy, g, data, "resample", 8), g, -scores, n_random=2, seed=0, n_bootstrap=200
    )
    last = [r for r in rows if r["fraction"] == 1.0]
    assert all(abs(r["faithfulness"] - 1) < 1e-6 and r["edges_kept"] == g.n_edges for r in last)
    assert all(r["faithfulness"] == 0 for r in rows if r["edges_requested"] == 0)  # empty circuit = 0 by definition
    cpr = next(a for a in areas if a["metric"] == "cpr")
    assert cpr["value_ci_low"] <= cpr["value"] <= cpr["value_ci_high"] and cpr["n_random"] == 2
    f = [r["faithfulness"] for r in rows if r["ranking"] == "signed"]
    assert np.isclose(cpr["value"], area.areas(area.MIB_FRACTIONS, f)["area"])


def test_eap_ig_json_round_trip_and_hand_written(tmp_path):
    from lib.io.circuit_json import eap_ig_json

    c = Circuit("toy", "ioi", "eap", {}, {"input->a0.h1<q>": -1.5, "a0.h1->logits": 2.0})
    scores = torch.zeros(G.n_sources, G.n_receivers, dtype=torch.float64)
    for e, s in c.edges.items():
        scores[G.edge_index(e)] = s
    scores[G.edge_index("m1->logits")] = 0.25
    obj = eap_ig_json(G, c.mask(G), -scores, d_model=8)  # written in the library's convention: -our score
    assert len(obj["edges"]) == G.n_edges and obj["edges"]["m1->logits"] == {"score": -0.25, "in_graph": False}
    assert obj["edges"]["input->a0.h1<q>"] == {"score": 1.5, "in_graph": True}
    assert obj["nodes"]["a0.h1"]["in_graph"] and not obj["nodes"]["m1"]["in_graph"]
    assert "higher = more important" in obj["cfg"]["score_convention"]
    (tmp_path / "g.json").write_text(json.dumps(obj))
    back = Circuit.load(tmp_path / "g.json", G)
    assert torch.equal(back.mask(G), c.mask(G)) and back.method == "eap-ig-json"
    assert back.edges == c.edges  # negated on import: our scores come back
    # written by hand, as the EAP-IG library writes it (only the fields it reads): higher = more important
    (tmp_path / "hand.json").write_text(
        json.dumps(
            {
                "cfg": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
                "nodes": {"input": {"in_graph": True}, "m0": {"in_graph": True}, "logits": {"in_graph": True}},
                "edges": {
                    "input->m0": {"score": 0.5, "in_graph": True},
                    "m0->logits": {"score": 0.1, "in_graph": True},
                    "input->logits": {"score": 0.0, "in_graph": False},
                },
            }
        )
    )
    hand = Circuit.load(tmp_path / "hand.json", G)
    assert hand.edges == {"input->m0": -0.5, "m0->logits": -0.1}  # our convention: the important edge most negative
    with pytest.raises(UserError, match="an EAP-IG graph of a 2-layer, 2-head model, not of this 3-layer"):
        Circuit.load(tmp_path / "hand.json", Graph(3, 2))


def test_per_prompt_edge_scores_average_to_the_scores(tiny):
    from lib.core.graph import graph_of
    from lib.methods.eap import edge_scores, edge_scores_per_prompt
    from tasks import TASKS

    g, data = graph_of(tiny), TASKS["ioi"].build(tiny.tokenizer, 6, 0)
    mean, items = edge_scores_per_prompt(tiny, g, data, 4, "eap-ig", ig_steps=2)
    assert items.shape == (6, g.n_sources, g.n_receivers)
    assert torch.allclose(items.double().mean(0), mean, atol=1e-5, rtol=1e-4)
    assert torch.equal(mean, edge_scores(tiny, g, data, 4, "eap-ig", ig_steps=2))  # the mean path is unchanged


def test_auc_interval_over_prompts():
    from lib.methods.faithfulness import auc_interval, auc_of_ranking, roc_curve

    rng = np.random.default_rng(0)
    reference = torch.zeros_like(G.edge_exists)
    for e in G.edge_names[::5]:
        reference[G.edge_index(e)] = True
    signal = torch.where(reference, 1.0, 0.2)
    items = (signal[None] + 0.8 * torch.as_tensor(rng.normal(size=(30, *G.edge_exists.shape)))).float()
    items[:, 3, :] = 0.5  # some tied scores
    items = items * G.edge_exists
    mean = items.double().mean(0)
    _, _, auc = roc_curve(G, mean, reference)
    exists = G.edge_exists
    assert np.isclose(auc_of_ranking(mean.abs()[exists].numpy(), reference[exists].numpy()), auc)
    low, high = auc_interval(G, items, reference, 300, seed=0)
    assert low <= auc + 1e-12 and auc <= high + 1e-12 and 0.5 < low  # (the AUC is computed two ways: float noise)


def mib_cpr(graph, exported: dict, evaluator) -> float:
    """MIB's CPR from an exported EAP-IG graph JSON, transcribed from its code: Graph.apply_topn(n, absolute=False)
    (torch.argsort of the scores, descending, non-edges at -inf, the first n in_graph), then prune (the EAP-IG
    library's, which lib.methods.area.prune_dangling equals), faithfulness (m(C) - m(empty)) / (m(full) -
    m(empty)) of batch means, and the trapezoid over the fractions (evaluate_area_under_curve, linear axis)."""
    scores = torch.full((graph.n_sources, graph.n_receivers), -torch.inf, dtype=torch.float64)
    for name, edge in exported["edges"].items():
        scores[graph.edge_index(name)] = edge["score"]
    full, empty = evaluator.clean.mean(), evaluator.metric(torch.zeros_like(graph.edge_exists)).mean()
    fractions = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
    faithfulness = []
    for pct in fractions:
        n = int(pct * graph.n_edges)
        in_graph = torch.zeros(scores.numel(), dtype=torch.bool)
        in_graph[torch.argsort(scores.view(-1), descending=True)[:n]] = True
        keep = area.prune_dangling(graph, in_graph.view_as(scores))
        faithfulness.append((evaluator.metric(keep).mean() - empty) / (full - empty))
    return sum(
        (fractions[i + 1] - fractions[i]) * (faithfulness[i] + faithfulness[i + 1]) / 2
        for i in range(len(fractions) - 1)
    )


def test_exported_eap_ig_file_gives_our_cpr_under_mibs_ranking(tmp_path):
    """A 05 --export eap-ig file, ranked as MIB ranks it, gives the CPR 05 reports (the sign was once inverted)."""
    import pandas as pd
    from conftest import run_cli

    from lib.core.graph import graph_of
    from lib.core.model import load_model
    from lib.methods.faithfulness import Evaluator, discovery_and_held_out

    r = run_cli(
        "05_eap.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "10",
        "--method",
        "eap",
        "--top-k",
        "20",
        "--n-random",
        "0",
        "--n-bootstrap",
        "0",
        "--export",
        "eap-ig",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "05_eap").iterdir()
    exported = json.loads((run / "circuit_ioi_top20.eap-ig.json").read_text())
    areas = pd.read_csv(run / "area.csv").set_index("metric")
    cpr = areas.loc["cpr"].to_dict()
    assert areas.at["cpr", "edges_tied_at_cuts"] == "0 0 0 0 0 0 0 0 0 0"  # no tie decides a circuit
    assert np.isclose(cpr["mib_log_value"], cpr["log_axis_value"] * np.log(1000))
    toy = load_model("toy", device="cpu")
    g = graph_of(toy)
    held_out = discovery_and_held_out("ioi", toy.tokenizer, 10, 0).held_out
    ev = Evaluator(toy, g, held_out, "resample", 32)
    assert np.isclose(mib_cpr(g, exported, ev), cpr["value"], atol=1e-6)
    # the file of the old sign (our scores as they are) selects other circuits: MIB would report another CPR
    flipped = {"edges": {k: {**v, "score": -v["score"]} for k, v in exported["edges"].items()}}
    assert not np.isclose(mib_cpr(g, flipped, ev), cpr["value"], atol=1e-3)
