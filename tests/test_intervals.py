"""intervals.py: the t interval against scipy, the block bootstrap's resamples, the verdict words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gptvariants.intervals import BlockBootstrap, Interval, paired_t_interval, t_interval, verdict


def test_t_interval_equals_scipy():
    x = [3.1, 3.4, 2.9, 3.3]
    iv = t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert iv.estimate == pytest.approx(np.mean(x))
    assert (iv.lo, iv.hi) == pytest.approx((lo, hi), abs=1e-12)
    assert iv.n == 4 and iv.se == pytest.approx(stats.sem(x))


def test_one_seed_has_no_interval():
    iv = t_interval([0.5])
    assert iv.estimate == 0.5 and math.isnan(iv.lo) and not iv.excludes(0.0)
    assert iv.format("{:.2f}") == "0.50"


def test_paired_t_interval_is_the_interval_of_the_differences():
    a, b = np.array([1.0, 2.0, 3.5]), np.array([0.5, 1.0, 3.0])
    assert paired_t_interval(a, b) == t_interval(a - b)
    with pytest.raises(ValueError, match="same shape"):
        paired_t_interval(a, b[:2])


def test_block_bootstrap_draws_whole_blocks():
    boot = BlockBootstrap(10, block=3, resamples=50, seed=1)
    # 3 blocks: tokens 0-2, 3-5 and 6-9 (the last takes the remainder); each resample draws 3 blocks
    assert boot.block_of.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert (boot.counts.sum(axis=1) == 3).all()
    w = boot.weights(0)
    assert (w[:3] == w[0]).all() and (w[6:] == w[6]).all()


def test_vectorised_means_equal_weighted_means():
    x = np.random.default_rng(0).normal(size=101)
    boot = BlockBootstrap(len(x), block=8, resamples=20, seed=3)
    expected = boot.replicates(lambda w: float(np.average(x, weights=w)))
    assert boot.means(x) == pytest.approx(expected, rel=1e-12)


def test_bootstrap_is_seeded():
    a, b = BlockBootstrap(100, 5, 30, seed=7), BlockBootstrap(100, 5, 30, seed=7)
    assert (a.counts == b.counts).all()
    assert not (a.counts == BlockBootstrap(100, 5, 30, seed=8).counts).all()


def test_bootstrap_interval_of_iid_mean_is_close_to_the_normal_one():
    x = np.random.default_rng(5).normal(1.0, 2.0, size=4000)
    iv = BlockBootstrap(len(x), block=1, resamples=400, seed=0).mean_interval(x)
    assert iv.se == pytest.approx(2.0 / math.sqrt(len(x)), rel=0.15)
    assert iv.lo < x.mean() < iv.hi and iv.hi - iv.lo == pytest.approx(2 * 1.96 * iv.se, rel=0.15)


def test_refuses_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        BlockBootstrap(1)
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


@pytest.mark.parametrize(
    ("lo", "hi", "higher", "words"),
    [
        (0.01, 0.03, True, "better"),
        (0.01, 0.03, False, "worse"),
        (-0.03, -0.01, True, "worse"),
        (-0.03, -0.01, False, "better"),
        (-0.01, 0.02, True, "no significant difference"),
    ],
)
def test_verdict_follows_the_interval_of_the_difference(lo, hi, higher, words):
    assert verdict(Interval((lo + hi) / 2, lo, hi, 0.01, 3, "t"), higher) == words
