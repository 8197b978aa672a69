"""Intervals for every figure that compares systems, and the words a comparison may use.

Two sources of spread:
    seeds      the figure measured once per training seed: mean and Student-t interval,
               mean +- t_{n-1, (1+level)/2} * s / sqrt(n)   (``t_interval``; paired: on a - b)
    tokens     one run's figure over held-out tokens, which are correlated: a bootstrap over
               non-overlapping blocks of ``block`` contiguous tokens (``BlockBootstrap``), each
               resample drawing n_blocks blocks with replacement. A statistic is recomputed with
               per-token integer weights (the number of times its block was drawn), so the same
               resamples serve every statistic and a paired difference (two systems scored on the
               same tokens) uses one set of weights for both.

A comparison is "better", "worse" or "no significant difference" by whether its interval of the
difference excludes 0 (``verdict``); nothing else may be claimed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from .common.defaults import BLOCK, RESAMPLES

LEVEL = 0.95
BINS = 1024  # quantile groups of a score for resampled rank and selective statistics

Verdict = Literal["better", "worse", "no significant difference"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval at ``level``: ``se`` its standard error, ``n`` the seeds (t) or
    resamples (bootstrap) behind it, ``method`` how it was made."""

    estimate: float
    lo: float
    hi: float
    se: float
    n: int
    method: str
    level: float = LEVEL

    def excludes(self, value: float = 0.0) -> bool:
        return bool(self.lo > value or self.hi < value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "lo": self.lo,
            "hi": self.hi,
            "se": self.se,
            "n": self.n,
            "method": self.method,
            "level": self.level,
        }

    def format(self, fmt: str = "{:.4f}") -> str:
        """'0.1234 [0.1100, 0.1300]' (the estimate alone when the interval is undefined)."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return fmt.format(self.estimate)
        return f"{fmt.format(self.estimate)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


def t_interval(values: Any, level: float = LEVEL) -> Interval:
    """Mean of ``values`` (one per seed) with the Student-t interval; NaN bounds for one value."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, "t")
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * se
    return Interval(mean, mean - half, mean + half, se, int(x.size), "t", level)


def paired_t_interval(a: Any, b: Any, level: float = LEVEL) -> Interval:
    """The mean difference a - b over paired values (the same seeds) with its t interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return t_interval(a - b, level)


class BlockBootstrap:
    """Resamples of ``n`` ordered tokens by blocks of ``block`` contiguous ones (the last block takes
    the remainder), ``resamples`` of them, from ``seed``. ``counts[r, j]`` is how often resample r
    drew block j; ``weights(r)`` the per-token weights of resample r."""

    def __init__(self, n: int, block: int = BLOCK, resamples: int = RESAMPLES, seed: int = 0) -> None:
        if n < 2:
            raise ValueError(f"a bootstrap needs at least 2 tokens, got {n}")
        if block < 1 or resamples < 2:
            raise ValueError(f"block must be >= 1 and resamples >= 2, got {block} and {resamples}")
        self.n, self.resamples = n, resamples
        self.block = min(block, n // 2)  # at least two blocks, or every resample is the data itself
        n_blocks = n // self.block
        self.block_of = np.minimum(np.arange(n) // self.block, n_blocks - 1)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_blocks, size=(resamples, n_blocks))
        self.counts = np.zeros((resamples, n_blocks), dtype=np.int64)
        np.add.at(self.counts, (np.arange(resamples)[:, None], draws), 1)
        self.weight_table = self.counts.astype(np.float64)  # the counts as BLAS multiplies them

    @property
    def method(self) -> str:
        return f"block bootstrap ({self.resamples} resamples of {self.block}-token blocks)"

    def weights(self, r: int) -> np.ndarray:
        return self.counts[r][self.block_of]

    def means(self, x: Any) -> np.ndarray:
        """The weighted mean of ``x`` (per token) in every resample, at once: (resamples,)."""
        return self.ratios(x, np.ones(self.n))

    def ratios(self, num: Any, den: Any) -> np.ndarray:
        """sum_i w_i num_i / sum_i w_i den_i in every resample, at once (a ratio of weighted sums,
        e.g. a micro F1 = 2 tp / (n_pred + n_ref)): (resamples,), NaN where the denominator is 0."""
        k = self.counts.shape[1]
        nums = self.counts @ np.bincount(self.block_of, weights=np.asarray(num, dtype=np.float64), minlength=k)
        dens = self.counts @ np.bincount(self.block_of, weights=np.asarray(den, dtype=np.float64), minlength=k)
        return np.divide(nums, dens, out=np.full(nums.shape, np.nan), where=dens > 0)

    def group_sums(self, groups: Any, n_groups: int, values: Any = None) -> np.ndarray:
        """sum_i w_i values_i over the tokens of each group (``groups``: 0..n_groups-1 per token;
        values default 1) in every resample, at once: (resamples, n_groups). One (blocks, groups)
        table of sums, then one matrix product with the block counts: O(n + resamples blocks groups)."""
        k = self.counts.shape[1]
        cell = self.block_of * n_groups + np.asarray(groups, dtype=np.int64)
        table = np.bincount(
            cell, weights=None if values is None else np.asarray(values, np.float64), minlength=k * n_groups
        )
        return self.weight_table @ table.reshape(k, n_groups)

    def replicates(self, statistic: Callable[[np.ndarray], float]) -> np.ndarray:
        """``statistic(weights)`` for every resample's per-token weights: (resamples,)."""
        return np.array([statistic(self.weights(r)) for r in range(self.resamples)], dtype=np.float64)

    def interval(self, estimate: float, replicates: np.ndarray, level: float = LEVEL) -> Interval:
        """The percentile interval of ``replicates`` around the full-data ``estimate``."""
        reps = replicates[np.isfinite(replicates)]
        if reps.size < 2:
            return Interval(float(estimate), math.nan, math.nan, math.nan, int(reps.size), self.method, level)
        lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
        return Interval(
            float(estimate), float(lo), float(hi), float(reps.std(ddof=1)), int(reps.size), self.method, level
        )

    def paired_interval(
        self, estimate_a: float, estimate_b: float, reps_a: np.ndarray, reps_b: np.ndarray, level: float = LEVEL
    ) -> Interval:
        """The interval of a - b from both systems' replicates on these same resamples (paired: the
        same held-out blocks weigh both, so what the two share cancels)."""
        return self.interval(estimate_a - estimate_b, np.asarray(reps_a) - np.asarray(reps_b), level)

    def mean_interval(self, x: Any, level: float = LEVEL) -> Interval:
        return self.interval(float(np.mean(x)), self.means(x), level)


