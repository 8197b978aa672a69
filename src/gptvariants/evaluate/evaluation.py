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

Nothing of size (split, V) is held: hidden states are projected one chunk of rows at a time
and reduced to per-token statistics (the metrics module's contract).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..common.atomic import atomic_write
from ..common.progress import Progress
from ..common.runtime import resolve_device
from ..core.model import GPT
from ..data.dataset import TokenDataset
from ..data.sources import Source, resolve_source, split_source, text_source
from ..data.tokenizers import load_tokenizer
from ..decode.generate import generate
from ..predict.methods import build_predictor, load_runs
from ..predict.predictive import CHUNK_FLOATS, Predictor, score_windows
from ..store.run import RunFolder
from ..train.trainlog import log_eval_scalars
from .uncertainty import ood_summary, selective_summary

N_BINS = 15
EXACT_SUPPORT_THRESHOLD = 0.01  # a token is in the synthetic language's reference set if p_true > this
TAUS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # each costs one pass over the chunk's (n, V) values
PROMPT_TOKENS = 16


# ----------------------------------------------------------------------------- input checks


def _open_reference_sets(data: TokenDataset, name: str, split: str, n_tokens: int) -> np.memmap:
    sets_dir = data.dir / "targets" / name
    if not (sets_dir / "meta.json").is_file():
        raise FileNotFoundError(
            f"no reference sets {sets_dir}; build them with `gptv targets --data {data.dir} --teacher SPEC`"
        )
    sets = data.open_sets(sets_dir, split)
    if len(sets) != n_tokens:
        raise ValueError(f"{sets_dir}: {len(sets)} rows for a {split} split of {n_tokens} tokens")
    return sets


def _as_reference(rows: np.ndarray) -> torch.Tensor:
    """Cached set rows (n, K) with the dtype-max sentinel -> int64 ids padded with -1."""
    ids = torch.from_numpy(rows.astype(np.int64))
    ids[torch.from_numpy(rows == np.iinfo(rows.dtype).max)] = -1
    return ids


def exact_support(p_true: torch.Tensor, threshold: float = EXACT_SUPPORT_THRESHOLD) -> torch.Tensor:
    """{v : p_true[v] > threshold} per row as ids (n, K) padded with -1 (K = largest set)."""
    k = max(int((p_true > threshold).sum(1).max()), 1)
    values, ids = p_true.topk(k, dim=1)
    return ids.masked_fill(values <= threshold, -1)


class _Rows:
    """Hands out consecutive rows of a chunked (start, rows) iterator, n at a time."""

    def __init__(self, chunks: Iterator[tuple[int, np.ndarray]]) -> None:
        self.chunks, self.buffer = chunks, np.empty((0, 0), dtype=np.float32)

    def take(self, n: int) -> torch.Tensor:
        parts, need = [], n
        while need:
            if len(self.buffer) == 0:
                self.buffer = next(self.chunks)[1]
            parts.append(self.buffer[:need])
            need -= len(parts[-1])
            self.buffer = self.buffer[len(parts[-1]) :]
        return torch.from_numpy(np.concatenate(parts))


# ----------------------------------------------------------------------------- scoring


class _Columns:
    """Per-token values by name, written in order into one (n,) tensor per name allocated once.
    Kept as one small tensor per chunk, they pinned glibc's heap between the chunks' large
    transient (S, rows, V) buffers, so it grew with the text: 4.9 GB against 0.6 GB for 2,048
    tokens at V = 50257 with 4 draws, and out of memory at 8,192."""

    def __init__(self, n: int) -> None:
        self.n, self.data, self.filled = n, {}, {}

    def append(self, name: str, values: torch.Tensor) -> None:
        if name not in self.data:
            self.data[name] = torch.empty(self.n, dtype=values.dtype, device=values.device)
            self.filled[name] = 0
        i = self.filled[name]
        self.data[name][i : i + len(values)] = values
        self.filled[name] = i + len(values)

    def arrays(self) -> dict[str, np.ndarray] | None:
        return {k: v[: self.filled[k]].cpu().numpy() for k, v in self.data.items()} if self.data else None


class _SetCounts:
    """Per-token set counts at ``tau`` and pooled counts over TAUS, against reference sets."""

    def __init__(self, tau: float) -> None:
        self.tau, self.tp, self.pred = tau, None, None

    def add(self, per_token: _Columns, probs: torch.Tensor, ref: torch.Tensor) -> None:
        tp, n_pred, n_ref = M.set_counts(probs, ref, self.tau)
        per_token.append("set_tp", tp)
        per_token.append("set_n_pred", n_pred)
        per_token.append("set_n_ref", n_ref)
        ctp, cpred, _ = M.set_curve(probs, ref, TAUS)
        ctp, cpred = ctp.sum(1), cpred.sum(1)
        self.tp = ctp if self.tp is None else self.tp + ctp
        self.pred = cpred if self.pred is None else self.pred + cpred

    def curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.tp is None else (self.tp.cpu().numpy(), self.pred.cpu().numpy())


@torch.no_grad()
def score(
    predictor: Predictor | GPT,
    tokens: np.ndarray,
    *,
    stride: int,
    truth=None,
    reference: np.memmap | None = None,
    train_sets: np.memmap | None = None,
    tau: float = 0.5,
    batch: int = 16,
    point: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """One pass over ``tokens`` (targets 1..n-1 in order): per-token statistics and set counts.

    predictor: the run's predictive distribution (a bare GPT means its default predictor).
    truth: a SyntheticLanguage (exact p_true for ground-truth metrics and, without
    ``reference``, the exact-support reference sets). reference / train_sets: cached set
    memmaps aligned with ``tokens`` (row i = candidates for token i+1), the first for set
    metrics, the second for the sigmoid head's raw BCE as trained. point: also score the
    heads' point estimates (posterior mean) when the predictor draws from a head posterior.
    progress: a bar in a terminal, plain lines in a log (``progress.Progress``).
    Returns {"tokens": {name: (n-1,) array} of the predictive distribution (``Draws.token_stats``,
    plus truth_* and set_* counts when available), "point": the same for the point estimate or
    None, "curve": (tp, n_pred) summed per tau of TAUS or None, "raw_bce_sum": summed BCE
    (sigmoid heads, a single model)}.
    """
    predictor = predictor if isinstance(predictor, Predictor) else Predictor([predictor], seed=0)
    single = len(predictor.members) == 1 and not predictor.dropout_samples
    model = predictor.model
    point_of = None
    if point and single and predictor.n_draws > 1 and predictor.samples != 0:
        point_of = Predictor(predictor.members, samples=0)
    rows_true = _Rows(truth.iter_next_token_probs(tokens[:-1])) if truth is not None else None
    want_sets = reference is not None or truth is not None
    per_token, point_tokens = _Columns(max(0, len(tokens) - 1)), _Columns(max(0, len(tokens) - 1))
    sets = _SetCounts(tau)
    raw_bce = 0.0
    windows = M.sliding_windows(len(tokens), predictor.block_size, stride)
    budget = CHUNK_FLOATS // 2  # the draws' log-probabilities and their probabilities
    bar = Progress(progress, len(tokens) - 1, desc="gptv eval: scoring", unit="token")
    for t, y, draws in score_windows(predictor, tokens, windows, batch=batch, set_probs=want_sets, budget=budget):
        n = len(y)
        bar.update(n)
        stats = draws.token_stats(y)
        if draws.samples == 1:
            stats.pop("expected_entropy"), stats.pop("mutual_information")
        for k, v in stats.items():
            per_token.append(k, v)
        if point_of is not None:
            for k, v in M.token_stats(point_of.draws(draws.hidden).probs, y).items():
                point_tokens.append(k, v)
        if single and model.objective.sigmoid:
            s = _as_reference(train_sets[t - 1 : t - 1 + n]).to(y.device) if train_sets is not None else None
            raw_bce += model.head.loss(draws.hidden[0], model.objective, y, s)[0].item() * n
        p_true = rows_true.take(n).to(y.device) if rows_true is not None else None
        if p_true is not None:
            for k, v in M.calibration_vs_truth(draws.probs, p_true).items():
                per_token.append(f"truth_{k}", v)
            per_token.append("truth_entropy", M.entropy(p_true))
            per_token.append("truth_nll", -p_true.gather(1, y[:, None]).squeeze(1).clamp_min(1e-30).log())
        if want_sets:
            ref = _as_reference(reference[t - 1 : t - 1 + n]) if reference is not None else exact_support(p_true)
            sets.add(per_token, draws.set_probs, ref.to(y.device))
    bar.close()
    return {
        "tokens": per_token.arrays() or {},
        "point": point_tokens.arrays(),
        "curve": sets.curve(),
        "raw_bce_sum": raw_bce,
        "train_sets_used": train_sets is not None,
    }


# ----------------------------------------------------------------------------- summaries


def _calibration(t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Top-1 calibration of one predictive distribution from its per-token statistics."""
    conf, correct = t["confidence"], t["correct"]
    curve = M.reliability_curve(conf, correct, N_BINS, "width")
    return {
        "ece_width": M.expected_calibration_error(conf, correct, N_BINS, "width"),
        "ece_mass": M.expected_calibration_error(conf, correct, N_BINS, "mass"),
        "brier": float(t["brier"].mean()),
        "nll": float(t["nll"].astype(np.float64).mean()),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
        "reliability": {
            "confidence": curve.confidence.tolist(),
            "accuracy": curve.accuracy.tolist(),
            "count": curve.count.tolist(),
        },
    }


def _uncertainty(t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean uncertainties and the AUROC of each for predicting that the top-1 guess is wrong."""
    wrong = ~t["correct"].astype(bool)
    names = ["entropy", "expected_entropy", "mutual_information"]
    out: dict[str, Any] = {f"mean_{k}": float(t[k].mean()) for k in names if k in t}
    out.update({f"auroc_{k}": M.auroc(t[k], wrong) for k in names if k in t})
    out["auroc_one_minus_confidence"] = M.auroc(1.0 - t["confidence"], wrong)
    return out


def _sets(t: dict[str, np.ndarray], curve: tuple[np.ndarray, np.ndarray], tau: float) -> dict[str, Any]:
    at_tau = M.set_prf(t["set_tp"], t["set_n_pred"], t["set_n_ref"])
    n_tokens, n_ref = len(t["set_tp"]), float(t["set_n_ref"].sum())
    points = []
    for tau_i, tp, n_pred in zip(TAUS, *curve):
        tp, n_pred = float(tp), float(n_pred)
        points.append(
            {
                "tau": tau_i,
                "micro_precision": tp / n_pred if n_pred else 0.0,
                "micro_recall": tp / n_ref if n_ref else 0.0,
                "micro_f1": 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 0.0,
                "mean_pred_size": n_pred / n_tokens,
            }
        )
    best = max(points, key=lambda p: p["micro_f1"])
    return {"tau": tau, **at_tau, "curve": points, "best_micro_f1": best["micro_f1"], "best_tau": best["tau"]}


def _ground_truth(t: dict[str, np.ndarray]) -> dict[str, float]:
    nll_true = float(t["truth_nll"].astype(np.float64).mean())
    return {
        "true_entropy_rate": float(t["truth_entropy"].astype(np.float64).mean()),
        "true_nats_per_token": nll_true,
        "excess_nats_per_token": float(t["nll"].astype(np.float64).mean()) - nll_true,
        "kl_true_model": float(t["truth_kl"].astype(np.float64).mean()),
        "ece_vs_truth_width": M.true_probability_ece(
            t["truth_confidence"], t["truth_true_prob_of_pred"], N_BINS, "width"
        ),
        "ece_vs_truth_mass": M.true_probability_ece(
            t["truth_confidence"], t["truth_true_prob_of_pred"], N_BINS, "mass"
        ),
    }


# ----------------------------------------------------------------------------- diversity


def pick_prompts(
    tokens: np.ndarray, n: int, length: int = PROMPT_TOKENS, seed: int = 1337
) -> tuple[list[list[int]], bool]:
    """n prompts of ``length`` tokens from the split: distinct non-overlapping windows at
    offsets k * length chosen with a fixed seed, drawn with replacement only when n exceeds
    the number of windows. Returns (prompts, drawn_with_replacement)."""
    available = len(tokens) // length
    if available < 1:
        raise ValueError(f"the split ({len(tokens)} tokens) is shorter than one prompt of {length} tokens")
    replace = n > available
    picks = np.random.default_rng(seed).choice(available, size=n, replace=replace)
    return [tokens[k * length : (k + 1) * length].astype(np.int64).tolist() for k in picks], replace


def sample_diversity(
    predictor: Predictor, tokenizer, tokens: np.ndarray, *, num_samples: int, max_new_tokens: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample continuations of prompts from ``tokens`` and measure their diversity.

    Prompts: pick_prompts(tokens, num_samples, PROMPT_TOKENS, seed). Sampling: exactly
    max_new_tokens tokens (no stop token), temperature 1, no top-k / top-p, seed ``seed``;
    tokens are drawn from the predictive distribution that is scored (Bayesian heads: the
    Monte-Carlo mixture of fresh draws at every step; sigmoid heads: their normalised readout).
    Metrics use the decoded continuations only (no prompt).
    """

    prompts, replaced = pick_prompts(tokens, num_samples, PROMPT_TOKENS, seed)
    t0 = time.perf_counter()
    new = generate(predictor, prompts, max_new_tokens, temperature=1.0, seed=seed, sig_mode="normalize")
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(ids) for ids in new]
    samples = [
        {"prompt": tokenizer.decode(p), "continuation": t, "new_tokens": len(ids)}
        for p, t, ids in zip(prompts, texts, new)
    ]
    n_new = sum(len(ids) for ids in new)
    metrics = {
        "num_samples": len(texts),
        "prompt_tokens": PROMPT_TOKENS,
        "max_new_tokens": max_new_tokens,
        "prompts_with_replacement": replaced,
        "self_bleu": M.self_bleu(texts) if len(texts) > 1 else None,
        **{f"distinct_{n}": M.distinct_n(texts, n) for n in range(1, 5)},
        "distinct_4_study": M.distinct4_study(texts),
        **{f"distinct_{n}_tokens": M.distinct_n_tokens(new, n) for n in (2, 4)},
        "mean_length_words": M.mean_length_words(texts),
        "mean_new_tokens": n_new / len(texts),
    }
    return {**metrics, "tokens_per_s": n_new / seconds if seconds > 0 else None}, samples


# ----------------------------------------------------------------------------- entry point


CONVENTIONS = {
    "nll": "natural log (nats); perplexity = exp(nats_per_token); bits_per_byte = sum NLL / (split bytes * ln 2); "
    "word_perplexity = exp(sum NLL / split words); bytes and words count the whole split",
    "windows": "every token 1..n-1 of the split scored once with sliding windows of block_size tokens "
    "advanced by `stride` (stride = block_size: lm-evaluation-harness's disjoint windows)",
    "distribution": "softmax(z); sigmoid heads: sigmoid(z_v) / sum_u sigmoid(z_u); Bayesian heads: the mean of "
    "that distribution over mc_samples draws of the head weights (backbone deterministic); "
    "`posterior_mean` uses the mean weights instead",
    "raw_bce": "sigmoid heads: the training objective (BCE summed over the vocabulary, mean over tokens) with the "
    "posterior-mean weights, against the run's training target sets when present for this data, else "
    "the true token only",
    "calibration": f"top-1 confidence vs correctness; ECE with {N_BINS} equal-width ('width') and equal-mass ('mass') "
    "bins; Brier = sum_v (p_v - 1[v=y])^2 in [0, 2]",
    "uncertainty": "AUROC of an uncertainty score for predicting a wrong top-1 token (0.5 = uninformative); "
    "Bayesian: entropy of the mean = expected entropy + mutual information",
    "sets": "predicted set {v : q_v >= tau}; q = sigmoid(z) for sigmoid heads (Bayesian: mean over draws), the "
    f"predictive probability for softmax heads; reference: cached sets DATA/targets/NAME, or on the "
    f"synthetic language the exact support {{v : p_true(v) > {EXACT_SUPPORT_THRESHOLD}}}; micro = pooled "
    "counts, macro = mean over tokens, an empty predicted set has precision 0",
    "ground_truth": "synthetic language only: true_entropy_rate = mean H(p_true); true_nats_per_token = mean "
    "-log p_true(y), the ideal model's score; kl_true_model = mean KL(p_true || p_model); "
    "ece_vs_truth replaces each 0/1 outcome by p_true(argmax p_model)",
    "diversity": f"continuations of {PROMPT_TOKENS}-token prompts taken at seeded random non-overlapping offsets of "
    "the split (with replacement only when more samples than windows are asked for); exactly max_new_tokens "
    "tokens each at temperature 1 (Bayesian: MC mean of fresh head draws at every step); "
    "Self-BLEU (0-100, sacrebleu 13a tokenization, each sample vs all others) and Distinct-n over "
    "whitespace words of the decoded text; distinct_4_study = unique 4-grams / words (the study's)",
    "selective": "selective prediction of the top-1 token: keep the least uncertain tokens first; risk = top-1 error "
    "rate of the kept tokens; aurc = area under the risk-coverage curve (lower is better) per label-free "
    "score (entropy, max_prob as 1 - max_prob, mi, expected_entropy); aurc_optimal = an oracle that "
    "abstains on the errors first",
    "ood": "out-of-domain detection: the --ood source's tokens are the positives, the evaluated text's the negatives; "
    "scores are oriented so that higher = more uncertain (max_prob enters as 1 - max_prob; 'mean' reports "
    "max_prob itself); the out-of-domain text is cut to as many tokens as the in-domain one; token level uses "
    "every scored token, sequence level the means over consecutive "
    "segments of block_size tokens; fpr95 = the share of in-domain tokens (sequences) flagged at the highest "
    "threshold that flags 95 % of the out-of-domain ones",
    "text": "--text / text:PATH sources are encoded with the run's tokenizer; pieces it cannot encode are dropped and "
    "counted in source.unknown; an end-of-text token (when the tokenizer has one) is prepended so that the "
    "first token is scored",
    "speed": "scoring: scored tokens / wall time of the whole scoring pass (forward, head and per-token metrics); "
    "generation: new tokens / wall time of generate()",
}


def default_out(run_dir: Path, source: str) -> Path:
    """RUN/eval/<split>.json, or RUN/eval/text-<stem>.json for an external text."""
    name = source if source in ("train", "val") else "text-" + Path(source.removeprefix("text:")).stem
    return Path(run_dir) / "eval" / f"{name}.json"


def _reference_sets(source: Source, sets: str | None, model: GPT, cfg) -> tuple[Any, str | None, Any, str]:
    """(reference memmap or None, its description, the run's own training sets or None, why skipped)."""
    data, n = source.data, len(source.tokens)
    reference, described, skipped = None, None, "--sets none"
    if data is None:
        if sets not in (None, "none"):
            raise ValueError("--sets needs a prepared data folder (--data); an external --text has no reference sets")
        skipped = "external text: no reference sets"
    elif sets not in (None, "none"):
        reference, described = _open_reference_sets(data, sets, source.split, n), f"targets/{sets}"
    elif sets is None and source.truth is not None:
        described = f"exact support p_true > {EXACT_SUPPORT_THRESHOLD}"
    elif sets is None and model.objective.sigmoid:
        raise ValueError(
            f"set metrics of the sigmoid head need reference sets, and {data.dir} is not the synthetic language: "
            f"build them with `gptv targets --data {data.dir} --teacher ngram:3` (or ckpt:RUN) and pass --sets NAME, "
            "or pass --sets none to skip them"
        )
    elif sets is None:
        skipped = "no reference sets (pass --sets NAME)"
    train_sets = None
    if data is not None and model.objective.sigmoid and cfg.objective.targets:
        try:
            train_sets = _open_reference_sets(data, cfg.objective.targets, source.split, n)
        except (FileNotFoundError, ValueError):  # trained on other data: score BCE on the true token only
            train_sets = None
    return reference, described, train_sets, skipped


def _check_length(source: Source, block: int, stride: int | None) -> int:
    if len(source.tokens) < block + 1:
        raise ValueError(
            f"{source.name} has {len(source.tokens)} tokens, fewer than one window of "
            f"block_size + 1 = {block + 1}; evaluate on a longer text"
        )
    stride = stride or max(1, block // 2)
    if not 1 <= stride <= block:
        raise ValueError(f"stride must be in 1..block_size={block}, got {stride}")
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
    device: str = "auto",
    batch: int = 16,
    method: str = "default",
    temperature: bool = True,
    progress: bool = False,
    log_to_run: bool = False,
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on ``split`` of ``data_dir`` or on an external ``text``;
    write and return the results.

    text: a file, folder or glob scored with the run's tokenizer (unknown characters dropped
    and counted). ood: a second, out-of-domain source (``sources.resolve_source``) scored the
    same way; the ``ood`` section compares every uncertainty score on both. out: the JSON path
    (default ``default_out``); <stem>.reliability.png and <stem>.samples.jsonl go beside it.
    stride: default block_size // 2. run_dir: a run, or several ("A,B", a list, a folder of
    runs) evaluated as their ensemble. method: ``methods.METHODS``; mc_samples: its draws
    (default: the run's mc_samples; 0 = a Bayesian head's posterior mean); temperature: apply
    fitted temperatures. sets: reference sets DATA/targets/NAME, "none" to skip set metrics, or None =
    the exact support on the synthetic language, none otherwise. num_samples = 0 skips the
    diversity section. Raises ValueError for a tokenizer mismatch, a text shorter than one
    window, a bad stride, or a sigmoid head asked for set metrics without reference sets.
    """

    if (data_dir is None) == (text is None):
        raise ValueError("give the text to evaluate as either a prepared data folder (--data) or a file (--text)")
    runs = load_runs(run_dir, resolve_device(device))
    run_dir, cfg = runs[0].dir, runs[0].config
    tokenizer = load_tokenizer(run_dir)
    source = split_source(run_dir, Path(data_dir), split) if text is None else text_source(text, tokenizer)
    stride = _check_length(source, cfg.model.block_size, stride)
    predictor = build_predictor(runs, method, samples=mc_samples, seed=seed, temperature=temperature)
    result, raw = _scored(runs, predictor, method, source, sets, stride, tau, batch, progress)
    if ood is not None:
        result["ood"] = _ood(predictor, ood, run_dir, tokenizer, source, raw["tokens"], stride, batch, progress)
    out = Path(out) if out is not None else default_out(run_dir, split if text is None else f"text:{text}")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["calibration"]["reliability_png"] = _plot(result, raw, out).name
    result["diversity"] = None
    if num_samples > 0:
        fresh = build_predictor(runs, method, samples=mc_samples, seed=seed, temperature=temperature)
        result["diversity"] = _diversity(
            fresh, tokenizer, source.tokens, result, out, num_samples, max_new_tokens, seed
        )
    atomic_write(out, json.dumps(result, indent=1, allow_nan=True) + "\n")
    if log_to_run:
        tag = source.split if text is None else "text"
        result["logged_to"] = log_eval_scalars(run_dir, cfg, result["step"], scalars(result, f"eval-{tag}"))
    return result


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
    reference, set_source, train_sets, skipped = _reference_sets(source, sets, model, cfg)
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
    result = _summarise(runs[0].dir, cfg, predictor, source, raw, stride)
    result.update(
        runs=[str(r.dir) for r in runs], method=method, temperature=[m.temperature for m in predictor.members]
    )
    result["sets"] = (
        {"reference": set_source, **_sets(raw["tokens"], raw["curve"], tau)} if set_source else {"skipped": skipped}
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
) -> dict[str, Any]:
    """The ``ood`` section: ``spec`` scored like the evaluated text, as many tokens as it, compared score by score."""
    shifted = resolve_source(spec, run_dir, tokenizer, source, source.split or "val")
    if len(shifted.tokens) > len(source.tokens):  # as many tokens on both sides: the AUROCs compare like with like
        shifted.info["tokens_available"] = len(shifted.tokens)
        shifted.tokens = shifted.tokens[: len(source.tokens)]
    _check_length(shifted, predictor.block_size, stride)
    outside = score(predictor, shifted.tokens, stride=stride, batch=batch, point=False, progress=progress)["tokens"]
    return {**ood_summary(inside, outside, predictor.block_size, shifted.name), "out_source": shifted.describe()}


def _diversity(
    predictor: Predictor,
    tokenizer,
    tokens: np.ndarray,
    result: dict[str, Any],
    out: Path,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """The ``diversity`` section; the samples go to <out stem>.samples.jsonl, the speed into ``result``."""
    div, samples = sample_diversity(
        predictor, tokenizer, tokens, num_samples=num_samples, max_new_tokens=max_new_tokens, seed=seed
    )
    result["speed"]["generation_tokens_per_s"] = div.pop("tokens_per_s")
    path = out.with_suffix(".samples.jsonl")
    atomic_write(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return {**div, "samples_file": path.name}


def scalars(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """The headline numbers of an eval result, flat, for TensorBoard and W&B."""
    p, c, u = result["perplexity"], result["calibration"], result["uncertainty"]
    out = {
        "nats_per_token": p["nats_per_token"],
        "perplexity": p["perplexity"],
        "ece": c["ece_width"],
        "brier": c["brier"],
        "accuracy": c["accuracy"],
        "auroc_entropy": u["auroc_entropy"],
        **{f"aurc_{k}": v for k, v in result["selective"]["aurc"].items()},
    }
    if "mean_mutual_information" in u:
        out["mean_mutual_information"] = u["mean_mutual_information"]
    if result.get("ood"):
        out.update({f"ood_auroc_{k}": v for k, v in result["ood"]["auroc"]["token"].items()})
    if result.get("ground_truth"):
        out["kl_to_truth"] = result["ground_truth"]["kl_true_model"]
    return {f"{prefix}/{k}": float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


def _summarise(
    run_dir: Path, cfg, predictor: Predictor, source: Source, raw: dict[str, Any], stride: int
) -> dict[str, Any]:
    """The scored sections of the eval JSON (perplexity, calibration, uncertainty, selective
    prediction, posterior mean, ground truth) from ``score``'s per-token statistics."""
    tok, model = raw["tokens"], predictor.model
    S = predictor.n_draws if predictor.n_draws > 1 else 0

    def ppl(nll: np.ndarray) -> dict[str, Any]:
        return M.perplexity_summary(float(nll.astype(np.float64).sum()), len(nll), source.n_bytes, source.n_words)

    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": str(source.data.dir) if source.data else None,
        "split": source.split,
        "source": source.describe(),
        "step": RunFolder(run_dir).checkpoint_step(),
        "variant": cfg.objective.variant,
        "head": cfg.objective.head,
        "objective": cfg.objective.objective,
        "sigmoid": model.objective.sigmoid,
        "bayesian": model.bayesian,
        "mc_samples": S,
        "conventions": CONVENTIONS,
        "perplexity": {
            "tokens_scored": len(tok["nll"]),
            "block_size": cfg.model.block_size,
            "stride": stride,
            **ppl(tok["nll"]),
        },
        "calibration": _calibration(tok),
        "uncertainty": _uncertainty(tok),
        "selective": selective_summary(tok),
    }
    if model.objective.sigmoid:
        result["perplexity"]["raw_bce_per_token"] = raw["raw_bce_sum"] / len(tok["nll"])
        trained_on = cfg.objective.targets if raw.get("train_sets_used") else "true token only"
        result["perplexity"]["raw_bce_targets"] = trained_on
    if raw["point"] is not None:
        result["posterior_mean"] = {
            "perplexity": ppl(raw["point"]["nll"]),
            "calibration": _calibration(raw["point"]),
            "uncertainty": _uncertainty(raw["point"]),
        }
    result["ground_truth"] = _ground_truth(tok) if source.truth is not None else None
    return result


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
    return M.plot_reliability(curves, out.with_suffix(".reliability.png"), N_BINS, title=title)


def format_result(result: dict[str, Any]) -> str:
    p, c, u = result["perplexity"], result["calibration"], result["uncertainty"]
    src = result["source"]
    lines = [
        f"{result['variant']} (step {result['step']}) on {src['name']}: {p['tokens_scored']:,} tokens, "
        f"stride {p['stride']}"
    ]
    if src.get("unknown", {}).get("count"):
        unk = src["unknown"]
        lines.append(
            f"  {unk['count']:,} piece(s) the tokenizer cannot encode were dropped ({unk['distinct']} distinct, "
            f"e.g. {', '.join(repr(k) for k in list(unk['examples'])[:5])})"
        )
    lines += [
        f"  perplexity {p['perplexity']:.4f}  nats/token {p['nats_per_token']:.4f}"
        + (f"  bits/byte {p['bits_per_byte']:.4f}" if p["bits_per_byte"] else "")
        + (f"  raw BCE {p['raw_bce_per_token']:.4f}" if "raw_bce_per_token" in p else ""),
        f"  ECE {c['ece_width']:.4f} (mass {c['ece_mass']:.4f})  Brier {c['brier']:.4f}  accuracy {c['accuracy']:.4f}"
        f"  AUROC(entropy) {u['auroc_entropy']:.4f}",
        "  selective prediction AURC: "
        + ", ".join(f"{k} {v:.4f}" for k, v in result["selective"]["aurc"].items())
        + f" (oracle {result['selective']['aurc_optimal']:.4f})",
    ]
    if "posterior_mean" in result:
        lines.append(
            f"  posterior mean: perplexity {result['posterior_mean']['perplexity']['perplexity']:.4f}; "
            f"mutual information {u['mean_mutual_information']:.5f} nats, AUROC(MI) {u['auroc_mutual_information']:.4f}"
        )
    s = result["sets"]
    if "micro_f1" in s:
        lines.append(
            f"  sets vs {s['reference']}: F1 {s['micro_f1']:.4f} at tau {s['tau']} (best "
            f"{s['best_micro_f1']:.4f} at {s['best_tau']}), "
            f"mean size {s['mean_pred_size']:.2f} (reference {s['mean_ref_size']:.2f})"
        )
    g = result["ground_truth"]
    if g:
        lines.append(
            f"  truth: entropy rate {g['true_entropy_rate']:.4f}, ideal nats/token {g['true_nats_per_token']:.4f}, "
            f"KL {g['kl_true_model']:.4f}, ECE vs truth {g['ece_vs_truth_width']:.4f}"
        )
    if result.get("ood"):
        o = result["ood"]
        lines.append(
            f"  OOD vs {o['source']} ({o['n_tokens']['out']:,} tokens): AUROC token / sequence "
            + ", ".join(
                f"{k} {o['auroc']['token'][k]:.3f}/{o['auroc']['sequence'][k]:.3f}" for k in o["auroc"]["token"]
            )
        )
        lines.append(
            "    mean in -> out: "
            + ", ".join(f"{k} {o['mean']['in'][k]:.4g} -> {o['mean']['out'][k]:.4g}" for k in o["mean"]["in"])
        )
    d = result["diversity"]
    if d:
        bleu = "-" if d["self_bleu"] is None else f"{d['self_bleu']:.2f}"
        lines.append(
            f"  {d['num_samples']} samples: Self-BLEU {bleu}, Distinct-4 words {d['distinct_4']:.4f} "
            f"(study's {d['distinct_4_study']:.4f}), Distinct-4 tokens {d['distinct_4_tokens']:.4f}, "
            f"mean length {d['mean_length_words']:.1f} words"
        )
    sp = result["speed"]
    lines.append(
        f"  speed: scoring {sp['scoring_tokens_per_s']:,.0f} tok/s"
        + (f", generation {sp['generation_tokens_per_s']:,.0f} tok/s" if sp.get("generation_tokens_per_s") else "")
    )
    return "\n".join(lines)
