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


def slow_acdc(model, g, data, tau, metric, absolute=False):
    """The algorithm as written: full forward passes with a fresh mask for every trial."""
    values = ablation_values(model, g, data, "resample")
    clean = answer_logits(model, data.clean, data.answer_pos, 64)

    def m(keep):
        logits = masked_answer_logits(model, g, data, values, ablate_mask(g, keep))
        return (kl_divergence(clean, logits) if metric == "kl" else data_metric(logits, data)).mean().item()

    keep = g.edge_exists.clone()
    current = m(keep)
    for s, r in edge_order(g):
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
