"""One description of a prediction, built once by every front end (eval, sample, serve, the
Python API, lm-eval, ``ckpt:`` teachers, calibrate) and turned into a ``Predictor`` here only.

    Prediction(method="default", mc_samples=None, temperature=True, seed=None, dtype="float32")

method       an uncertainty method of ``methods.METHODS`` (``gptv ... --method``)
mc_samples   the method's draws (``--mc-samples``): None = the run's mc_samples; 0 = the point
             estimate for every method (a Bayesian head's posterior mean, dropout off, the
             trained weights), calibrated under its own temperature key
temperature  apply the temperature ``gptv calibrate`` fitted for the method (``--no-temperature``)
seed         makes every draw reproducible (None: a random one)
dtype        the weights the backbone and head run in (``--dtype``, ``DTYPES``): float32, bfloat16,
             float16, or int8 (torch's dynamic quantization of the backbone's Linear layers, CPU
             only); the readout, entropies and MI stay fp32 (heads return fp32 logits)

The runs themselves are loaded apart (``methods.load_runs``): loading is the costly part, and a
loaded model serves many predictions (the API and the server vary draws and seed per call).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from ..common.errors import InputError
from ..core.model import GPT
from .methods import METHODS, Run, get_method, point_key, point_predictor
from .options import DTYPES
from .predictive import Predictor

# lm-eval's documented model_arg bayes_mode, in the words of this module (``from_bayes_mode``)
BAYES_MODES: dict[str, dict[str, Any]] = {
    "mean": {"mc_samples": 0},
    "step": {"method": "default"},
    "sequence": {"method": "sequence"},
}


@dataclass(frozen=True)
class Prediction:
    """How the predictive distribution of loaded runs is formed (module docstring); checked on
    creation (ValueError, one message per mistake)."""

    method: str = "default"
    mc_samples: int | None = None
    temperature: bool = True
    seed: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        n = self.mc_samples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InputError(
                f"mc_samples must be an integer >= 0 (0 = the point estimate, None = the run's), got {n!r}"
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")

    def but(self, **changes: Any) -> Prediction:
        """This prediction with the fields of ``changes`` that are not None replaced (a call's own options)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **given) if given else self

    @property
    def point(self) -> bool:
        """Whether this asks for the point estimate (0 draws)."""
        return self.mc_samples == 0

    def check(self, runs: Sequence[Run], *, generation: bool = False) -> None:
        """ValueError when this prediction cannot be formed from ``runs`` (for scoring, unless ``generation``)."""
        method = METHODS[self.method]
        if method.generation_only and not generation and not self.point:
            raise InputError(
                f"method {self.method!r} draws per generated sequence: it is for generation "
                "(gptv sample, serve, LanguageModel.generate), not for scoring text"
            )
        if not self.point:
            method.check(runs)


def temperature_key(runs: Sequence[Run], prediction: Prediction) -> str:
    """The key under which ``gptv calibrate`` stores the temperature of ``prediction`` in RUN/calibration.json:
    the method's name, or for 0 draws the point estimate's (``methods.point_key``)."""
    return point_key(runs) if prediction.point else prediction.method


def build_predictor(
    runs: Sequence[Run], prediction: Prediction = Prediction(), *, generation: bool = False
) -> Predictor:
    """The predictive distribution of ``runs`` under ``prediction``: the one way from a description to a
    ``Predictor``. ``generation``: for a decoder (methods that draw per generated sequence allowed)."""
    prediction.check(runs, generation=generation)
    p = prediction
    runs = [cast_run(r, p.dtype) for r in runs]
    if p.point:
        return point_predictor(runs, p.seed, p.temperature)
    return METHODS[p.method].predictor(runs, p.mc_samples, p.seed, p.temperature)


def cast_run(run: Run, dtype: str) -> Run:
    """``run`` with its model in ``dtype`` (``DTYPES``): fp32 is the run itself; other formats are a
    copy made once per run and kept on it (``Run.casts``), so the fp32 model serves on unchanged."""
    if dtype == "float32":
        return run
    if dtype not in run.casts:
        run.casts[dtype] = cast_model(run.model, dtype)
    return replace(run, model=run.casts[dtype], casts={})


def cast_model(model: GPT, dtype: str) -> GPT:
    """A copy of ``model`` (eval mode) whose backbone runs in ``dtype``: its parameters cast, or for
    int8 its Linear layers quantized dynamically (int8 weights, activations quantized per call).
    The head keeps fp32 weights (a tied embedding is untied in the copy): its logits feed the
    readout, and bf16-rounded logits tie and flip greedy choices (benchmarks/README.md, issue 20)."""
    device = next(model.parameters()).device
    if dtype == "int8":
        if device.type != "cpu":
            raise InputError(f"dtype int8 (torch's dynamic quantization) runs on the CPU only, not on {device}")
        out = copy.deepcopy(model)
        with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            out.transformer = torch.ao.quantization.quantize_dynamic(out.transformer, {nn.Linear}, dtype=torch.qint8)
        return out.eval()
    target = getattr(torch, dtype)
    if device.type == "cpu" and target == torch.float16 and not _cpu_half_ok():
        raise InputError("dtype float16 is not supported on this CPU build of torch; use bfloat16")
    out = copy.deepcopy(model)
    wte = out.transformer.wte
    wte.weight = nn.Parameter(wte.weight.detach().to(target), requires_grad=False)  # untied from the head
    out.transformer.to(target)
    return out.eval()


def _cpu_half_ok() -> bool:
    try:
        torch.nn.functional.linear(torch.ones(1, 2, dtype=torch.float16), torch.ones(2, 2, dtype=torch.float16))
    except RuntimeError:
        return False
    return True


def from_bayes_mode(bayes_mode: str | None, **fields: Any) -> Prediction:
    """A ``Prediction`` from lm-eval's model_arg ``bayes_mode`` (kept because lm-eval configs name it):
    'mean' = mc_samples 0, 'step' = the default method, 'sequence' = the method 'sequence'."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if bayes_mode is None:
        return Prediction(**fields)
    if bayes_mode not in BAYES_MODES:
        raise InputError(
            f"bayes_mode must be one of {', '.join(BAYES_MODES)} (mean = mc_samples=0, step = the default "
            f"method, sequence = method=sequence), got {bayes_mode!r}"
        )
    implied = BAYES_MODES[bayes_mode]
    clash = [f"{k}={fields[k]!r}" for k, v in implied.items() if k in fields and fields[k] != v]
    if clash:
        raise InputError(f"bayes_mode={bayes_mode} means {implied}, which contradicts {', '.join(clash)}")
    return Prediction(**{**fields, **implied})
