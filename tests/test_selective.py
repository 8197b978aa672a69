"""PRR, AUGRC and risk at coverage against brute-force references (issue 19)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptvariants import metrics as M
from gptvariants.evaluate.uncertainty import selective_summary


def _brute(u: np.ndarray, wrong: np.ndarray) -> dict[str, object]:
    """Distinct scores: keep k = 1..n least uncertain tokens, one at a time."""
    n = len(u)
    e = wrong[np.argsort(u)].astype(float)
    risks = [e[:k].sum() / k for k in range(1, n + 1)]
    oracle = [np.sort(wrong)[:k].sum() / k for k in range(1, n + 1)]
    aurc, aurc_oracle, rand = np.mean(risks), np.mean(oracle), e.mean()
    return {
        "risks": risks,
        "prr": (rand - aurc) / (rand - aurc_oracle),
        "augrc": np.mean([e[:k].sum() / n for k in range(1, n + 1)]),
    }


@pytest.mark.parametrize("seed", range(5))
def test_selective_figures_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 37
    u, wrong = rng.permutation(n).astype(float), rng.random(n) < 0.4
    ref = _brute(u, wrong)
    assert M.prr(u, wrong) == pytest.approx(ref["prr"], abs=1e-12)
    assert M.augrc(u, wrong) == pytest.approx(ref["augrc"], abs=1e-12)
    for c in (0.8, 0.9, 0.95, 1.0):
        assert M.risk_at_coverage(u, wrong, c) == pytest.approx(ref["risks"][math.ceil(c * n) - 1], abs=1e-12)
    assert M.prr(u, wrong) == pytest.approx(
        (wrong.mean() - M.risk_coverage(u, wrong).aurc) / (wrong.mean() - M.risk_coverage(u, wrong).aurc_optimal)
    )


def test_hand_computed_case():
    # kept order: right, wrong, right, wrong; risks 0, 1/2, 1/3, 1/2
    u, wrong = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1], bool)
    assert M.augrc(u, wrong) == pytest.approx((0 + 1 / 4 + 1 / 4 + 2 / 4) / 4)
    # AURC = (0 + 1/2 + 1/3 + 1/2) / 4, oracle = (0 + 0 + 1/3 + 1/2) / 4, random = 1/2
    aurc, oracle = (0 + 1 / 2 + 1 / 3 + 1 / 2) / 4, (1 / 3 + 1 / 2) / 4
    assert M.prr(u, wrong) == pytest.approx((0.5 - aurc) / (0.5 - oracle))
    assert M.risk_at_coverage(u, wrong, 0.5) == pytest.approx(0.5)
    assert M.prr(wrong + 0.01 * u, wrong) == pytest.approx(1.0)  # the errors last: the oracle


def test_weights_equal_repeated_tokens_and_ties_are_kept_together():
    rng = np.random.default_rng(3)
    u, wrong = rng.integers(0, 6, 30).astype(float), rng.random(30) < 0.3  # many ties
    w = rng.integers(0, 4, 30)
    rep = np.repeat(np.arange(30), w)
    assert M.prr(u, wrong, w) == pytest.approx(M.prr(u[rep], wrong[rep]), abs=1e-12)
    assert M.augrc(u, wrong, w) == pytest.approx(M.augrc(u[rep], wrong[rep]), abs=1e-12)
    assert M.risk_at_coverage(u, wrong, 0.9, w) == pytest.approx(M.risk_at_coverage(u[rep], wrong[rep], 0.9))
    rc = M.risk_coverage(u[rep], wrong[rep])
    assert M.prr(u[rep], wrong[rep]) == pytest.approx(
        (wrong[rep].mean() - rc.aurc) / (wrong[rep].mean() - rc.aurc_optimal)
    )


def test_undefined_and_bad_input():
    assert math.isnan(M.prr([0.1, 0.2], [False, False]))
    with pytest.raises(ValueError, match="coverage"):
        M.risk_at_coverage([0.1], [True], 0.0)
    with pytest.raises(ValueError, match="weights"):
        M.augrc([0.1, 0.2], [True, False], [1, -1])


def test_resampled_rows_equal_one_call_per_row():
    rng = np.random.default_rng(4)
    u, wrong = rng.normal(size=50), rng.random(50) < 0.3
    w = rng.integers(0, 3, (6, 50))
    w[:, 0] = 1  # no empty row
    rows = M.selective_resampled(u, wrong, w, coverages=(0.8, 0.95))
    for r in range(6):
        assert rows["prr"][r] == pytest.approx(M.prr(u, wrong, w[r]), abs=1e-12)
        assert rows["augrc"][r] == pytest.approx(M.augrc(u, wrong, w[r]), abs=1e-12)
        assert rows["risk_at_0.95"][r] == pytest.approx(M.risk_at_coverage(u, wrong, 0.95, w[r]), abs=1e-12)
        rep = np.repeat(np.arange(50), w[r])
        assert rows["aurc"][r] == pytest.approx(M.risk_coverage(u[rep], wrong[rep]).aurc, abs=1e-12)


def test_selective_summary_ranks_scores_with_paired_intervals_and_verdicts():
    rng = np.random.default_rng(5)
    n = 2000
    correct = rng.random(n) < 0.6
    tokens = {
        "nll": rng.random(n),
        "correct": correct,
        "entropy": rng.random(n),  # uninformative
        "confidence": np.where(correct, 0.6, 0.4) + 0.3 * rng.random(n),  # informative: higher when right
    }
    sel = selective_summary(tokens, resamples=50)
    assert set(sel["prr"]) == {"entropy", "max_prob"}
    assert sel["prr"]["max_prob"] == pytest.approx(M.prr(-tokens["confidence"], ~correct))
    assert sel["risk_at"]["entropy"]["0.9"] == pytest.approx(M.risk_at_coverage(tokens["entropy"], ~correct, 0.9))
    ci = sel["prr_ci"]["max_prob"]
    assert ci["lo"] <= sel["prr"]["max_prob"] <= ci["hi"] and ci["n"] == 50
    assert sel["vs_entropy"]["max_prob"]["prr"]["verdict"] == "better"
    assert sel["vs_entropy"]["max_prob"]["augrc"]["verdict"] == "better"  # lower AUGRC is better
    assert sel["vs_entropy"]["entropy"]["prr"]["verdict"] == "no significant difference"
    assert "prr_ci" not in selective_summary(tokens, resamples=0)


def _per_token_replicates(boot, u, wrong):
    w = np.stack([boot.weights(r) for r in range(boot.resamples)])
    return M.selective_resampled(u, wrong, w, ())


def test_grouped_replicates_equal_per_token_ones_when_each_score_has_its_group():
    from gptvariants.evaluate.uncertainty import _replicates
    from gptvariants.intervals import BlockBootstrap, quantile_groups

    rng = np.random.default_rng(6)
    n = 3000
    u, wrong = rng.integers(0, 40, n).astype(float), rng.random(n) < 0.35  # 40 distinct scores, 1024 groups
    groups, _ = quantile_groups(u)  # some groups empty (edges between scores), none holds two scores
    assert all(len(np.unique(u[groups == g])) == 1 for g in np.unique(groups))
    boot = BlockBootstrap(n, 64, 30, 0)
    exact = {k: getattr(M, k)(u, wrong) for k in ("prr", "augrc")}
    grouped, per_token = _replicates(boot, u, wrong, exact), _per_token_replicates(boot, u, wrong)
    for k in ("prr", "augrc"):
        np.testing.assert_allclose(grouped[k], per_token[k], atol=1e-12)


def test_grouped_replicates_of_distinct_scores_are_close_to_per_token_ones():
    from gptvariants.evaluate.uncertainty import _replicates
    from gptvariants.intervals import BlockBootstrap

    rng = np.random.default_rng(7)
    n = 20_000
    wrong = rng.random(n) < 0.4
    u = wrong + rng.normal(size=n)  # informative and all distinct: 1024 groups of about 20 tokens
    boot = BlockBootstrap(n, 64, 40, 1)
    exact = {k: getattr(M, k)(u, wrong) for k in ("prr", "augrc")}
    grouped, per_token = _replicates(boot, u, wrong, exact), _per_token_replicates(boot, u, wrong)
    assert np.abs(grouped["prr"] - per_token["prr"]).max() < 0.005
    assert np.abs(grouped["augrc"] - per_token["augrc"]).max() < 0.001
    assert abs(np.std(grouped["prr"]) / np.std(per_token["prr"]) - 1) < 0.05
