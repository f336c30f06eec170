"""ACDC: equals a slow straightforward implementation, tau extremes, resume after interruption."""

import pytest
import torch

from lib.core.forward import answer_logits
from lib.core.graph import graph_of
from lib.core.metrics import data_metric, kl_divergence
from lib.core.patching import ablate_mask, ablation_values, masked_answer_logits
from lib.methods.acdc import ACDCState, edge_order, kept_mask, run_acdc, worsening
from tasks import TASKS


@pytest.fixture(scope="module")
def setup(tiny):
    return tiny, graph_of(tiny), TASKS["ioi"].build(tiny.tokenizer, 6, 0)


def slow_acdc(model, g, data, tau, metric, absolute=False, candidates=None):
    """The algorithm as written: full forward passes with a fresh mask for every trial (only the candidate
    edges tried, every other one removed from the start, where candidates are given)."""
    values = ablation_values(model, g, data, "resample")
    clean = answer_logits(model, data.clean, data.answer_pos, 64)

    def m(keep):
        logits = masked_answer_logits(model, g, data, values, ablate_mask(g, keep))
        return (kl_divergence(clean, logits) if metric == "kl" else data_metric(logits, data)).mean().item()

    keep = g.edge_exists.clone() if candidates is None else g.edge_exists & candidates
    current = m(keep)
    for s, r in edge_order(g, candidates):
        keep[s, r] = False
        new = m(keep)
        if worsening(metric, new, current, absolute) <= tau:
            current = new
        else:
            keep[s, r] = True
    return keep


@pytest.mark.parametrize("metric, tau", [("kl", 0.01), ("task", 0.05)])
def test_equals_slow_implementation(setup, metric, tau):
    model, g, data = setup
    state = run_acdc(model, g, data, tau, metric, batch_size=4)
    slow = slow_acdc(model, g, data, tau, metric)
    assert torch.equal(kept_mask(g, state), slow)
    assert 0 < int(slow.sum()) < g.n_edges  # a non-trivial circuit
    assert state.tried == g.n_edges


def test_tau_extremes(setup):
    model, g, data = setup
    assert run_acdc(model, g, data, 1e9, "kl").removed.__len__() == g.n_edges
    state = run_acdc(model, g, data, 0.0, "kl", absolute=True)
    keep = kept_mask(g, state)
    # every kept edge changes the metric when removed from the final circuit
    values = ablation_values(model, g, data, "resample")
    clean = answer_logits(model, data.clean, data.answer_pos, 64)
    base = kl_divergence(clean, masked_answer_logits(model, g, data, values, ablate_mask(g, keep))).mean()
    for s, r in keep.nonzero().tolist()[:25]:
        k = keep.clone()
        k[s, r] = False
        kl = kl_divergence(clean, masked_answer_logits(model, g, data, values, ablate_mask(g, k))).mean()
        assert kl != base


def test_resume_after_interruption(setup, tmp_path):
    model, g, data = setup
    full = run_acdc(model, g, data, 0.01, "kl", batch_size=4)

    class Stop(Exception):
        pass

    def checkpoint(state):
        state.save(tmp_path / "state.json")
        if state.next_trial == 40:
            raise Stop

    with pytest.raises(Stop):
        run_acdc(model, g, data, 0.01, "kl", batch_size=4, checkpoint=checkpoint)
    resumed = run_acdc(model, g, data, 0.01, "kl", batch_size=4, state=ACDCState.load(tmp_path / "state.json"))
    assert resumed.removed == full.removed and resumed.tried == g.n_edges - 0 - 0


def test_pruned_acdc_over_every_edge_is_plain_acdc(setup):
    model, g, data = setup
    plain = run_acdc(model, g, data, 0.01, "kl", batch_size=4)
    everything = run_acdc(model, g, data, 0.01, "kl", batch_size=4, candidates=g.edge_exists.clone())
    assert everything.removed == plain.removed and everything.scores == plain.scores
    assert everything.current == plain.current and everything.forward_passes == plain.forward_passes


@pytest.mark.parametrize("metric, tau", [("kl", 0.01), ("task", 0.05)])
def test_pruned_acdc_equals_slow_implementation(setup, metric, tau):
    """EAP's top edges as candidates: the recompute from the receiver's layer starts from the stream with the
    pruned edges ablated, and equals full forward passes with the whole mask."""
    from lib.methods.eap import edge_scores
    from lib.methods.faithfulness import top_k_mask

    model, g, data = setup
    candidates = top_k_mask(g, edge_scores(model, g, data, 6, "eap"), g.n_edges // 3)
    state = run_acdc(
        model,
        g,
        data,
        tau,
        metric,
        batch_size=4,
        candidates=candidates,
        state=ACDCState(tau) if metric == "kl" else None,
    )  # a fresh state passed in, as 06 does
    slow = slow_acdc(model, g, data, tau, metric, candidates=candidates)
    assert torch.equal(kept_mask(g, state), slow)
    assert state.tried == int(candidates.sum()) and not (kept_mask(g, state) & ~candidates).any()
    assert 0 < int(slow.sum()) < int(candidates.sum())


def test_script_hybrid_and_bad_pruning_options(tmp_path):
    """06 --prune-with wiring (the identity with plain ACDC over every edge is tested in-process above)."""
    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        "06_acdc.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "4",
        "--thresholds",
        "0.05",
        "--prune-with",
        "eap",
        "--prune-top",
        "20",
        "--no-plain",
        "--n-random",
        "1",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "06_acdc").iterdir())
    sweep = pd.read_csv(run / "acdc_sweep.csv").set_index("method")
    assert list(sweep.index) == ["eap-top20", "acdc+eap-top20"]
    hybrid = sweep.loc["acdc+eap-top20"].to_dict()
    assert hybrid["edges_tried"] == 20 and hybrid["edges_kept"] <= 20 and hybrid["trial_passes_saved"] > 0
    assert (run / "circuit_ioi_tau0.05_pruned.json").exists()
    for bad, message in [
        (["--prune-top", "5"], "need --prune-with"),
        (["--prune-with", "eap"], "exactly one of --prune-top"),
        (["--prune-with", "eap", "--prune-top", "5", "--prune-threshold", "0.1"], "exactly one"),
        (["--prune-with", "acdc", "--prune-top", "5"], "unknown --prune-with"),
    ]:
        r = run_cli("06_acdc.py", "--model", "toy", *bad, "--out", str(tmp_path / "bad"))
        assert r.returncode == 2 and message in r.stderr and not (tmp_path / "bad").exists(), r.stderr
