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
    torch.testing.assert_close(
        edge_scores(model, g, data, 4, "eap-ig", ig_steps=1), edge_scores(model, g, data, 4, "eap")
    )


def test_eap_ig_differs_and_is_finite(setup):
    model, g, data = setup
    ig = edge_scores(model, g, data, 4, "eap-ig", ig_steps=4)
    assert torch.isfinite(ig).all()
    assert not torch.allclose(ig, edge_scores(model, g, data, 4, "eap"))


def test_rank_correlation_with_exact_edge_patching(setup):
    """Exact effect of ablating each edge alone (resample), all edges batched as separate masks."""
    model, g, data = setup
    values = ablation_values(model, g, data, "resample")
    clean = data_metric(
        masked_answer_logits(model, g, data, values, torch.zeros(g.n_sources, g.n_receivers)), data
    ).mean()
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


def slow_gradient_points(model, g, data, points):
    """Each point as its own autograd pass (the chunk's output set to corrupted + alpha (clean - corrupted), a
    zero probe on every receiver's input), scores = sum over points of delta . probe gradient, averaged."""
    from lib.core.forward import logits_at
    from lib.core.patching import receiver_groups, source_hooks, source_outputs

    clean, corrupt = source_outputs(model, g, data.clean), source_outputs(model, g, data.corrupt)
    delta = corrupt - clean
    scores = torch.zeros(g.n_sources, g.n_receivers, dtype=torch.float64)
    for chunk, alpha in points:
        name, rows = source_hooks(g)[chunk]
        kept = {}

        def interpolate(x, hook, rows=rows, alpha=alpha):
            value = corrupt[rows] + alpha * (clean[rows] - corrupt[rows])
            return (value.permute(1, 2, 0, 3) if x.dim() == 4 else value[0]).clone().requires_grad_(True)

        def keep(name, kept=kept):  # a zero probe added to the receiver's input: its gradient is the input's
            def hook(x, hook):
                kept[name] = torch.zeros_like(x, requires_grad=True)
                return x + kept[name]

            return hook

        hooks = [("blocks.0.hook_resid_pre", lambda x, hook: x.detach().requires_grad_(True)), (name, interpolate)]
        hooks += [(n, keep(n)) for n, _, _ in receiver_groups(g)]
        data_metric(logits_at(model, data.clean, data.answer_pos, hooks, grad=True), data).sum().backward()
        for n, cols, n_before in receiver_groups(g):
            grad = kept[n].grad if kept[n].grad is not None else torch.zeros_like(kept[n])  # no path: 0
            grad = grad if grad.dim() == 4 else grad.unsqueeze(2)  # [B, P, h, D]
            scores[:n_before, cols] += torch.einsum("sbpd,bphd->sh", delta[:n_before].double(), grad.double())
    return scores * g.edge_exists / (len(points) * len(data))


@pytest.mark.parametrize(
    "method, points",
    [
        ("eap-ig", "right"),
        ("eap-ig", "left"),
        ("eap-ig-activations", "right"),
        ("eap-ig-activations", "left"),
        ("clean-corrupted", "right"),
    ],
)
def test_variants_equal_a_slow_autograd_reference(setup, method, points):
    from lib.methods.eap import gradient_points

    model, g, data = setup
    ours = edge_scores(model, g, data, 3, method, ig_steps=2, ig_points=points)
    slow = slow_gradient_points(model, g, data, gradient_points(g, method, 2, points))
    assert slow.abs().max() > 1e-3
    torch.testing.assert_close(ours, slow, atol=1e-5 * slow.abs().max().item(), rtol=1e-4)


def test_one_step_reduces_to_its_endpoint(setup):
    """Right points with 1 step: the clean point (EAP); left points: the corrupted point, the other half of
    clean-corrupted."""
    model, g, data = setup
    eap = edge_scores(model, g, data, 4, "eap")
    torch.testing.assert_close(edge_scores(model, g, data, 4, "eap-ig", ig_steps=1, ig_points="right"), eap)
    left = edge_scores(model, g, data, 4, "eap-ig", ig_steps=1, ig_points="left")
    both = edge_scores(model, g, data, 4, "clean-corrupted")
    torch.testing.assert_close((left + eap) / 2, both, atol=1e-6 * both.abs().max().item(), rtol=1e-5)
    assert (left - eap).abs().max() > 1e-3
