"""Seeds, paired differences and the words a comparison may use (issue 18)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from gptvariants.apps.cli.main import main as cli_main
from gptvariants.common.errors import InputError
from gptvariants.evaluate.bootstrap import Resampling, paired_figures, within_difference
from gptvariants.evaluate.report import markdown_table
from gptvariants.evaluate.verdicts import SeedStudy, best_cells, ood_score_sentence, parse_seeds
from gptvariants.intervals import (
    BlockBootstrap,
    Interval,
    chance_note,
    compare,
    paired_t_interval,
    t_interval,
    unpaired_difference,
)

TINY_TOML = "n_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 32\nbatch_size = 8\nwarmup_iters = 2\n"


def test_parse_seeds():
    assert parse_seeds(None, 7) == [7]
    assert parse_seeds("3", 1337) == [1337, 1338, 1339]
    assert parse_seeds("5,1,2", 1337) == [5, 1, 2]
    for bad in ("x", "0", "1,1", "-1"):
        with pytest.raises(InputError, match="seed"):
            parse_seeds(bad, 1)


def _study() -> SeedStudy:
    rows = {
        s: [
            {
                "variant": "baseline",
                "steps": 5,
                "perplexity": 10.0 + d,
                "ece": 0.01 * s,
                "mutual_information": None,
                "nats_per_token": 2.0 + d,
            },
            {
                "variant": "bayes",
                "steps": 5,
                "perplexity": 11.0 + 2 * d,
                "ece": 0.01 * s,
                "mutual_information": 1e-3,
                "nats_per_token": 2.1 + 2 * d,
            },
        ]
        for s, d in ((1, 0.0), (2, 0.5), (3, -0.2))
    }
    return SeedStudy(rows, {s: {} for s in rows}, {s: {} for s in rows})


def test_seed_rows_are_means_with_t_intervals_and_paired_differences():
    study = _study()
    rows = {r["variant"]: r for r in study.rows()}
    assert rows["bayes"]["perplexity"] == pytest.approx(np.mean([11.0, 12.0, 10.6]))
    assert rows["baseline"]["steps"] == 5 and rows["baseline"]["mutual_information"] is None
    assert rows["bayes"]["seeds"] == 3
    ci = study.intervals()
    x = [11.0, 12.0, 10.6]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert (ci["bayes"]["perplexity"].lo, ci["bayes"]["perplexity"].hi) == pytest.approx((lo, hi))
    assert "steps" not in ci["bayes"] and "mutual_information" not in ci["baseline"]
    diff = study.differences()["bayes"]
    assert "perplexity" not in diff  # compared through nats/token only
    ds = (0.0, 0.5, -0.2)
    assert diff["nats_per_token"] == paired_t_interval([2.1 + 2 * d for d in ds], [2.0 + d for d in ds])
    assert diff["ece"].estimate == pytest.approx(0.0) and "steps" not in diff


def test_compare_words_only_what_the_interval_supports():
    worse = Interval(0.12, 0.10, 0.14, 0.01, 3, "t")
    unclear = Interval(0.004, -0.006, 0.014, 0.005, 3, "t")
    assert compare("nats/token", "bayes", "baseline", worse, higher_is_better=False).startswith(
        "nats/token: bayes worse than baseline (+0.12 [+0.1, +0.14])"
    )
    assert "bayes better than baseline" in compare("AUROC", "bayes", "baseline", worse, higher_is_better=True)
    said = compare("AUROC", "MI of bayes", "entropy of baseline", unclear, higher_is_better=True)
    assert said.startswith("AUROC: no significant difference between MI of bayes and entropy of baseline")
    one_seed = Interval(0.01, math.nan, math.nan, math.nan, 1, "t")
    assert "no significant difference" in compare("ECE", "a", "b", one_seed, False) and "(no interval)" in compare(
        "ECE", "a", "b", one_seed, False
    )


def test_chance_note_and_unpaired_difference():
    assert "below chance" in chance_note(Interval(0.45, 0.42, 0.48, 0.01, 200, "b"))
    assert "not distinguishable" in chance_note(Interval(0.49, 0.46, 0.52, 0.01, 200, "b"))
    assert chance_note(Interval(0.6, 0.55, 0.65, 0.02, 200, "b")) == ""
    d = unpaired_difference(Interval(0.6, 0.5, 0.7, 0.03, 200, "b"), Interval(0.5, 0.4, 0.6, 0.04, 200, "b"))
    assert d.estimate == pytest.approx(0.1) and d.se == pytest.approx(0.05)
    assert d.hi - d.estimate == pytest.approx(stats.norm.ppf(0.975) * 0.05)


def test_table_cells_carry_half_the_interval():
    rows = [{"variant": "bayes", "perplexity": 12.0, "ece": None}]
    table = markdown_table(rows, ["variant", "perplexity", "ece"], {"bayes": {"perplexity": t_interval([11, 12, 13])}})
    half = (t_interval([11, 12, 13]).hi - t_interval([11, 12, 13]).lo) / 2
    assert f"| bayes | 12.0000 ± {half:.4f} | - |" in table


def _tokens(rng, n, shift=0.0):
    conf = rng.random(n)
    return {
        "nll": rng.exponential(2.0, n) + shift,
        "brier": rng.random(n),
        "confidence": conf,
        "correct": rng.random(n) < conf,
        "entropy": rng.random(n),
        "mutual_information": rng.random(n),
    }


def test_paired_figures_share_the_resamples():
    rng = np.random.default_rng(0)
    a = _tokens(rng, 3000)
    b = {**a, "nll": a["nll"] + 0.1}  # the same system but 0.1 nats worse on every token
    how = Resampling(100, 50, 3)
    d = paired_figures(b, a, how)
    # pairing cancels everything the two share: the NLL difference has no spread at all
    assert d["nats_per_token"].estimate == pytest.approx(0.1) and d["nats_per_token"].se == pytest.approx(0, abs=1e-12)
    assert d["ece"].estimate == pytest.approx(0.0) and d["auroc_entropy"].lo == pytest.approx(0.0, abs=1e-12)
    same = within_difference(a, "entropy", "entropy", how)
    assert same.estimate == 0 and same.lo == same.hi == 0
    with pytest.raises(ValueError, match="same tokens"):
        paired_figures(a, _tokens(rng, 10), how)


def _ar1(n, phi, rng):
    x = np.empty(n)
    x[0] = rng.normal()
    for t in range(1, n):
        x[t] = phi * x[t - 1] + rng.normal()
    return x


def test_block_bootstrap_covers_the_mean_of_correlated_tokens():
    """A fast version of benchmarks/bench_intervals.py's coverage check (there: 200 repetitions)."""
    rng = np.random.default_rng(11)

    def covered(block: int, r: int) -> bool:
        return not BlockBootstrap(2000, block, 100, seed=r).mean_interval(_ar1(2000, 0.5, rng)).excludes(0)

    hits, naive = [covered(40, r) for r in range(60)], [covered(1, r) for r in range(60)]
    assert 0.85 <= np.mean(hits) <= 1.0
    assert np.mean(naive) < np.mean(hits)  # ignoring the correlation makes the interval too narrow


