"""Scores and conformal sets over seeds (evaluate/over_seeds.py): intervals equal scipy's, verdicts
follow the paired intervals, and the deep ensembles of different seeds share no run."""

import numpy as np
import pytest
from scipy import stats

from gptvariants.evaluate.comparators import ENSEMBLE_RUNS, ensemble_seeds
from gptvariants.evaluate.over_seeds import (
    score_figures,
    scores_over_seeds_section,
    set_figures,
    sets_over_seeds_section,
)
from gptvariants.predict.conformal import fit_flags

SEEDS = [1, 2, 3]
ENTROPY = {"auroc_token": [0.60, 0.62, 0.61], "auroc_sequence": [0.70, 0.50, 0.90], "prr": [0.30, 0.31, 0.29]}
KNN = {"auroc_token": [0.70, 0.73, 0.71], "auroc_sequence": [0.72, 0.49, 0.95], "prr": [0.20, 0.22, 0.21]}
BELOW = {"auroc_token": [0.40, 0.41, 0.42], "auroc_sequence": [0.30, 0.32, 0.31], "prr": [0.1, 0.1, 0.1]}


def _ranked(system="baseline"):
    def rows(i):
        return [{"score": name, **{k: v[i] for k, v in figs.items()}} for name, figs in
                (("entropy", ENTROPY), ("knn", KNN), ("energy", BELOW))]  # fmt: skip

    return {s: {system: rows(i)} for i, s in enumerate(SEEDS)}


def _t(values):
    x = np.asarray(values)
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


def test_score_figures_are_t_intervals_over_seeds_and_paired_differences():
    rows = {r["score"]: r for r in score_figures(_ranked())["baseline"]}
    assert [r["score"] for r in score_figures(_ranked())["baseline"]] == ["knn", "entropy", "energy"]
    iv = rows["knn"]["auroc_token"]
    assert (iv.lo, iv.hi) == pytest.approx(_t(KNN["auroc_token"]))
    diff = rows["knn"]["auroc_token_vs"]
    assert (diff.lo, diff.hi) == pytest.approx(_t(np.subtract(KNN["auroc_token"], ENTROPY["auroc_token"])))
    assert diff.lo > 0  # +0.10 every seed
    seq = rows["knn"]["auroc_sequence_vs"]  # +0.02, -0.01, +0.05: the interval holds 0
    assert seq.lo < 0 < seq.hi
    assert rows["entropy"]["auroc_token_vs"] is None  # no difference from itself


def test_scores_section_says_only_what_the_intervals_allow():
    lines = scores_over_seeds_section(score_figures(_ranked()))
    text = "\n".join(lines)
    assert "### Scores over 3 seeds" in text
    assert "- baseline, token-level OOD AUROC: better than the entropy over the seeds: knn (+0.103)." in text
    assert "- baseline, sequence-level OOD AUROC: no score beats the entropy significantly." in text
    assert "Below chance (token): energy" in text and "Below chance (sequence): energy" in text
    knn = next(line for line in lines if line.startswith("| knn |"))
    assert "| better (+0.103 ±" in knn and "| n.s. (+0.020 ±" in knn and "| worse (-0.090 ±" in knn


def test_a_tiny_significant_difference_is_printed_with_its_digits_not_as_zero():
    ranked = _ranked()
    for i, s in enumerate(SEEDS):  # entropy + 0.0003, 0.0004, 0.0005: significant, yet 0.000 at three decimals
        ranked[s]["baseline"][1]["auroc_token"] = ENTROPY["auroc_token"][i] + 0.0003 + 0.0001 * i
    lines = scores_over_seeds_section(score_figures(ranked))
    assert any(line.endswith("better than the entropy over the seeds: knn (+0.0004).") for line in lines)
    knn = next(line for line in lines if line.startswith("| knn |"))
    assert "| better (+0.0004 ± 0.00025) |" in knn


def test_a_system_missing_from_a_seed_is_left_out():
    ranked = _ranked()
    ranked[3]["other"] = ranked[3]["baseline"]
    assert list(score_figures(ranked)) == ["baseline"]


def _set_rows(seed_index):
    base = {"coverage": [0.90, 0.901, 0.899], "mean_size": [10.0, 10.5, 10.2], "size_floor": [1.30, 1.32, 1.31]}
    sig = {"coverage": [0.90, 0.90, 0.902], "mean_size": [9.0, 9.4, 9.1], "size_floor": [1.18, 1.21, 1.19]}
    bad = {"coverage": [0.85, 0.86, 0.85], "mean_size": [5.0, 5.0, 5.0], "size_floor": [0.7, 0.7, 0.7]}
    out = []
    for system, figs in (("baseline", base), ("sig", sig), ("smooth", bad)):
        out.append({"system": system, "set": "lac@0.1", **{k: v[seed_index] for k, v in figs.items()}})
        out.append({"system": system, "set": "aps@0.1", "coverage": 0.9, "mean_size": 12.0})
    return out


def test_set_figures_compare_each_lac_set_with_the_baselines_over_seeds():
    figures = set_figures({s: _set_rows(i) for i, s in enumerate(SEEDS)}, [0.1])
    sig = next(r for r in figures if r["system"] == "sig" and r["set"] == "lac@0.1")
    d = sig["floor_vs_baseline"]
    assert (d.lo, d.hi) == pytest.approx(_t(np.subtract([1.18, 1.21, 1.19], [1.30, 1.32, 1.31])))
    assert d.hi < 0
    assert (sig["mean_size"].lo, sig["mean_size"].hi) == pytest.approx(_t([9.0, 9.4, 9.1]))
    aps = next(r for r in figures if r["system"] == "sig" and r["set"] == "aps@0.1")
    assert "vs_baseline" not in aps  # only LAC sets are compared across systems
    text = "\n".join(sets_over_seeds_section(figures, [0.1, 0.2]))
    assert "### Sets over 3 seeds" in text and "alpha = 0.2" not in text
    # smooth's sets are smaller but do not cover 0.9 - 0.015: not valid
    assert "- Smallest valid sets on average: sig (9.17 ±" in text
    assert "- size / floor: sig, smooth smaller than baseline's." in text


def test_each_seeds_deep_ensemble_has_its_own_runs():
    members = ensemble_seeds([1337, 1338, 2337])
    assert members[1337] == [3337, 4337, 5337]  # 2337 is an experiment seed: skipped
    assert members[1338] == [2338, 3338, 4338]
    flat = [m for ms in members.values() for m in ms]
    assert len(set(flat)) == len(flat) and not set(flat) & {1337, 1338, 2337}
    assert all(len(ms) == ENSEMBLE_RUNS - 1 for ms in members.values())


def test_the_fit_hint_names_real_flags():
    assert (fit_flags("default"), fit_flags("point"), fit_flags("laplace")) == (
        "",
        " --mc-samples 0",
        " --method laplace",
    )
