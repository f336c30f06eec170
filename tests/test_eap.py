"""EAP against autograd through the edge mask, exact per-edge patching, and EAP-IG's 1-step identity."""

import pytest
import torch
from scipy.stats import spearmanr

from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.patching import ablation_values, masked_answer_logits
from lib.methods.eap import edge_scores
from tasks import TASKS


@pytest.fixture(scope="module")
def setup(tiny):
    data = TASKS["ioi"].build(tiny.tokenizer, 8, 0)
    return tiny, graph_of(tiny), data


def test_eap_equals_autograd_on_the_mask(setup):
    model, g, data = setup
    scores = edge_scores(model, g, data, batch_size=3, method="eap")
    ablate = torch.zeros(g.n_sources, g.n_receivers, requires_grad=True)
    values = ablation_values(model, g, data, "resample")
    logits = masked_answer_logits(model, g, data, values, ablate, grad=True)
    data_metric(logits, data).mean().backward()
    expected = (ablate.grad * g.edge_exists).double()
    assert expected.abs().max() > 1e-2  # effects big enough for the comparison to mean something
    torch.testing.assert_close(scores, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_eap_ig_one_step_is_eap(setup):
    model, g, data = setup
    torch.testing.assert_close(edge_scores(model, g, data, 4, "eap-ig", ig_steps=1),
                               edge_scores(model, g, data, 4, "eap"))


def test_eap_ig_differs_and_is_finite(setup):
    model, g, data = setup
    ig = edge_scores(model, g, data, 4, "eap-ig", ig_steps=4)
    assert torch.isfinite(ig).all()
    assert not torch.allclose(ig, edge_scores(model, g, data, 4, "eap"))


def test_rank_correlation_with_exact_edge_patching(setup):
    """Exact effect of ablating each edge alone (resample), all edges batched as separate masks."""
    model, g, data = setup
    values = ablation_values(model, g, data, "resample")
    clean = data_metric(masked_answer_logits(model, g, data, values, torch.zeros(g.n_sources, g.n_receivers)),
                        data).mean()
    s_idx, r_idx = g.edge_exists.nonzero(as_tuple=True)
    exact = []
    for s, r in zip(s_idx.tolist(), r_idx.tolist()):
        ablate = torch.zeros(g.n_sources, g.n_receivers)
        ablate[s, r] = 1.0
        exact.append((data_metric(masked_answer_logits(model, g, data, values, ablate), data).mean() - clean).item())
    exact = torch.tensor(exact, dtype=torch.float64)
    for method, steps in (("eap", 1), ("eap-ig", 5)):
        approx = edge_scores(model, g, data, 8, method, ig_steps=steps)[s_idx, r_idx]
        rho = spearmanr(approx.abs(), exact.abs()).statistic
        print(method, rho)
        assert rho > 0.7, (method, rho)
