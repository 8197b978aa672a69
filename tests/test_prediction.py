"""One description of a prediction (predict.prediction): its checks, the draws every method takes
from it, the methods that replaced generation's bayes_mode, and the snapshot ensemble."""

import math

import pytest
import torch

from gptvariants.apps.api import LanguageModel
from gptvariants.apps.cli.main import build_parser
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.tokenizers import CharTokenizer
from gptvariants.decode.generate import generate
from gptvariants.predict.methods import Run, load_runs
from gptvariants.predict.prediction import Prediction, build_predictor, from_bayes_mode
from gptvariants.store.checkpoint import CheckpointError, save_checkpoint

SHAPE = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12)


def model_of(variant: str, **kw) -> tuple[GPT, object]:
    torch.manual_seed(0)
    cfg = load_config(variant, overrides={**SHAPE, **kw})
    return GPT(cfg.model, cfg.objective).eval(), cfg


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(mc_samples=-1), "mc_samples must be an integer >= 0 (0 = the point estimate"),
        (dict(mc_samples=True), "mc_samples must be an integer >= 0"),
        (dict(mc_samples=2.5), "mc_samples must be an integer >= 0"),
        (dict(method="mc-dropout"), "unknown method 'mc-dropout'; known: default, sequence, mc_dropout"),
        (dict(seed=-3), "seed must be an integer >= 0"),
    ],
)
def test_a_prediction_is_checked_once_on_creation(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Prediction(**fields)
    assert Prediction(mc_samples=0).point and not Prediction().point


def test_mc_dropout_takes_the_runs_draws_and_zero_means_no_dropout():
    """Before: ``samples or 8`` ran 8 passes for mc_samples=0 and ignored the run's mc_samples."""
    model, cfg = model_of("baseline-dropout", mc_samples=3)
    run = Run(None, model, cfg)
    x = torch.randint(0, 12, (1, 8))
    assert len(build_predictor([run], Prediction("mc_dropout")).encode(x)) == 3  # the run's mc_samples
    assert len(build_predictor([run], Prediction("mc_dropout", 5)).encode(x)) == 5
    point = build_predictor([run], Prediction("mc_dropout", 0))
    (h,) = point.encode(x)
    assert point.n_draws == 1 and torch.equal(h, model.transformer(x))  # dropout off: the trained network


def test_bayes_modes_are_methods_and_draw_counts():
    model, cfg = model_of("bayes", mc_samples=5)
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(0.5)))
    run = Run(None, model, cfg)
    assert build_predictor([run], from_bayes_mode("step")).n_draws == 5  # the run's mc_samples
    assert build_predictor([run], from_bayes_mode("mean")).n_draws == 1
    assert from_bayes_mode("mean") == Prediction(mc_samples=0)
    assert from_bayes_mode("sequence", mc_samples=None, seed=2) == Prediction("sequence", seed=2)
    with pytest.raises(ValueError, match="not for scoring text"):
        build_predictor([run], Prediction("sequence"))
    sequence = Prediction("sequence", seed=4)
    one = generate(model, [[1, 2], [3]], 6, prediction=sequence, seed=4, return_details=True)
    again = generate(model, [[1, 2], [3]], 6, prediction=sequence, seed=4, return_details=True)
    assert [g.tokens for g in one] == [g.tokens for g in again] and one[0].mi is None  # one draw per row


def test_language_model_calls_name_method_and_draws_like_every_front_end():
    tok = CharTokenizer(list("abcdefghijk"))
    model, cfg = model_of("bayes", vocab_size=tok.vocab_size)
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(0.5)))
    lm = LanguageModel(model, cfg, tok)
    assert all(r.mi is None for r in lm.score("abcab", mc_samples=0))
    assert all(r.mi is not None for r in lm.score("abcab", mc_samples=3, seed=0))
    with pytest.raises(ValueError, match="not for scoring text"):
        lm.score("abc", method="sequence")
    a = lm.generate("ab", 5, method="sequence", seed=1)
    assert a == lm.generate("ab", 5, method="sequence", seed=1) and len(a) == 5
    with pytest.raises(ValueError, match="mc_samples must be an integer >= 0"):
        lm.generate("ab", 5, mc_samples=-2)


@pytest.mark.parametrize(
    "command", [["sample", "--ckpt", "R"], ["eval", "--ckpt", "R", "--data", "D"], ["calibrate", "R"]]
)
def test_every_command_takes_mc_samples_zero(command):
    args = build_parser().parse_args([*command, "--mc-samples", "0"])
    assert args.mc_samples == 0
    generation_only = build_parser().parse_args(["sample", "--ckpt", "R", "--method", "sequence"])
    assert generation_only.method == "sequence"
    if command[0] != "sample":
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--method", "sequence"])


def constant(logits: list[float]) -> tuple[GPT, object]:
    """A 2-token model whose logits are ``logits`` whatever the context."""
    cfg = load_config(
        "baseline",
        overrides=dict(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=2, output_bias=True, tie_weights=False),
    )
    model = GPT(cfg.model, cfg.objective)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(logits))
    return model, cfg


def test_snapshot_ensemble_averages_the_kept_checkpoints(tmp_path):
    biases = [[2.0, 0.0], [-1.0, 0.0], [0.5, 0.0]]
    for step, b in enumerate(biases, 1):
        model, cfg = constant(b)
        save_checkpoint(tmp_path, model, {"step": step, "config": cfg.to_dict()}, keep=3)
    runs = load_runs(tmp_path)
    x = torch.zeros(1, 4, dtype=torch.long)
    snapshot = build_predictor(runs, Prediction("snapshot"))
    draws = snapshot.draws([h[0] for h in snapshot.encode(x)])  # one backbone pass per checkpoint
    by_hand = torch.stack([torch.softmax(torch.tensor(b), 0) for b in biases]).mean(0)
    torch.testing.assert_close(draws.probs, by_hand.expand(4, 2), rtol=1e-6, atol=1e-7)
    assert draws.samples == 3 and (draws.mutual_information() > 0).all()
    default = build_predictor(runs, Prediction())
    latest = default.draws([h[0] for h in default.encode(x)]).probs  # the default: the current checkpoint only
    torch.testing.assert_close(latest, torch.softmax(torch.tensor(biases[-1]), 0).expand(4, 2))
    (tmp_path / "ckpt-00000001" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="snapshot .*ckpt-00000001 is unusable"):
        build_predictor(runs, Prediction("snapshot"))
    alone = tmp_path / "alone"
    model, cfg = constant([0.0, 0.0])
    save_checkpoint(alone, model, {"step": 1, "config": cfg.to_dict()})
    with pytest.raises(ValueError, match="at least 2 kept checkpoints; .* has 1"):
        build_predictor(load_runs(alone), Prediction("snapshot"))
