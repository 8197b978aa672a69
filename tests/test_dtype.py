"""Reduced-precision prediction (``Prediction.dtype``): every variant's predictive in bf16 and int8
stays within a stated distance of fp32, is read out in fp32, leaves the fp32 model untouched, and
every front end (sample, eval, serve, lm-eval, the API) carries the option."""

import pytest
import torch

from gptvariants.apps.api import LanguageModel
from gptvariants.apps.cli.main import build_parser
from gptvariants.apps.cli.prediction import prediction_of
from gptvariants.apps.harness import lm_eval_argv
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.core.objectives import EntmaxLoss
from gptvariants.core.variants import REGISTRY
from gptvariants.data.tokenizers import CharTokenizer
from gptvariants.decode.generate import generate
from gptvariants.predict.methods import Run
from gptvariants.predict.prediction import Prediction, build_predictor, from_bayes_mode

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40)
# bf16 keeps 8 bits of mantissa: a tiny model's log-probs (|log p| ~ 4) move by ~1e-2
BF16_ATOL = 0.05


def run_of(variant: str, **kw) -> Run:
    torch.manual_seed(0)
    cfg = load_config(variant, overrides={**SHAPE, **kw})
    return Run(None, GPT(cfg.model, cfg.objective).eval(), cfg)


def test_dtype_is_checked_on_creation():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, int8, got 'int4'"):
        Prediction(dtype="int4")


@pytest.mark.parametrize("variant", list(REGISTRY))
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_every_variant_predicts_in_reduced_precision_close_to_fp32(variant, dtype):
    run = run_of(variant, output_bias=True)
    x = torch.randint(0, SHAPE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, 1)
    ref = build_predictor([run], Prediction(mc_samples=0)).nll(x, y)
    low = build_predictor([run], Prediction(mc_samples=0, dtype=dtype))
    got = low.nll(x, y)
    assert got.dtype == torch.float32  # the readout is fp32 whatever the weights
    if isinstance(run.model.objective, EntmaxLoss):
        # a sparse p: a token at the support's edge moves between p ~ 1e-3 and eps = 1e-6, so its
        # log p moves by several nats while p itself moves by ~1e-3; compare p
        got, ref = got.neg().exp(), ref.neg().exp()
    assert (got - ref).abs().max() < BF16_ATOL, (got - ref).abs().max()
    assert not torch.equal(got, ref)  # it did run in another precision
    # the fp32 model is untouched and the cast is made once per run
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    again = build_predictor([run], Prediction(mc_samples=0, dtype=dtype))
    assert again.model is low.model is run.casts[dtype]
    if dtype == "bfloat16":
        assert low.model.transformer.wte.weight.dtype == torch.bfloat16
        draws = low.draws(low.encode(x[:1]))  # the head's draws and the mixture stay fp32
        assert draws.log_p.dtype == torch.float32 and draws.entropy().dtype == torch.float32
        # the head keeps fp32 weights: its logits are not rounded to bf16 (where ties flip argmax)
        assert low.model.head.mean_weight.dtype == torch.float32
        z = low.model.head.logits(low.encode(x[:1])[0][0])
        assert (z.bfloat16().float() != z).any()


def test_bayesian_draws_and_mutual_information_in_bf16():
    run = run_of("bayes", posterior_sigma_init=0.05)
    x = torch.randint(0, SHAPE["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(2))
    p32 = build_predictor([run], Prediction(mc_samples=64, seed=0))
    p16 = build_predictor([run], Prediction(mc_samples=64, seed=0, dtype="bfloat16"))
    d32, d16 = (p.draws([h[0] for h in p.encode(x)]) for p in (p32, p16))
    assert d16.mutual_information().dtype == torch.float32
    assert torch.allclose(d16.mutual_information(), d32.mutual_information(), atol=2e-3)
    assert (d16.log_p - d32.log_p).abs().max() < BF16_ATOL


def test_greedy_decoding_in_bf16_with_a_kv_cache():
    run = run_of("baseline")
    prompts = [[1, 2, 3], [4, 5]]
    ref = generate(run.model, prompts, 8, temperature=0.0)
    got = generate(run.model, prompts, 8, temperature=0.0, prediction=Prediction(dtype="bfloat16"))
    assert [len(g) for g in got] == [len(r) for r in ref]
    # also through the API, whose runs keep their fp32 model
    lm = LanguageModel(run.model, run.config, CharTokenizer("abcdefghijklmnopqrstuvwxyz .,;:!?'-0123456789"))
    lm.prediction = Prediction(dtype="bfloat16")
    assert lm.predictor().model.transformer.wte.weight.dtype == torch.bfloat16
    assert lm.model.transformer.wte.weight.dtype == torch.float32


def test_int8_refuses_a_gpu_device(monkeypatch):
    run = run_of("baseline")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(ValueError, match="int8 .* runs on the CPU only"):
        build_predictor([run], Prediction(dtype="int8"))


@pytest.mark.parametrize(
    "command", [["sample", "--ckpt=RUN"], ["eval", "--ckpt=RUN", "--data=D"], ["serve", "RUN"], ["lm-eval", "RUN"]]
)
def test_every_front_end_takes_dtype(command):
    args = build_parser().parse_args([*command, *(["--tasks", "t"] if command[0] == "lm-eval" else []), "--dtype=int8"])
    assert args.dtype == "int8"
    if command[0] == "sample":
        assert prediction_of(args).dtype == "int8"


def test_calibrate_fits_in_fp32_only():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["calibrate", "RUN", "--dtype=bfloat16"])


def test_lm_eval_passes_dtype_as_a_model_arg():
    argv = lm_eval_argv("RUN", "t", dtype="bfloat16")
    assert "run=RUN,dtype=bfloat16" in argv
    assert "dtype" not in ",".join(lm_eval_argv("RUN", "t"))
    assert from_bayes_mode("mean", dtype="bfloat16") == Prediction(mc_samples=0, dtype="bfloat16")