def verdict(difference: Interval, higher_is_better: bool) -> Verdict:
    """'better' or 'worse' for the first system when the interval of (first - second) excludes 0,
    else 'no significant difference'."""
    if not difference.excludes(0.0):
        return "no significant difference"
    return "better" if (difference.lo > 0) == higher_is_better else "worse"


def signed(iv: Interval, fmt: str = "{:+.3g}") -> str:
    """'+0.1234 [+0.1000, +0.1500]' (the estimate and '(no interval)' when it has none)."""
    if not (math.isfinite(iv.lo) and math.isfinite(iv.hi)):
        return f"{fmt.format(iv.estimate)} (no interval)"
    return f"{fmt.format(iv.estimate)} [{fmt.format(iv.lo)}, {fmt.format(iv.hi)}]"


def compare(what: str, first: str, second: str, difference: Interval, higher_is_better: bool) -> str:
    """The one sentence a comparison may print: '<what>: <first> better than <second> (+d [lo, hi])',
    'worse than', or 'no significant difference between <first> and <second>'; ``difference`` is
    first - second with its interval."""
    word = verdict(difference, higher_is_better)
    if word == "no significant difference":
        return f"{what}: no significant difference between {first} and {second} ({signed(difference)})"
    return f"{what}: {first} {word} than {second} ({signed(difference)})"


def unpaired_difference(a: Interval, b: Interval, level: float = LEVEL) -> Interval:
    """a - b for two intervals of independent estimates: se = sqrt(se_a^2 + se_b^2), normal bounds.
    Conservative for two systems scored on the same tokens (their shared noise does not cancel);
    prefer a paired interval where the per-token statistics or per-seed values of both exist."""
    se = math.hypot(a.se, b.se)
    half = float(stats.norm.ppf((1 + level) / 2)) * se
    d = a.estimate - b.estimate
    return Interval(d, d - half, d + half, se, min(a.n, b.n), "difference of independent intervals", level)


def chance_note(auroc: Interval) -> str:
    """'' for an AUROC above chance; else says it is below chance (the score is more confident
    where it should be less) or not distinguishable from chance."""
    if auroc.hi < 0.5 or (not math.isfinite(auroc.hi) and auroc.estimate < 0.5):
        return "below chance: the score is lower where the model is wrong"
    if auroc.excludes(0.5) or not math.isfinite(auroc.lo):
        return ""
    return "not distinguishable from chance (0.5)"


def quantile_groups(scores: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, int]:
    """(group of each score, number of groups): at most ``bins`` groups of about equal counts,
    ascending, equal scores always in one group."""
    edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return np.searchsorted(edges, scores, side="right"), len(edges) + 1
