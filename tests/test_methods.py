"""Uncertainty methods on cases with a known answer: temperature, ensembles of runs and of heads,
MC dropout and the last-layer Laplace posterior."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from gptvariants.apps.api import load
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.tokenizers import CharTokenizer
from gptvariants.predict.calibration import fit_temperature, golden_section, save_temperature
from gptvariants.predict.laplace import LaplacePosterior, curvature
from gptvariants.predict.methods import Run, load_runs
from gptvariants.predict.prediction import Prediction, build_predictor
from gptvariants.predict.predictive import Predictor
from gptvariants.store.checkpoint import save_checkpoint
from gptvariants.store.run import CALIBRATION_FILE
from gptvariants.train.loop import train

CHARS = ["a", "b"]


def constant_run(folder, logits, variant="baseline", **kw):
    """A 2-token run whose logits are ``logits`` whatever the context: zero weights, bias = logits."""
    tok = CharTokenizer(CHARS)
    cfg = load_config(
        variant,
        overrides=dict(
            n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=2, output_bias=True, tie_weights=False, **kw
        ),
    )
    model = GPT(cfg.model, cfg.objective)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(logits))
    save_checkpoint(folder, model, {"step": 1, "config": cfg.to_dict()})
    tok.save(folder)
    return folder


def test_golden_section_finds_the_minimum():
    assert golden_section(lambda x: (x - 0.3) ** 2, -2, 5) == pytest.approx(0.3, abs=1e-6)


def test_temperature_of_a_constant_model_is_in_closed_form(tmp_path):
    # z = (a, 0) everywhere and token 'a' a fraction q of the targets: NLL(T) is minimal where
    # sigmoid(a / T) = q, i.e. T = a / logit(q)
    a = 3.0
    run = load_runs(constant_run(tmp_path / "run", [a, 0.0]))[0]
    rng = np.random.default_rng(0)
    tokens = (rng.random(4000) > 0.7).astype(np.int64)  # ~70 % 'a' (id 0)
    fit = fit_temperature(run, tokens, stride=8)
    half = len(tokens) // 2
    q = float((tokens[1:half] == 0).mean())  # the fitted half's targets
    assert fit["temperature"] == pytest.approx(a / math.log(q / (1 - q)), rel=1e-3)
    assert fit["after"]["nll"] < fit["before"]["nll"] and fit["after"]["ece"] < fit["before"]["ece"]
    save_temperature(run.dir, fit)
    assert json.loads((run.dir / CALIBRATION_FILE).read_text())["temperature"] == {"default": fit["temperature"]}
    # every consumer applies it unless told not to
    p = torch.softmax(torch.tensor([a, 0.0]) / fit["temperature"], 0)[0].item()
    assert load(run.dir).score("aab")[0].prob == pytest.approx(p, rel=1e-5)
    assert load(run.dir, temperature=False).score("aab")[0].prob == pytest.approx(1 / (1 + math.exp(-a)), rel=1e-5)


def test_ensemble_of_runs_averages_in_probability(tmp_path):
    a = constant_run(tmp_path / "a", [2.0, 0.0])
    b = constant_run(tmp_path / "b", [-1.0, 0.0])
    pa, pb = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    lm = load(f"{a},{b}")
    rec = lm.score("ab", top_n=2)[0]  # P('b' | 'a')
    assert rec.prob == pytest.approx(1 - (pa + pb) / 2, rel=1e-6)
    assert rec.draws == pytest.approx([1 - pa, 1 - pb], rel=1e-6)
    # MI = H(mean) - mean H, by hand
    h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)  # noqa: E731
    assert rec.mi == pytest.approx(h((pa + pb) / 2) - (h(pa) + h(pb)) / 2, rel=1e-5)
    folder = tmp_path  # a folder of run folders is the same ensemble
    assert load(folder).score("ab")[0].prob == pytest.approx(rec.prob, rel=1e-6)


def test_head_ensemble_loss_and_predictive(tiny_data, tmp_path):
    cfg = load_config("ensemble", overrides=dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30))
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective)
    x = torch.randint(0, 30, (2, 8))
    y = torch.roll(x, -1, 1)
    h = model.transformer(x)
    flat, yf = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    # split training: position n trains member n mod 4 only
    loss, _ = model.head.loss(h, model.objective, y, None)
    by_position = torch.stack(
        [
            torch.nn.functional.cross_entropy(model.head.members[n % 4].logits(flat[n : n + 1])[0], yf[n : n + 1])
            for n in range(len(yf))
        ]
    )
    assert loss.item() == pytest.approx(by_position.mean().item(), rel=1e-5)
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in model.head.members)
    # every member on every position
    model.head.split = False
    loss, _ = model.head.loss(h, model.objective, y, None)
    per_head = [torch.nn.functional.cross_entropy(m.logits(flat)[0], yf) for m in model.head.members]
    assert len(per_head) == 4 and loss.item() == pytest.approx(sum(per_head).item() / 4, rel=1e-5)
    draws = Predictor([model]).draws([h.reshape(-1, h.shape[-1])])
    mean = torch.stack([torch.softmax(m.logits(h.reshape(-1, h.shape[-1]))[0], -1) for m in model.head.members]).mean(0)
    torch.testing.assert_close(draws.probs, mean, rtol=1e-5, atol=1e-6)
    assert draws.samples == 4 and (draws.mutual_information() > 0).all()  # independently initialised heads differ


def test_mc_dropout_is_the_mean_of_stochastic_passes(tiny_data, tmp_path):
    cfg = load_config(
        "baseline-dropout",
        overrides=tiny_overrides(tiny_data, tmp_path / "d", max_iters=5, eval_iters=1, eval_interval=5),
    )
    run = Run(tmp_path / "d", train(cfg).model.eval(), cfg)
    assert cfg.model.dropout == 0.1
    p = build_predictor([run], Prediction("mc_dropout", 6, seed=0))
    x = torch.randint(0, 60, (1, 16))
    hs = p.encode(x)
    assert len(hs) == 6 and not torch.equal(hs[0], hs[1])  # dropout was active
    assert not run.model.transformer.training  # and is off again
    draws = p.draws([h[0] for h in hs])
    by_hand = torch.stack([torch.softmax(run.model.logits(h[0]), -1) for h in hs]).mean(0)
    torch.testing.assert_close(draws.probs, by_hand, rtol=1e-5, atol=1e-6)
    assert (draws.mutual_information() > 0).all()
    again = build_predictor([run], Prediction("mc_dropout", 6, seed=0)).encode(x)  # seeded: reproducible
    assert all(torch.equal(a, b) for a, b in zip(hs, again))
    plain = Run(run.dir, run.model, load_config("baseline"))
    with pytest.raises(ValueError, match="dropout > 0"):
        build_predictor([plain], Prediction("mc_dropout"))


def _dense_ggn(h, p, bias):
    """sum_n (diag p_n - p_n p_n^T) (x) x_n x_n^T, the exact last-layer GGN, weights ordered (v, c)."""
    x = torch.cat([h, torch.ones(len(h), 1)], 1) if bias else h
    return sum(
        torch.kron(torch.diag(pn) - torch.outer(pn, pn), torch.outer(xn, xn)) for xn, pn in zip(x.double(), p.double())
    )


@pytest.mark.parametrize("kind", ["kfac", "diag"])
def test_laplace_statistics_and_logit_covariance_by_hand(tiny_data, tmp_path, kind):
    torch.manual_seed(0)
    cfg = load_config("baseline", overrides=dict(n_layer=1, n_head=1, n_embd=4, block_size=6, vocab_size=3))
    model = GPT(cfg.model, cfg.objective).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    tokens = np.random.default_rng(0).integers(0, 3, 200)
    stats, n = curvature(model, tokens, kind, budget=60)
    hs, ps = [], []
    from gptvariants.predict.laplace import spread_windows
    from gptvariants.predict.predictive import score_windows

    for _, _, d in score_windows(Predictor([model], samples=0), tokens, spread_windows(len(tokens), 6, 60)):
        hs.append(d.hidden[0]), ps.append(d.probs)
    h, p = torch.cat(hs), torch.cat(ps)
    assert n == len(h) == 60
    ggn = _dense_ggn(h, p, bias=False)
    if kind == "diag":
        torch.testing.assert_close(stats["H"].reshape(-1), torch.diagonal(ggn), rtol=1e-5, atol=1e-7)
        precision = torch.diag(torch.diagonal(ggn) + 2.0)
    else:
        A, G = h.double().t() @ h.double(), torch.diag(p.double().sum(0)) - p.double().t() @ p.double()
        torch.testing.assert_close(stats["A"], A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats["G"], G, rtol=1e-5, atol=1e-6)
        precision = n * torch.kron(G / n, A / n) + 2.0 * torch.eye(12, dtype=torch.float64)
    post = LaplacePosterior.from_statistics(kind, stats, n, prior_precision=2.0)
    # the logits of one position: z = W h, Cov(z) = J P^-1 J^T with J = I (x) h^T
    x = h[:1]
    J = torch.kron(torch.eye(3, dtype=torch.float64), x.double())
    cov = J @ torch.linalg.inv(precision) @ J.t()
    z = post.sampler(model)(x, 40_000, torch.Generator().manual_seed(0))[:, 0].double()
    torch.testing.assert_close(
        z.mean(0), model.logits(x)[0].double(), atol=3 * cov.diagonal().max().sqrt() / 200, rtol=0
    )
    torch.testing.assert_close(torch.cov(z.t()), cov, atol=0.03 * cov.diagonal().max(), rtol=0)


def test_laplace_refuses_what_it_cannot_fit(tmp_path):
    from gptvariants.predict.laplace import fit_laplace

    run = load_runs(constant_run(tmp_path / "s", [0.0, 0.0], variant="sig"))[0]
    with pytest.raises(ValueError, match="softmax heads"):
        fit_laplace(run.dir, run.model, np.zeros(100, dtype=np.int64), np.zeros(100, dtype=np.int64))
    with pytest.raises(ValueError, match="gptv laplace"):
        build_predictor([run], Prediction("laplace"))


def test_temperature_can_be_fitted_to_the_top1_ece(tmp_path):
    run = load_runs(constant_run(tmp_path / "run", [3.0, 0.0]))[0]
    tokens = (np.random.default_rng(1).random(4000) > 0.7).astype(np.int64)
    by_nll = fit_temperature(run, tokens, stride=8)
    by_ece = fit_temperature(run, tokens, stride=8, fit="ece")
    assert by_ece["fit"] == "ece" and by_ece["after"]["ece"] <= by_nll["after"]["ece"] + 1e-3
    # two classes, one constant prediction: top-1 ECE is |sigmoid(a / T) - q|, zero at the same T as the NLL's
    assert by_ece["temperature"] == pytest.approx(by_nll["temperature"], rel=0.02)
    with pytest.raises(ValueError, match="fit must be"):
        fit_temperature(run, tokens, fit="brier")


def test_spread_windows_score_their_own_targets():
    """Windows spread over a stream (the Laplace fit's) yield each window's own targets."""
    from gptvariants.predict.laplace import spread_windows
    from gptvariants.predict.predictive import score_windows

    cfg = load_config("baseline", overrides=dict(n_layer=1, n_head=1, n_embd=8, block_size=6, vocab_size=11))
    model = GPT(cfg.model, cfg.objective).eval()
    tokens = np.arange(200) % 11
    windows = spread_windows(len(tokens), 6, 60)
    ys = torch.cat([y for _, y, _ in score_windows(Predictor([model]), tokens, windows, batch=4)])
    expected = np.concatenate([tokens[s:e] for _, e, s in windows])
    assert ys.tolist() == expected.tolist() and len(windows) == 10


def test_laplace_probit_variance_is_the_diagonal_of_the_logit_covariance():
    torch.manual_seed(0)
    cfg = load_config("baseline", overrides=dict(n_layer=1, n_head=1, n_embd=4, block_size=6, vocab_size=3))
    model = GPT(cfg.model, cfg.objective).eval()
    tokens = np.random.default_rng(0).integers(0, 3, 200)
    stats, n = curvature(model, tokens, "kfac", budget=60)
    post = LaplacePosterior.from_statistics("kfac", stats, n, prior_precision=2.0)
    h = torch.randn(5, 4)
    sampler = post.sampler(model)
    z = sampler(h, 40_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampler.variance(h), z.var(0), rtol=0.05, atol=1e-4)
    # probit: softmax(z / sqrt(1 + pi/8 var)), by hand
    by_hand = torch.log_softmax(model.logits(h) / (1 + math.pi / 8 * sampler.variance(h)).sqrt(), -1)
    torch.testing.assert_close(sampler.probit_log_probs(h), by_hand)
