"""95% bootstrap intervals over prompts (scipy.stats.bootstrap): BCa where it is defined, else percentile;
several per-prompt arrays are resampled jointly (paired), as ratio statistics need. Vectorised: the resamples
are evaluated as one array operation, never a Python loop per resample."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
N_BOOTSTRAP = 1000  # default of --n-bootstrap


def mean(x, axis=-1):
    return np.mean(x, axis=axis)


def median(x, axis=-1):
    return np.median(x, axis=axis)


def positive_share(x, axis=-1):
    """Accuracy: the share of prompts whose task metric is positive."""
    return np.mean(x > 0, axis=axis)


def ratio_of_means(m, clean, corrupt, axis=-1):
    """Normalized faithfulness (mean m - mean corrupt) / (mean clean - mean corrupt) (DEFINITIONS.md, Metrics)."""
    k = np.mean(corrupt, axis=axis)
    return (np.mean(m, axis=axis) - k) / (np.mean(clean, axis=axis) - k)


def interval(statistic, *samples, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple:
    """(low, high) of the 95% interval of statistic(*samples) over their last axis (prompts), resampled
    jointly; leading axes are independent statistics (e.g. components). nan where fewer than 2 prompts."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    shape = np.broadcast_shapes(*(s.shape for s in samples))
    samples = [np.broadcast_to(s, shape) for s in samples]
    if shape[-1] < 2 or n_resamples < 1:
        nan = np.full(shape[:-1], np.nan)
        return (nan, nan) if shape[:-1] else (np.nan, np.nan)

    def ci(method):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            c = bootstrap(
                tuple(samples),
                statistic,
                n_resamples=n_resamples,
                vectorized=True,
                paired=True,
                axis=-1,
                confidence_level=CONFIDENCE,
                method=method,
                random_state=np.random.default_rng(seed),
            ).confidence_interval
        return np.asarray(c.low, dtype=float), np.asarray(c.high, dtype=float)

    low, high = ci("BCa")
    bad = ~(np.isfinite(low) & np.isfinite(high))  # BCa undefined (e.g. a constant sample): percentile
    if bad.any():
        p_low, p_high = ci("percentile")
        low, high = np.where(bad, p_low, low), np.where(bad, p_high, high)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def columns(name: str, statistic, *samples, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """{name: value, name_ci_low, name_ci_high} for one statistic of per-prompt samples."""
    value = statistic(*[np.asarray(s, dtype=np.float64) for s in samples])
    low, high = interval(statistic, *samples, n_resamples=n_resamples, seed=seed)
    return {name: float(value), f"{name}_ci_low": low, f"{name}_ci_high": high}


def normalized_columns(
    per_item: np.ndarray, clean: np.ndarray, corrupt: np.ndarray, n_bootstrap: int, seed: int
) -> dict:
    """Per patched component [C] (per_item [C, N]): mean metric and normalized metric (ratio of means), each
    with its 95% bootstrap interval over prompts (resampled jointly with their clean and corrupted metric)."""
    ci = dict(n_resamples=n_bootstrap, seed=seed)
    out = {"metric": per_item.mean(1), "normalized": ratio_of_means(per_item, clean, corrupt)}
    out["metric_ci_low"], out["metric_ci_high"] = interval(mean, per_item, **ci)
    out["normalized_ci_low"], out["normalized_ci_high"] = interval(ratio_of_means, per_item, clean, corrupt, **ci)
    return out