def test_paired_bootstrap_rarely_separates_identical_systems():
    """A fast version of the benchmark's false-positive check: two systems with the same signal and
    independent noise of one size, scored on the same tokens."""
    rng = np.random.default_rng(5)
    rejected = 0
    for r in range(30):
        t = _tokens(rng, 2000)
        signal = _ar1(2000, 0.8, rng)
        t["correct"] = rng.random(2000) < 1 / (1 + np.exp(signal))
        t["entropy"], t["mutual_information"] = signal + rng.normal(size=2000), signal + rng.normal(size=2000)
        rejected += within_difference(t, "mutual_information", "entropy", Resampling(100, 40, r)).excludes(0)
    assert rejected <= 4  # 5 % of 30 is 1.5; 4 or more happens with probability < 2 %


def test_experiment_over_two_seeds_reuses_everything(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "exp"
    argv = ["experiment", "--data", "synthetic:tiny", "--variants", "baseline,bayes", "--budget", "6", "--seeds", "2"]
    argv += ["--num-samples", "2", "--max-new-tokens", "4", "--resamples", "20", "--config", str(config)]
    argv += ["--out", str(out)]
    assert cli_main(argv) == 0
    log = capsys.readouterr().out
    assert "run 4 of 4: bayes, seed 1338" in log and (out / "runs-seed1338" / "bayes" / "eval" / "val.json").is_file()
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["seed"], r["variant"]) for r in table] == [
        ("1337", "baseline"), ("1337", "bayes"), ("1338", "baseline"), ("1338", "bayes"),
    ]  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_seed"]) == {"1337", "1338"} and results["intervals"]["bayes"]["perplexity"]["n"] == 2
    report = (out / "report.md").read_text()
    assert "mean over 2 seeds (1337, 1338)" in report and "## Differences from the baseline" in report
    assert "- **bayes**: nats/token: " in report and "--seeds 1337,1338" in report
    # conformal sets of every seed's systems, compared over the seeds (issue 22)
    assert (out / "sets.json").is_file() and (out / "sets-seed1338.json").is_file()
    assert "### Sets over 2 seeds" in report and "| bayes |" in report.split("### Sets over 2 seeds")[1]
    assert cli_main(argv) == 0
    again = capsys.readouterr().out
    assert again.count(": skipped") == 4 and "trained" not in again
    reused = [line for line in again.splitlines() if line.endswith("(already done)")]
    assert sum("] eval " in line for line in reused) == 4 and sum("] sets: " in line for line in reused) == 4


