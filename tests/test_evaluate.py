"""gptv eval on tiny trained runs: windowed scoring against direct computation, every section, bad input."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SHAPE

from gptvariants.apps.cli.parsers import evaluate as evaluate_parser
from gptvariants.core.config import load_config
from gptvariants.data.dataset import TokenDataset
from gptvariants.data.prepare import prepare
from gptvariants.evaluate import evaluation as E
from gptvariants.evaluate import report as R
from gptvariants.evaluate import scoring as S
from gptvariants.evaluate.result import EvalResult, format_result, headline, scalars
from gptvariants.predict.predictive import Predictor
from gptvariants.store.checkpoint import load_run
from gptvariants.train.loop import train

TINY = {**TINY_SHAPE, "eval_iters": 1, "eval_interval": 1000, "warmup_iters": 2}  # conftest's shape


def _train(data, out, variant, steps=20, **extra):
    cfg = load_config(variant, None, {**TINY, "data": str(data), "out_dir": str(out), "max_iters": steps, **extra})
    train(cfg)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    prepare("synthetic:tiny", root / "data")
    runs = {v: _train(root / "data", root / v, v) for v in ("baseline", "bayes", "sig")}
    return root, runs


def test_one_window_equals_full_context_for_any_stride(tiny):
    root, runs = tiny
    model, cfg = load_run(runs["baseline"])
    tokens = np.asarray(TokenDataset(root / "data").split("val")[: cfg.model.block_size + 1])
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        direct = Predictor([model]).nll(x[None, :-1], x[None, 1:]).sum().item()
    for stride in (1, 7, cfg.model.block_size):
        nll = S.score(model, tokens, stride=stride)["tokens"]["nll"]
        assert len(nll) == len(tokens) - 1
        assert nll.astype(np.float64).sum() == pytest.approx(direct, rel=1e-5)


def test_sliding_windows_give_each_token_its_own_context(tiny):
    # stride 1: token t is predicted from tokens[max(0, t - block) : t], computed here one by one
    root, runs = tiny
    model, cfg = load_run(runs["baseline"])
    T = cfg.model.block_size
    tokens = np.asarray(TokenDataset(root / "data").split("val")[: T + 20])
    nll = S.score(model, tokens, stride=1, batch=3)["tokens"]["nll"]
    with torch.no_grad():
        for t in (1, T, T + 1, len(tokens) - 1):
            ctx = torch.from_numpy(tokens[max(0, t - T) : t].astype(np.int64))[None]
            p = torch.softmax(model.logits(model.transformer(ctx)[0, -1]), -1)  # direct: softmax of the last logits
            ref = -math.log(p[int(tokens[t])].item())
            assert nll[t - 1] == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_bayesian_head_without_variance_has_no_mutual_information(tiny):
    root, runs = tiny
    model, _ = load_run(runs["bayes"])
    tokens = np.asarray(TokenDataset(root / "data").split("val")[:200])
    with torch.no_grad():
        model.head.weight_rho.fill_(-30.0)  # sigma = softplus(-30) ~ 1e-13
    sharp = S.score(Predictor([model], samples=4), tokens, stride=16)
    assert np.abs(sharp["tokens"]["mutual_information"]).max() < 1e-6
    np.testing.assert_allclose(sharp["tokens"]["nll"], sharp["point"]["nll"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.head.weight_rho.fill_(0.0)  # sigma = log 2: the draws disagree
    wide = S.score(Predictor([model], samples=4), tokens, stride=16)
    assert wide["tokens"]["mutual_information"].mean() > 1e-3


def test_eval_writes_every_section(tiny, tmp_path):
    root, runs = tiny
    out = tmp_path / "bayes.json"
    r = E.evaluate(runs["bayes"], root / "data", out=out, num_samples=6, max_new_tokens=8, seed=3)
    n_val = len(TokenDataset(root / "data").split("val"))
    p = r["perplexity"]
    assert p["tokens_scored"] == n_val - 1 and p["stride"] == TINY["block_size"] // 2
    assert p["perplexity"] == pytest.approx(math.exp(p["nats_per_token"]))
    assert p["bits_per_byte"] > 0 and p["word_perplexity"] > 0
    assert r["posterior_mean"]["perplexity"]["perplexity"] > 1
    assert 0 <= r["calibration"]["ece_width"] <= 1 and 0 <= r["calibration"]["brier"] <= 2
    assert r["uncertainty"]["mean_mutual_information"] >= 0 and 0 <= r["uncertainty"]["auroc_entropy"] <= 1
    assert r["sets"]["reference"].startswith("exact support") and len(r["sets"]["curve"]) == len(S.TAUS)
    g = r["ground_truth"]
    assert g["kl_true_model"] > 0 and g["true_nats_per_token"] < p["nats_per_token"]
    d = r["diversity"]
    assert d["num_samples"] == 6 and d["mean_new_tokens"] == 8 and 0 <= d["distinct_4"] <= 1
    assert r["speed"]["scoring_tokens_per_s"] > 0 and r["speed"]["generation_tokens_per_s"] > 0
    assert json.loads(out.read_text())["variant"] == "bayes"
    assert out.with_suffix(".reliability.png").read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(s["new_tokens"] == 8 for s in samples)


def test_sigmoid_eval_reports_raw_bce_and_uses_cached_sets(tiny, tmp_path):
    from gptvariants.targets import build_targets

    root, runs = tiny
    build_targets(root / "data", "oracle", root / "data" / "targets" / "oracle", progress=False)
    r = E.evaluate(runs["sig"], root / "data", out=tmp_path / "sig.json", sets="oracle", num_samples=0)
    assert r["perplexity"]["raw_bce_per_token"] > 0 and r["perplexity"]["raw_bce_targets"] == "true token only"
    assert r["sets"]["reference"] == "targets/oracle" and r["sets"]["mean_ref_size"] > 1
    assert r["diversity"] is None


def test_eval_cli(tiny, tmp_path, capsys):
    root, runs = tiny
    parser = argparse.ArgumentParser()
    evaluate_parser.register_cli(parser.add_subparsers())
    out = tmp_path / "cli.json"
    args = parser.parse_args(
        [
            "eval",
            "--ckpt",
            str(runs["baseline"]),
            "--data",
            str(root / "data"),
            "--out",
            str(out),
            "--stride",
            "32",
            "--num-samples",
            "3",
            "--max-new-tokens",
            "4",
        ]
    )
    assert args.func(args) == 0
    assert "perplexity" in capsys.readouterr().out
    assert json.loads(out.read_text())["perplexity"]["stride"] == 32


def test_tokenizer_mismatch_is_refused(tiny, tmp_path):
    root, runs = tiny
    prepare("synthetic:tiny", tmp_path / "other", seed=7)  # same size, other words
    with pytest.raises(ValueError, match="another tokenizer"):
        E.evaluate(runs["baseline"], tmp_path / "other", num_samples=0)


def test_short_split_and_sigmoid_sets_without_references(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60)))
    prepare(f"text:{text}", tmp_path / "wide", val_fraction=0.5)
    prepare(f"text:{text}", tmp_path / "short", val_fraction=0.005)
    run = _train(tmp_path / "wide", tmp_path / "sig", "sig", steps=2)
    with pytest.raises(ValueError, match="fewer than one window"):
        E.evaluate(run, tmp_path / "short", num_samples=0)
    with pytest.raises(ValueError, match="gptv targets"):
        E.evaluate(run, tmp_path / "wide", num_samples=0)
    r = E.evaluate(run, tmp_path / "wide", sets="none", num_samples=0)
    assert r["sets"] == {"skipped": "--sets none"} and r["ground_truth"] is None


def test_bayesian_set_metrics_use_the_monte_carlo_predictive(tiny):
    # a set {v : q_v >= tau} is non-empty exactly when max_v q_v >= tau; with q the MC predictive this
    # matches the scored confidence token by token, and the posterior mean would disagree somewhere
    root, runs = tiny
    model, _ = load_run(runs["bayes"])
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(1.0)))  # sigma = 1: the mixture is much flatter
    tokens = np.asarray(TokenDataset(root / "data").split("val")[:300])
    reference = np.full((len(tokens), 1), np.iinfo(np.uint16).max, dtype=np.uint16)
    reference[:-1, 0] = tokens[1:]
    first = S.score(Predictor([model], samples=16, seed=0), tokens, stride=16, reference=reference)
    tau = float(np.median(first["point"]["confidence"]))  # half the point-estimate sets are empty
    r = S.score(Predictor([model], samples=16, seed=0), tokens, stride=16, reference=reference, tau=tau)
    t, point = r["tokens"], r["point"]
    nonempty = t["set_n_pred"] > 0
    np.testing.assert_array_equal(nonempty, t["confidence"] >= tau)
    assert (nonempty != (point["confidence"] >= tau)).any()


def test_eval_on_external_text_counts_unknown_characters(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60)))
    prepare(f"text:{text}", tmp_path / "data", val_fraction=0.5)
    run = _train(tmp_path / "data", tmp_path / "base", "baseline", steps=2)
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox €€ jumps ✓ over the lazy dog\n" * 8, encoding="utf-8")
    r = E.evaluate(run, text=str(other), num_samples=0, out=tmp_path / "o.json")
    unk = r["source"]["unknown"]
    assert unk["count"] == 8 * 3 and unk["distinct"] == 2 and unk["examples"] == {"€": 16, "✓": 8}
    # the char tokenizer has no end-of-text token: every known character but the first is scored
    assert r["perplexity"]["tokens_scored"] == len(other.read_text()) - 24 - 1
    assert r["sets"] == {"skipped": "external text: no reference sets"}
    assert r["perplexity"]["bits_per_byte"] > 0 and r["data"] is None
    with pytest.raises(ValueError, match="either"):
        E.evaluate(run, tmp_path / "data", text=str(other))


def test_ood_against_a_shifted_synthetic_language(tiny, tmp_path):
    root, runs = tiny
    r = E.evaluate(
        runs["bayes"], root / "data", ood="synthetic?shift=1.0&tokens=3000", num_samples=0, out=tmp_path / "ood.json"
    )
    o = r["ood"]
    assert set(o["auroc"]["token"]) == {
        "surprisal",
        "entropy",
        "max_prob",
        "mi",
        "expected_entropy",
        "energy",
        "max_logit",
    }
    assert o["n_tokens"]["out"] == 3000 - 1 and o["n_tokens"]["in"] == r["perplexity"]["tokens_scored"]
    assert o["n_sequences"]["out"] == (3000 - 1) // 32
    # a completely new language is far more surprising to the trained model than its own
    assert o["mean"]["out"]["surprisal"] > o["mean"]["in"]["surprisal"] + 0.2
    assert o["auroc"]["token"]["surprisal"] > 0.7 and o["auroc"]["sequence"]["surprisal"] > 0.95
    assert 0 <= o["fpr95"]["sequence"]["surprisal"] < 0.5
    assert set(r["selective"]["aurc"]) == {"entropy", "max_prob", "mi", "expected_entropy", "energy", "max_logit"}
    baseline = E.evaluate(
        runs["baseline"], root / "data", ood=str(root / "data"), num_samples=0, out=tmp_path / "b.json"
    )
    assert set(baseline["ood"]["auroc"]["token"]) == {"surprisal", "entropy", "max_prob", "energy", "max_logit"}
    assert baseline["ood"]["auroc"]["token"]["surprisal"] == pytest.approx(0.5)  # the same text on both sides
    with pytest.raises(ValueError, match="shift"):
        E.evaluate(runs["bayes"], root / "data", ood="synthetic?strength=1", num_samples=0)


def test_eval_scalars_reach_the_runs_tensorboard(tmp_path, monkeypatch, tiny):
    root, _ = tiny
    import gptvariants.train.trainlog as TL

    written = []

    class Writer:
        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setattr(TL, "_tensorboard", lambda run_dir: Writer())
    run = _train(root / "data", tmp_path / "tb", "baseline", steps=4, tensorboard=True)
    written.clear()  # training's own records
    r = E.evaluate(
        run,
        root / "data",
        num_samples=0,
        out=tmp_path / "e.json",
        log_to_run=True,
        ood="synthetic?shift=1.0&tokens=2000",
    )
    tags = {t for t, _, s in written if s == 4}
    assert r["logged_to"] == [str(run / "tb")]
    assert {"eval-val/ece", "eval-val/perplexity", "eval-val/aurc_entropy", "eval-val/ood_auroc_entropy"} <= tags


# ----------------------------------------------------------------------------- the typed result and its headline


def test_the_headline_is_the_one_projection_of_an_eval(tiny, tmp_path):
    root, runs = tiny
    r = E.evaluate(runs["bayes"], root / "data", out=tmp_path / "b.json", num_samples=4, max_new_tokens=4)
    assert "token_metrics" not in r  # nothing registered: the JSON's keys are as before
    on_disk = json.loads((tmp_path / "b.json").read_text())
    ev = EvalResult.from_dict(on_disk)
    assert ev.perplexity.perplexity == r["perplexity"]["perplexity"] and ev.diversity.num_samples == 4
    h = headline(ev)
    assert h["ece"] == r["calibration"]["ece_width"] and h["kl_to_truth"] == r["ground_truth"]["kl_true_model"]
    assert h["mutual_information"] == r["uncertainty"]["mean_mutual_information"]
    assert h["draws"] == r["mc_samples"] and h["self_bleu"] == r["diversity"]["self_bleu"]
    logged = scalars(ev, "eval-val")
    assert logged["eval-val/ece"] == h["ece"] and "eval-val/steps" not in logged
    assert f"ECE {h['ece']:.4f}" in format_result(r) and format_result(r) == format_result(ev)


def test_a_registered_token_metric_reaches_result_headline_console_and_tables(tiny, tmp_path):
    """A new per-token metric is one registration: no other place changes."""
    root, runs = tiny

    @S.register_token_metric("top2_mass", header="Top-2 mass", fmt="{:.3f}")
    def top2_mass(draws, y):
        return draws.probs.topk(2, dim=-1).values.sum(-1)

    try:
        with pytest.raises(ValueError, match="already registered"):
            S.register_token_metric("top2_mass")(top2_mass)
        r = E.evaluate(runs["baseline"], root / "data", out=tmp_path / "t.json", num_samples=0)
        mass = r["token_metrics"]["top2_mass"]
        assert r["calibration"]["mean_confidence"] < mass <= 1.0  # the top-2 mass exceeds the top-1 confidence
        assert headline(r)["top2_mass"] == mass and scalars(r, "eval-val")["eval-val/top2_mass"] == mass
        assert f"top2_mass {mass:.4f}" in format_result(r)
        row = R.experiment_row("baseline", r, runs["baseline"], None)
        assert row["top2_mass"] == mass and list(row)[-3:] == ["top2_mass", "ms_per_step", "train_seconds"]
        assert "Top-2 mass" in R.experiment_table([row]) and f"{mass:.3f}" in R.experiment_table([row])
    finally:
        S.TOKEN_METRICS.pop("top2_mass", None)
