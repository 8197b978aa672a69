"""`gptv eval`: score a trained run on held-out data, the same way for every variant.

Sections of the output JSON (each names its convention in ``conventions``):

perplexity   cross-entropy of the predictive distribution over the WHOLE split with strided
             sliding windows (metrics.sliding_windows: every token 1..n-1 scored once, each
             with >= block_size - stride tokens of context; stride = block_size gives
             lm-evaluation-harness's disjoint windows). The predictive distribution is the
             softmax, or for sigmoid heads sigmoid(z_v) / sum_u sigmoid(z_u); sigmoid heads
             also report their raw training objective (BCE). Bayesian heads: the
             Monte-Carlo predictive mean over S draws of the head weights (the backbone runs
             once per window; only the head is stochastic) and, separately, the
             posterior-mean point estimate.
calibration  top-1 ECE (15 equal-width and 15 equal-mass bins), Brier score, NLL, accuracy,
             the reliability curve and a reliability-diagram PNG.
uncertainty  mean predictive entropy; Bayesian: expected entropy and mutual information;
             AUROC of each uncertainty (and of 1 - confidence) for "the top-1 guess is wrong".
sets         P/R/F1 of the predicted next-token set {v : q_v >= tau}, q = sigmoid(z) for
             sigmoid heads (Bayesian: its mean over the draws) and the predictive
             probability for softmax heads, against reference sets: cached teacher sets
             (``sets=NAME`` = DATA/targets/NAME) or, on the synthetic language, the exact
             support {v : p_true(v) > 0.01}. At tau and as a curve over TAUS.
ground_truth (synthetic language only) true entropy rate, the ideal model's nats/token,
             KL(p_true || p_model), and calibration against the exact probabilities.
diversity    num_samples continuations of prompts taken from the split with a fixed seed:
             Self-BLEU, Distinct-1..4, the study's Distinct-4 variant, mean length; samples
             are saved beside the JSON.
speed        tokens/s of the scoring pass and of generation.
token_metrics the mean of each per-token metric registered with
             ``scoring.register_token_metric`` (the section exists only when one is).

Modules: ``scoring`` (the pass over the text), ``summaries`` (the sections, ``CONVENTIONS``),
``diversity``, ``uncertainty`` (ood, selective), ``result`` (the typed result and its headline),
``report`` (tables and figures). This module runs them in order and writes the JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..common.runtime import resolve_device
from ..data.sources import Source, resolve_source, split_source, text_source
from ..data.tokenizers import load_tokenizer
from ..intervals import BLOCK, RESAMPLES
from ..predict.methods import Run, load_runs
from ..predict.prediction import Prediction, build_predictor
from ..predict.predictive import Predictor
from ..train.trainlog import log_eval_scalars
from .bootstrap import Resampling, ood_intervals, save_token_stats, token_intervals
from .diversity import sample_diversity
from .report import plot_reliability
from .result import scalars
from .scoring import reference_sets, score
from .summaries import N_BINS, sets_summary, summarise
from .uncertainty import ood_summary, selective_intervals


def default_out(run_dir: Path, source: str) -> Path:
    """RUN/eval/<split>.json, or RUN/eval/text-<stem>.json for an external text."""
    name = source if source in ("train", "val") else "text-" + Path(source.removeprefix("text:")).stem
    return Path(run_dir) / "eval" / f"{name}.json"


def _check_length(source: Source, block: int, stride: int | None) -> int:
    if len(source.tokens) < block + 1:
        raise InputError(
            f"{source.name} has {len(source.tokens)} tokens, fewer than one window of "
            f"block_size + 1 = {block + 1}; evaluate on a longer text"
        )
    stride = stride or max(1, block // 2)
    if not 1 <= stride <= block:
        raise InputError(f"stride must be in 1..block_size={block}, got {stride}")
    return stride


def evaluate(
    run_dir: str | Path | list,
    data_dir: str | Path | None = None,
    *,
    text: str | None = None,
    split: str = "val",
    ood: str | None = None,
    out: str | Path | None = None,
    stride: int | None = None,
    mc_samples: int | None = None,
    num_samples: int = 100,
    max_new_tokens: int = 64,
    sets: str | None = None,
    tau: float = 0.5,
    seed: int = 1337,
    resamples: int = RESAMPLES,
    block: int = BLOCK,
    device: str = "auto",
    batch: int = 16,
    method: str = "default",
    temperature: bool = True,
    dtype: str = "float32",
    progress: bool = False,
    log_to_run: bool = False,
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on ``split`` of ``data_dir`` or on an external ``text``; write
    and return the results (the eval JSON; ``result.EvalResult.from_dict`` reads it typed).

    text: a file, folder or glob scored with the run's tokenizer (unknown characters dropped
    and counted). ood: a second, out-of-domain source (``sources.resolve_source``) scored the
    same way; the ``ood`` section compares every uncertainty score on both. out: the JSON path
    (default ``default_out``); <stem>.reliability.png and <stem>.samples.jsonl go beside it.
    stride: default block_size // 2. run_dir: a run, or several ("A,B", a list, a folder of
    runs) evaluated as their ensemble. method: ``methods.METHODS``; mc_samples: its draws
    (default: the run's mc_samples; 0 = a Bayesian head's posterior mean); temperature: apply
    fitted temperatures; dtype: the weights' format (``prediction.DTYPES``). sets: reference sets
    DATA/targets/NAME, "none" to skip set metrics, or None = the exact support on the synthetic
    language, none otherwise. num_samples = 0 skips the diversity section. Raises ValueError for
    a tokenizer mismatch, a short text, a bad stride, or a sigmoid head without reference sets.
    resamples, block: the block bootstrap of every figure's ``x_ci`` (``bootstrap``; 0 resamples = none).
    """
    if (data_dir is None) == (text is None):
        raise InputError("give the text to evaluate as either a prepared data folder (--data) or a file (--text)")
    how = Resampling(resamples, block, seed)
    runs = load_runs(run_dir, resolve_device(device))
    folder, cfg, tokenizer, source = _open(runs, data_dir, text, split)
    stride = _check_length(source, cfg.model.block_size, stride)
    prediction = Prediction(method, mc_samples, temperature, seed, dtype)
    predictor = build_predictor(runs, prediction)
    result, raw = _scored(runs, predictor, method, source, sets, stride, tau, batch, progress)
    if ood is not None:
        result["ood"], raw["outside"] = _ood(
            predictor, ood, folder, tokenizer, source, raw["tokens"], stride, batch, progress
        )
    out = _out_path(out, folder, split if text is None else f"text:{text}")
    _intervals(result, raw["tokens"], raw.get("outside"), predictor.block_size, how, out)
    result["calibration"]["reliability_png"] = _plot(result, raw, out).name
    result["diversity"] = None
    if num_samples > 0:
        fresh = build_predictor(runs, prediction)
        result["diversity"] = _diversity(fresh, tokenizer, source, result, out, num_samples, max_new_tokens, seed)
    atomic_write(out, json.dumps(result, indent=1, allow_nan=True) + "\n")
    if log_to_run:
        tag = source.split if text is None else "text"
        result["logged_to"] = log_eval_scalars(folder, cfg, result["step"], scalars(result, f"eval-{tag}"))
    return result