def test_ood_score_sentence_claims_only_a_supported_difference():
    def ev(score, est, lo, hi):
        iv = Interval(est, lo, hi, (hi - lo) / 3.92, 200, "b").to_dict()
        return {"ood": {"auroc": {"token": {score: est}}, "auroc_ci": {"token": {score: iv}}}}

    close = ood_score_sentence(
        "MI of bayes", ev("mi", 0.579, 0.56, 0.60), "mi", "baseline", ev("entropy", 0.575, 0.555, 0.595), "entropy"
    )
    assert "no significant difference between MI of bayes (0.579 [0.560, 0.600])" in close and "beats" not in close
    far = ood_score_sentence(
        "MI of bayes", ev("mi", 0.45, 0.43, 0.47), "mi", "baseline", ev("entropy", 0.62, 0.60, 0.64), "entropy"
    )
    assert "MI of bayes (0.450 [0.430, 0.470]) worse than baseline" in far and "MI of bayes's is below chance" in far
    old = ood_score_sentence(
        "a", {"ood": {"auroc": {"token": {"mi": 0.6}}}}, "mi", "b", ev("entropy", 0.5, 0.4, 0.6), "entropy"
    )
    assert "no intervals, so no verdict" in old


def test_best_values_are_marked_only_where_the_intervals_separate_them():
    rows = [{"variant": "a", "perplexity": 10.0, "ece": 0.010}, {"variant": "b", "perplexity": 12.0, "ece": 0.011}]
    cis = {
        "a": {
            "perplexity": Interval(10.0, 9.5, 10.5, 0.2, 3, "t"),
            "ece": Interval(0.010, 0.008, 0.012, 0.001, 3, "t"),
        },
        "b": {
            "perplexity": Interval(12.0, 11.5, 12.5, 0.2, 3, "t"),
            "ece": Interval(0.011, 0.009, 0.013, 0.001, 3, "t"),
        },
    }
    best = best_cells(rows, cis)
    assert best == {("a", "perplexity")}  # the ECEs overlap: no best is claimed
    assert "| a | **10.0000 ± 0.5000** | 0.0100 ± 0.0020 |" in markdown_table(
        rows, ["variant", "perplexity", "ece"], cis, best=best
    )
    assert best_cells(rows, {}) == set()  # no intervals, no claim
