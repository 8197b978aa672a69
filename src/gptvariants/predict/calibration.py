"""Temperature scaling (Guo et al., ICML 2017) and the `gptv calibrate` / `gptv laplace` commands.

One scalar T > 0 divides a run's logits before the readout, p_s = readout(z_s / T), and is
fitted by minimising the NLL of the predictive distribution on held-out tokens; it leaves the
argmax of a softmax head unchanged. For a sigmoid head it scales z before sigmoid and the
normalised readout, which can reorder nothing either (both are monotone in z per token). T is
fitted per method (the mixture of a Bayesian head's draws, MC dropout and Laplace each get their
own; ``point`` for a Bayesian head's posterior mean) and stored in RUN/calibration.json, which
every consumer of the run applies unless told not to (``methods.Run.temperature``).

Held-out data: the first half of the validation split fits T; the second half reports NLL and
ECE before and after, so the figures printed are not the ones the fit optimised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..store.run import CALIBRATION_FILE
from .methods import Run
from .prediction import Prediction, build_predictor, temperature_key
from .predictive import Predictor, score_windows

N_BINS = 15


def _cache(predictor: Predictor, tokens: np.ndarray, stride: int) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """(hidden states per backbone pass, targets) per chunk: the draws' inputs, fixed once (MC
    dropout's masks included), so the NLL is a deterministic function of T."""
    windows = M.sliding_windows(len(tokens), predictor.block_size, stride)
    cache = []
    for _, y, draws in score_windows(predictor, tokens, windows):
        assert draws.hidden is not None  # score_windows keeps the hidden states of every window
        cache.append((draws.hidden, y))
    return cache


@torch.no_grad()
def _stats(predictor: Predictor, cache, temperature: float, seed: int) -> dict[str, np.ndarray]:
    for m in predictor.members:
        m.temperature = temperature
    predictor.generator.manual_seed(seed)  # the same head draws for every T
    parts: dict[str, list[torch.Tensor]] = {"nll": [], "confidence": [], "correct": []}
    with predictor.fixed_weights():
        for hs, y in cache:
            s = predictor.draws(hs).token_stats(y)
            for k in parts:
                parts[k].append(s[k])
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def golden_section(f, lo: float, hi: float, iters: int = 40) -> float:
    """argmin of a unimodal f on [lo, hi]."""
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(
    run: Run,
    tokens: np.ndarray,
    *,
    method: str = "default",
    mc_samples: int | None = None,
    seed: int = 0,
    stride: int | None = None,
    fit: str = "nll",
) -> dict[str, Any]:
    """Fit T on the first half of ``tokens``; NLL and ECE before/after on the second half, for the
    predictive ``Prediction(method, mc_samples, seed=seed)`` (stored under its temperature key).

    fit: "nll" (Guo et al.: the T of lowest NLL, which brings the whole distribution closest to the
    data) or "ece" (the T of lowest top-1 ECE). They can disagree: a model whose top-1 confidence
    is calibrated while its tail is too flat gets a T < 1 from the NLL, which makes the top-1
    overconfident (benchmarks/README.md, "Temperature scaling").
    """
    if fit not in ("nll", "ece"):
        raise InputError(f"fit must be 'nll' or 'ece', got {fit!r}")
    prediction = Prediction(method, mc_samples, temperature=False, seed=seed)
    predictor = build_predictor([run], prediction)
    stride = stride or max(1, predictor.block_size // 2)
    half = len(tokens) // 2
    if half < predictor.block_size + 1:
        raise InputError(
            f"{len(tokens)} held-out tokens are too few to fit and check a temperature "
            f"(at least 2 x (block_size + 1) = {2 * (predictor.block_size + 1)})"
        )
    fit_cache, check = _cache(predictor, tokens[:half], stride), _cache(predictor, tokens[half:], stride)

    def loss(log_t: float) -> float:
        s = _stats(predictor, fit_cache, math.exp(log_t), seed)
        if fit == "ece":
            return M.expected_calibration_error(s["confidence"], s["correct"], N_BINS, "width")
        return float(s["nll"].astype(np.float64).mean())

    T = math.exp(golden_section(loss, math.log(0.05), math.log(20.0)))
    before, after = _stats(predictor, check, 1.0, seed), _stats(predictor, check, T, seed)

    def summary(s: dict[str, np.ndarray]) -> dict[str, float]:
        return {
            "nll": float(s["nll"].astype(np.float64).mean()),
            "ece": M.expected_calibration_error(s["confidence"], s["correct"], N_BINS, "width"),
        }

    key = temperature_key([run], prediction)
    return {
        "key": key,
        "temperature": T,
        "fit": fit,
        "fit_tokens": half,
        "check_tokens": len(tokens) - half,
        "before": summary(before),
        "after": summary(after),
        "draws": predictor.n_draws,
    }


def save_temperature(run_dir: Path, fit: dict[str, Any]) -> dict[str, Any]:
    """Merge one fitted temperature into RUN/calibration.json (other methods' keys are kept)."""
    path = Path(run_dir) / CALIBRATION_FILE
    record: dict[str, Any] = {"temperature": {}, "fits": {}}
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged file is replaced by this fit
    record.setdefault("temperature", {})[fit["key"]] = fit["temperature"]
    record.setdefault("fits", {})[fit["key"]] = fit
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    return record


# ----------------------------------------------------------------------------- commands
