"""Weighted metrics (per-token integer weights, the block bootstrap's resamples) against the
unweighted metric on the data with each token explicitly repeated that many times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptvariants import metrics as M


def _case(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=n), 1)  # rounding makes ties
    labels = rng.random(n) < 0.3
    weights = rng.integers(0, 4, size=n)
    weights[:2] = 1  # both classes keep some weight
    labels[:2] = [True, False]
    return scores, labels, weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_auroc_and_fpr95_equal_the_repeated_data(seed):
    s, y, w = _case(seed)
    rs, ry = np.repeat(s, w), np.repeat(y, w)
    assert M.auroc(s, y, weights=w) == pytest.approx(M.auroc(rs, ry), abs=1e-12)
    for tpr in (0.95, 0.5, 1.0):
        assert M.fpr_at_tpr(s, y, tpr, weights=w) == pytest.approx(M.fpr_at_tpr(rs, ry, tpr), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_ece_and_risk_coverage_equal_the_repeated_data(seed):
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(80), 2)
    correct = rng.random(80) < conf
    w = rng.integers(0, 3, size=80)
    rc, rk = np.repeat(conf, w), np.repeat(correct, w)
    assert M.expected_calibration_error(conf, correct, weights=w) == pytest.approx(
        M.expected_calibration_error(rc, rk), abs=1e-12
    )
    got, want = M.risk_coverage(1 - conf, ~correct, weights=w), M.risk_coverage(1 - rc, ~rk)
    assert got.aurc == pytest.approx(want.aurc, abs=1e-12)
    assert got.aurc_optimal == pytest.approx(want.aurc_optimal, abs=1e-12)
    np.testing.assert_allclose(got.coverage, want.coverage)
    np.testing.assert_allclose(got.risk, want.risk)


def test_resampled_rows_equal_one_weighted_call_each():
    s, y, _ = _case(5)
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 3, size=(6, s.size))
    rows[:, :2] = 1
    conf = 1 / (1 + np.exp(-s))
    for batched, single in (
        (M.auroc_resampled(s, y, rows), lambda w: M.auroc(s, y, weights=w)),
        (M.fpr_at_tpr_resampled(s, y, rows), lambda w: M.fpr_at_tpr(s, y, weights=w)),
        (M.ece_resampled(conf, ~y, rows), lambda w: M.expected_calibration_error(conf, ~y, weights=w)),
        (M.aurc_resampled(s, y, rows), lambda w: M.risk_coverage(s, y, weights=w).aurc),
    ):
        assert batched == pytest.approx([single(w) for w in rows], abs=1e-12)


def test_unit_weights_leave_every_metric_unchanged():
    s, y, _ = _case(3)
    ones = np.ones(s.size, dtype=int)
    conf = 1 / (1 + np.exp(-s))
    assert M.auroc(s, y, weights=ones) == pytest.approx(M.auroc(s, y), abs=1e-12)
    assert M.fpr_at_tpr(s, y, weights=ones) == pytest.approx(M.fpr_at_tpr(s, y))
    assert M.expected_calibration_error(conf, y, weights=ones) == pytest.approx(M.expected_calibration_error(conf, y))
    assert M.risk_coverage(s, y, weights=ones).aurc == pytest.approx(M.risk_coverage(s, y).aurc)


def test_weights_that_drop_a_class_give_nan_and_bad_weights_are_named():
    s, y = np.array([0.1, 0.2, 0.3]), np.array([True, False, False])
    assert math.isnan(M.auroc(s, y, weights=[0, 1, 1]))
    assert math.isnan(M.fpr_at_tpr(s, y, weights=[0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        M.auroc(s, y, weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        M.auroc(s, y, weights=[1, -1, 1])
    with pytest.raises(ValueError, match="equal-width"):
        M.expected_calibration_error(s, y, scheme="mass", weights=[1, 1, 1])