def _out_path(out: str | Path | None, folder: Path, source: str) -> Path:
    """``out``, default ``default_out``, with its folder created."""
    path = Path(out) if out is not None else default_out(folder, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _intervals(
    result: dict[str, Any],
    inside: dict[str, np.ndarray],
    outside: dict[str, np.ndarray] | None,
    seq_len: int,
    how: Resampling,
    out: Path,
) -> None:
    """Every figure's ``x_ci`` (``bootstrap``), the time they took, and the per-token statistics beside
    ``out`` for paired comparisons with other runs; ``intervals`` None when ``how`` has no resamples."""
    result["intervals"] = None
    if not how.resamples:
        return
    t0 = time.perf_counter()
    result["intervals"] = token_intervals(result, inside, how)
    result["selective"].update(selective_intervals(inside, result["selective"], how.resamples, how.seed, how.block))
    if outside is not None:
        ood_intervals(result["ood"], inside, outside, seq_len, how)
    result["speed"]["bootstrap_seconds"] = time.perf_counter() - t0
    result["tokens_file"] = save_token_stats(out, inside).name


def _open(runs: list[Run], data_dir: str | Path | None, text: str | None, split: str):
    """The first run's folder, config and tokenizer, and the source to score (``text``, else a split)."""
    first = runs[0]
    tokenizer = load_tokenizer(first.folder)
    if text is not None:
        return first.folder, first.saved_config, tokenizer, text_source(text, tokenizer)
    assert data_dir is not None  # evaluate() checked that exactly one of data_dir and text is given
    return first.folder, first.saved_config, tokenizer, split_source(first.folder, Path(data_dir), split)


def _scored(
    runs: list,
    predictor: Predictor,
    method: str,
    source,
    sets: str | None,
    stride: int,
    tau: float,
    batch: int,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the eval JSON's summaries, ``score``'s raw output) of one timed scoring pass over ``source``."""
    model, cfg = runs[0].model, runs[0].config
    reference, set_source, train_sets, skipped = reference_sets(source, sets, model, cfg)
    t0 = time.perf_counter()
    raw = score(
        predictor,
        source.tokens,
        stride=stride,
        truth=source.truth,
        reference=reference,
        train_sets=train_sets,
        tau=tau,
        batch=batch,
        progress=progress,
    )
    score_s = time.perf_counter() - t0
    result = summarise(runs[0].dir, cfg, predictor, source, raw, stride)
    result.update(
        runs=[str(r.dir) for r in runs], method=method, temperature=[m.temperature for m in predictor.members]
    )
    result["sets"] = (
        {"reference": set_source, **sets_summary(raw["tokens"], raw["curve"], tau)}
        if set_source
        else {"skipped": skipped}
    )
    result["speed"] = {"scoring_tokens_per_s": len(raw["tokens"]["nll"]) / score_s, "scoring_seconds": score_s}
    return result, raw


def _ood(
    predictor: Predictor,
    spec: str,
    run_dir: Path,
    tokenizer,
    source: Source,
    inside: dict[str, np.ndarray],
    stride: int,
    batch: int,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the ``ood`` section, the shifted text's per-token statistics): ``spec`` scored like the evaluated
    text, as many tokens as it, compared score by score."""
    shifted = resolve_source(spec, run_dir, tokenizer, source, source.split or "val")
    if len(shifted.tokens) > len(source.tokens):  # as many tokens on both sides: the AUROCs compare like with like
        shifted.info["tokens_available"] = len(shifted.tokens)
        shifted.tokens = shifted.tokens[: len(source.tokens)]
    _check_length(shifted, predictor.block_size, stride)
    outside = score(predictor, shifted.tokens, stride=stride, batch=batch, point=False, progress=progress)["tokens"]
    section = ood_summary(inside, outside, predictor.block_size, shifted.name)
    return {**section, "out_source": shifted.describe()}, outside


def _diversity(
    predictor: Predictor,
    tokenizer,
    source: Source,
    result: dict[str, Any],
    out: Path,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """The ``diversity`` section; the samples go to <out stem>.samples.jsonl, the speed into ``result``."""
    div, samples = sample_diversity(
        predictor, tokenizer, source.tokens, num_samples=num_samples, max_new_tokens=max_new_tokens, seed=seed
    )
    result["speed"]["generation_tokens_per_s"] = div.pop("tokens_per_s")
    path = out.with_suffix(".samples.jsonl")
    atomic_write(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return {**div, "samples_file": path.name}


def _plot(result: dict[str, Any], raw: dict[str, Any], out: Path) -> Path:
    tok = raw["tokens"]
    curves = {"predictive": (tok["confidence"], tok["correct"])}
    if raw["point"] is not None:
        curves = {
            f"MC mean, S={result['mc_samples']}": curves["predictive"],
            "posterior mean": (raw["point"]["confidence"], raw["point"]["correct"]),
        }
    where = result["split"] or result["source"]["name"]
    title = f"{result['variant']}, step {result['step']}, {where} ({len(tok['nll']):,} tokens)"
    return plot_reliability(curves, out.with_suffix(".reliability.png"), N_BINS, title=title)
