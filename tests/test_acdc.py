"""ACDC: equals a slow straightforward implementation, tau extremes, resume after interruption."""

import pytest
import torch

from lib.core.graph import graph_of
from lib.core.metrics import data_metric, kl_divergence
from lib.core.model import answer_logits
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
    state = run_acdc(model, g, data, tau, metric, batch_size=4, candidates=candidates)
    slow = slow_acdc(model, g, data, tau, metric, candidates=candidates)
    assert torch.equal(kept_mask(g, state), slow)
    assert state.tried == int(candidates.sum()) and not (kept_mask(g, state) & ~candidates).any()
    assert 0 < int(slow.sum()) < int(candidates.sum())
