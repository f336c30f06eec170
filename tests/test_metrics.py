"""Divergences and task metrics against scipy and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax
from scipy.stats import entropy

from lib.core.metrics import (
    js_divergence,
    kl_divergence,
    kl_interpretation,
    normalized,
    reverse_kl,
    task_metric,
    total_variation,
)


def logits_of(p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


@pytest.fixture
def random_pairs():
    g = np.random.default_rng(0)
    return torch.tensor(g.normal(size=(6, 50)) * 3), torch.tensor(g.normal(size=(6, 50)) * 3)


def test_against_scipy(random_pairs):
    a, b = random_pairs
    p, q = (np.exp(log_softmax(x.numpy(), axis=-1)) for x in (a, b))
    np.testing.assert_allclose(kl_divergence(a, b), entropy(p, q, axis=-1), rtol=1e-10)
    np.testing.assert_allclose(reverse_kl(a, b), entropy(q, p, axis=-1), rtol=1e-10)
    np.testing.assert_allclose(js_divergence(a, b), jensenshannon(p, q, axis=-1) ** 2, rtol=1e-8)
    np.testing.assert_allclose(total_variation(a, b), 0.5 * np.abs(p - q).sum(-1), rtol=1e-10)


def test_identities(random_pairs):
    a, b = random_pairs
    assert torch.all(kl_divergence(a, a) < 1e-12)
    assert torch.all(js_divergence(a, a) < 1e-12)
    assert torch.all(total_variation(a, a) < 1e-12)
    torch.testing.assert_close(js_divergence(a, b), js_divergence(b, a))
    assert torch.all(js_divergence(a, b) <= math.log(2)) and torch.all(js_divergence(a, b) >= 0)
    tv = total_variation(a, b)
    assert torch.all((tv >= 0) & (tv <= 1))
    # invariant to adding a constant to the logits
    torch.testing.assert_close(kl_divergence(a + 7.0, b - 3.0), kl_divergence(a, b))


def test_two_point_values():
    p, q = logits_of([[0.5, 0.5]]), logits_of([[0.9, 0.1]])
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q).item() == pytest.approx(kl, rel=1e-12)
    assert reverse_kl(p, q).item() == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert total_variation(p, q).item() == pytest.approx(0.4)
    m = [0.7, 0.3]
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    )
    assert js_divergence(p, q).item() == pytest.approx(js, rel=1e-12)


def test_extreme_logits_are_finite():
    # disjoint, peaked distributions with float32-scale logits
    p = torch.tensor([[1e4, 0.0, 0.0], [300.0, -300.0, 0.0]], dtype=torch.float32)
    q = torch.tensor([[0.0, 1e4, 0.0], [-300.0, 300.0, 0.0]], dtype=torch.float32)
    for fn in (kl_divergence, reverse_kl, js_divergence, total_variation):
        v = fn(p, q)
        assert torch.isfinite(v).all(), fn.__name__
    assert js_divergence(p, q)[0].item() == pytest.approx(math.log(2), rel=1e-9)
    assert total_variation(p, q)[0].item() == pytest.approx(1.0)
    assert kl_divergence(p, q)[0].item() == pytest.approx(1e4, rel=1e-6)
    # tiny probabilities: KL between nearly identical peaked distributions stays ~0, not NaN
    r = torch.tensor([[50.0, -50.0, -60.0]])
    assert 0 <= kl_divergence(r, r + torch.tensor([[0.0, 1e-3, 0.0]])).item() < 1e-40


def test_task_metrics_hand_computed():
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, 0.0]])
    correct = torch.tensor([[0, -1], [2, -1]])
    wrong = torch.tensor([[1, 3], [1, -1]])
    torch.testing.assert_close(
        task_metric(logits, correct, wrong, "logit_diff"), torch.tensor([1.5, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        task_metric(logits, correct, wrong, "logit_minus_max"), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    )
    p = torch.softmax(logits.double(), -1)
    expected = torch.stack([p[0, 0] - p[0, 1] - p[0, 3], p[1, 2] - p[1, 1]])
    torch.testing.assert_close(task_metric(logits, correct, wrong, "prob_diff"), expected)


def test_normalized_faithfulness():
    clean, corrupt = np.array([4.0, 2.0]), np.array([0.0, 1.0])
    r = normalized(np.array([3.0, 1.5]), clean, corrupt)
    assert r["faithfulness"] == pytest.approx((2.25 - 0.5) / (3.0 - 0.5))
    assert r["faithfulness_median"] == pytest.approx(np.median([0.75, 0.5]))
    assert normalized(clean, clean, corrupt)["faithfulness"] == pytest.approx(1.0)
    assert normalized(corrupt, clean, corrupt)["faithfulness"] == pytest.approx(0.0)


def test_kl_interpretation_bands():
    assert [kl_interpretation(x) for x in (0.001, 0.05, 0.5, 5.0)] == [
        "near-perfect",
        "good, minor tail gaps",
        "meaningful gaps",
        "poor",
    ]
