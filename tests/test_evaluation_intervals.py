"""gptv eval's intervals: every headline figure gets a seeded block-bootstrap interval beside it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_overrides

from gptvariants import metrics as M
from gptvariants.apps.cli.main import build_parser
from gptvariants.common.errors import InputError
from gptvariants.core.config import load_config
from gptvariants.evaluate import evaluation as E
from gptvariants.evaluate.bootstrap import one_sample_counts
from gptvariants.evaluate.result import format_result, headline, headline_intervals
from gptvariants.intervals import BlockBootstrap
from gptvariants.train.loop import train


@pytest.fixture(scope="module")
def sig_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("intervals") / "sig"
    train(load_config("sig", None, tiny_overrides(tiny_data, out, max_iters=10, eval_interval=1000)))
    return out


@pytest.fixture(scope="module")
def evaluated(sig_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "val.json"
    kw = dict(num_samples=0, ood="synthetic?shift=1.0&tokens=2000", resamples=40, block=16)
    return E.evaluate(sig_run, tiny_data, out=out, **kw), kw


def test_every_headline_figure_has_an_interval(evaluated):
    r, _ = evaluated
    cis, h = headline_intervals(r), headline(r)
    want = {"perplexity", "nats_per_token", "ece", "brier", "accuracy", "auroc_entropy", "set_f1"}
    want |= {f"aurc_{k}" for k in r["selective"]["aurc"]}
    want |= {f"ood_auroc_{k}" for k in r["ood"]["auroc"]["token"]} | {"ood_auroc_seq_entropy", "ood_fpr95_seq_entropy"}
    assert want <= set(cis)
    for name, iv in cis.items():
        assert iv.estimate == pytest.approx(h[name]), name
        assert iv.lo <= iv.hi and iv.se >= 0 and iv.n == 40, name
        assert iv.lo - 2 * iv.se - 1e-9 <= iv.estimate <= iv.hi + 2 * iv.se + 1e-9, name
    # perplexity = exp(nats/token), so its percentile interval is the exponential of the other's
    p = r["perplexity"]
    assert p["perplexity_ci"]["lo"] == pytest.approx(math.exp(p["nats_per_token_ci"]["lo"]))
    assert r["intervals"]["block_tokens"] == 16 and r["intervals"]["resamples"] == 40
    assert r["speed"]["bootstrap_seconds"] > 0
    assert "fpr95_ci" in r["ood"] and set(r["ood"]["fpr95_ci"]["token"]) == set(r["ood"]["auroc"]["token"])
    # PRR and AUGRC intervals: the eval's resamples and blocks, counted in its bootstrap time
    sel = r["selective"]
    assert set(sel["prr_ci"]) == set(sel["prr"]) and sel["prr_ci"]["entropy"]["n"] <= 40
    assert sel["bootstrap"] == "block bootstrap (40 resamples of 16-token blocks)"


def test_intervals_are_seeded_and_printed(evaluated, sig_run, tiny_data, tmp_path):
    r, kw = evaluated
    again = E.evaluate(sig_run, tiny_data, out=tmp_path / "again.json", **{**kw, "ood": None})
    assert again["calibration"]["ece_width_ci"] == r["calibration"]["ece_width_ci"]
    text = format_result(r)
    ppl = r["perplexity"]["perplexity_ci"]
    assert f"perplexity {ppl['estimate']:.4f} [{ppl['lo']:.4f}, {ppl['hi']:.4f}]" in text
    assert "16-token blocks" in text


def test_no_resamples_no_intervals(sig_run, tiny_data, tmp_path):
    r = E.evaluate(sig_run, tiny_data, out=tmp_path / "v.json", num_samples=0, resamples=0)
    assert r["intervals"] is None and headline_intervals(r) == {} and "ece_width_ci" not in r["calibration"]
    assert "prr_ci" not in r["selective"] and "vs_entropy" not in r["selective"]
    assert "[" not in format_result(r).splitlines()[1]
    with pytest.raises(InputError, match="resamples"):
        E.evaluate(sig_run, tiny_data, out=tmp_path / "w.json", num_samples=0, resamples=1)


def test_binned_rank_statistics_match_exact_per_token_weights():
    """The resamples' AUROC and AURC from quantile-binned, shifted counts against the exact statistic
    under each resample's per-token weights: they differ by far less than the interval's width."""
    rng = np.random.default_rng(0)
    n = 4000
    ar = np.zeros(n)  # correlated scores, as tokens of one window are
    for i in range(1, n):
        ar[i] = 0.8 * ar[i - 1] + rng.normal()
    wrong = rng.random(n) < 1 / (1 + np.exp(-ar))
    boot = BlockBootstrap(n, block=50, resamples=60, seed=2)
    exact_rows = np.stack([boot.weights(r) for r in range(boot.resamples)])
    full, resampled = one_sample_counts(boot, ar, wrong, bins=64)
    for binned, exact in (
        (M.auroc_from_counts, M.auroc_resampled(ar, wrong, exact_rows) - M.auroc(ar, wrong)),
        (M.aurc_from_counts, M.aurc_resampled(ar, wrong, exact_rows) - M.risk_coverage(ar, wrong).aurc),
    ):
        shifted = binned(*resampled) - binned(full[0][None], full[1][None])
        assert np.abs(shifted - exact).max() < 0.15 * exact.std()


def test_eval_and_experiment_take_the_resampling_options():
    parser = build_parser()
    args = parser.parse_args(["eval", "--ckpt", "R", "--data", "D", "--resamples", "0", "--bootstrap-block", "8"])
    assert (args.resamples, args.bootstrap_block) == (0, 8)
    args = build_parser().parse_args(["experiment", "--out", "O", "--seeds", "3", "--resamples", "50"])
    assert (args.seeds, args.resamples) == ("3", 50)
