"""Output metrics (DEFINITIONS.md, Metrics): divergences over the full vocabulary, task metrics, faithfulness."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

LN2 = math.log(2.0)


def _logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def _plogratio(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) with 0 where p = 0 (0 log 0 = 0, also where both log-probabilities are -inf)."""
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row, [N], in nats; P, Q given as logits [N, V]."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    return _plogratio(lp, lq).sum(-1).clamp_min(0.0)


def reverse_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(Q || P) per row."""
    return kl_divergence(q_logits, p_logits)


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row, in [0, ln 2]."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    lm = torch.logaddexp(lp, lq) - LN2
    js = 0.5 * _plogratio(lp, lm).sum(-1) + 0.5 * _plogratio(lq, lm).sum(-1)
    return js.clamp(0.0, LN2)


def total_variation(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Total variation distance per row, in [0, 1]."""
    return (0.5 * (_logp(p_logits).exp() - _logp(q_logits).exp()).abs().sum(-1)).clamp(0.0, 1.0)


DIVERGENCES = {"kl": kl_divergence, "reverse_kl": reverse_kl, "js": js_divergence, "tv": total_variation}


def _gather(values: torch.Tensor, ids: torch.Tensor, fill: float) -> torch.Tensor:
    """values[i, ids[i, j]] with -1 ids replaced by fill, [N, K]."""
    got = values.gather(-1, ids.clamp_min(0))
    return torch.where(ids >= 0, got, torch.full_like(got, fill))


def task_metric(logits: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor, kind: str) -> torch.Tensor:
    """The task metric per row (float64, differentiable), for the metric kinds of tasks/base.py."""
    logits = logits.double()
    correct, wrong = correct.to(logits.device), wrong.to(logits.device)
    if kind == "logit_diff":
        return logits.gather(-1, correct[:, :1])[:, 0] - logits.gather(-1, wrong[:, :1])[:, 0]
    if kind == "logit_minus_max":
        return logits.gather(-1, correct[:, :1])[:, 0] - _gather(logits, wrong, -math.inf).max(-1).values
    if kind == "prob_diff":
        probs = torch.softmax(logits, dim=-1)
        return _gather(probs, correct, 0.0).sum(-1) - _gather(probs, wrong, 0.0).sum(-1)
    raise ValueError(f"unknown metric kind {kind!r}")


def data_metric(logits: torch.Tensor, data) -> torch.Tensor:
    """task_metric for a TaskData (or a subset of it) whose rows match logits."""
    return task_metric(logits, data.correct, data.wrong, data.metric_kind)


def median_of_ratios(m, m_clean, m_corrupt, axis=-1):
    """Median over prompts (last axis) of per-prompt (m - m_corrupt) / (m_clean - m_corrupt); prompts whose
    clean and corrupted metric agree have no ratio and are left out (nan if none has one)."""
    gap = np.asarray(m_clean) - np.asarray(m_corrupt)
    ok = np.abs(gap) > 1e-12
    per_prompt = np.where(ok, (np.asarray(m) - m_corrupt) / np.where(ok, gap, 1.0), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices give nan
        return np.nanmedian(per_prompt, axis=axis)


def normalized(m: np.ndarray, m_clean: np.ndarray, m_corrupt: np.ndarray) -> dict:
    """Normalized faithfulness (m - m_corrupt) / (m_clean - m_corrupt): ratio of means, median of ratios."""
    m, c, k = (np.asarray(x, dtype=np.float64) for x in (m, m_clean, m_corrupt))
    denom = c.mean() - k.mean()
    return {
        "faithfulness": float((m.mean() - k.mean()) / denom) if abs(denom) > 1e-12 else float("nan"),
        "faithfulness_median": float(median_of_ratios(m, c, k)),
    }


def kl_interpretation(kl: float) -> str:
    """Project convention of DEFINITIONS.md, Metrics (not a literature standard)."""
    if not np.isfinite(kl):
        return "undefined"
    if kl < 0.01:
        return "near-perfect"
    if kl < 0.1:
        return "good, minor tail gaps"
    if kl < 1.0:
        return "meaningful gaps"
    return "poor"


def summarize(values, prefix: str = "") -> dict:
    """mean, std, median, IQR and worst-5% mean of per-prompt values (worst = largest)."""
    v = np.asarray(values, dtype=np.float64)
    q25, q50, q75, q95 = np.quantile(v, [0.25, 0.5, 0.75, 0.95])
    return {
        f"{prefix}mean": v.mean(),
        f"{prefix}std": v.std(ddof=1) if len(v) > 1 else 0.0,
        f"{prefix}median": q50,
        f"{prefix}q25": q25,
        f"{prefix}q75": q75,
        f"{prefix}worst5": v[v >= q95].mean(),
    }
