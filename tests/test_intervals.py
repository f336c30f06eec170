"""Bootstrap intervals: equal scipy's on a known sample, contain the estimate, shrink with more prompts,
resample ratio statistics jointly, fall back to percentile where BCa is undefined, and reach the CSVs."""

import numpy as np
from scipy.stats import bootstrap

from lib.methods import intervals


def test_equals_scipy_bca_on_a_known_sample():
    x = np.random.default_rng(1).exponential(size=60)
    low, high = intervals.interval(intervals.mean, x, n_resamples=2000, seed=5)
    ref = bootstrap(
        (x,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(5)
    ).confidence_interval
    assert np.isclose(low, ref.low) and np.isclose(high, ref.high)


def test_ratio_of_means_resampled_jointly_equals_scipy_paired():
    rng = np.random.default_rng(2)
    clean, corrupt = rng.normal(3, 1, 80), rng.normal(0, 1, 80)
    m = 0.7 * clean + 0.3 * corrupt + rng.normal(0, 0.3, 80)
    value = intervals.ratio_of_means(m, clean, corrupt)
    low, high = intervals.interval(intervals.ratio_of_means, m, clean, corrupt, seed=0)
    ref = bootstrap(
        (m, clean, corrupt),
        intervals.ratio_of_means,
        paired=True,
        vectorized=True,
        method="BCa",
        n_resamples=1000,
        random_state=np.random.default_rng(0),
    ).confidence_interval
    assert np.isclose(low, ref.low) and np.isclose(high, ref.high) and low < value < high
    # hand check of the statistic itself
    assert np.isclose(value, (m.mean() - corrupt.mean()) / (clean.mean() - corrupt.mean()))


def test_contains_the_estimate_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(3)
    widths = []
    for n in (25, 100, 400):
        x = rng.normal(size=n)
        low, high = intervals.interval(intervals.mean, x, seed=0)
        assert low <= x.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_batched_components_and_degenerate_samples():
    x = np.random.default_rng(4).normal(size=(5, 40))
    low, high = intervals.interval(intervals.mean, x, seed=0)
    for i in range(5):  # each row is its own statistic
        lo, hi = intervals.interval(intervals.mean, x[i], seed=0)
        assert np.isclose(low[i], lo) and np.isclose(high[i], hi)
    assert intervals.interval(intervals.mean, np.full(10, 2.5)) == (2.5, 2.5)  # BCa undefined: percentile
    assert all(np.isnan(intervals.interval(intervals.mean, np.array([1.0]))))
    assert all(np.isnan(intervals.interval(intervals.mean, np.arange(5.0), n_resamples=0)))
