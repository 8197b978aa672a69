"""Evaluation metrics: perplexity, calibration, uncertainty, multi-label sets, diversity.

Pure functions, no model code. The evaluator scores a split chunk by chunk; the torch
helpers (token_stats, calibration_vs_truth, set_counts, set_curve) turn one
chunk of probabilities (N, V) into per-token 1-D statistics, so nothing of size
(whole split, V) is ever held. The evaluator concatenates those per-token arrays and the
reducers (perplexity_summary, expected_calibration_error, auroc, set_prf, ...) turn them
into scalars. Reducers accept numpy arrays or torch tensors and return Python floats.

Window plans, the (begin, end, score_from) triples ``predictive.score_windows`` runs, all live
here: sliding_windows (eval, calibration, lm-eval's rolling loglikelihood), continuation_windows
(lm-eval's continuations), spread_windows (the Laplace fit). Generation's own policy
(``decode.window.generation_windows``) follows the decoder's ``window_start`` and stays beside it.

Logarithms are natural (nats) unless a name says bits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]
BinScheme = Literal["width", "mass"]


def _np(x: ArrayLike) -> np.ndarray:
    """1-D float64 numpy view of a tensor / array / list (bools become 0.0 / 1.0)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _weight_rows(weights: ArrayLike | np.ndarray, n: int) -> np.ndarray:
    """Per-token weights as float64 rows (R, n): one row per resample (a 1-D vector is one row).

    A weight k counts its token k times (a bootstrap resample's multiplicity), so every weighted
    statistic equals the unweighted one on the data with each token repeated k times."""
    w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
    w = w.reshape(1, -1) if w.ndim <= 1 else w
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must be (n,) or (resamples, n) with n = {n}, got shape {w.shape}")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    return w


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, NaN where b == 0."""
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


# ----------------------------------------------------------------------------- perplexity


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Plan strided sliding-window scoring of a token stream of length n_tokens.

    Returns (begin, end, score_from) triples. For each, feed x = tokens[begin:end-1]
    (at most block_size tokens) with targets y = tokens[begin+1:end], and add the losses of
    the tokens with index in [score_from, end), i.e. y[score_from - begin - 1:].
    Every token 1..n_tokens-1 is scored exactly once (token 0 has no context). Token t is
    predicted from tokens[begin:t]; in every window after the first, each scored token has
    at least block_size + 1 - stride >= block_size - stride tokens of context (the Hugging
    Face "perplexity of fixed-length models" scheme). stride == block_size makes the inputs
    x disjoint, consecutive blocks (lm-evaluation-harness rolling windows): fastest, but
    tokens early in a block see little context, so perplexity is higher.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in 1..block_size={block_size}, got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score anything, got n_tokens={n_tokens}")
    windows: list[tuple[int, int, int]] = []
    begin, scored_to = 0, 1  # tokens [1, scored_to) are already scored
    while scored_to < n_tokens:
        end = min(begin + block_size + 1, n_tokens)
        windows.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return windows


def continuation_windows(n_context: int, n_tokens: int, block_size: int) -> list[tuple[int, int, int]]:
    """Windows scoring targets n_context .. n_tokens - 1 of a sequence of n_tokens: chunks of at
    most block_size targets, each fed the (at most) block_size tokens before its last target."""
    if not 1 <= n_context < n_tokens:
        raise ValueError(f"need a context and a continuation, got {n_context} of {n_tokens} tokens")
    out = []
    for first in range(n_context, n_tokens, block_size):
        end = min(first + block_size, n_tokens)
        out.append((max(0, end - 1 - block_size), end, first))
    return out


def spread_windows(n_tokens: int, block: int, budget: int) -> list[tuple[int, int, int]]:
    """About ``budget`` target positions as whole windows of block_size spread evenly over a stream
    (``score_windows`` triples: every target of each window is scored)."""
    count = max(1, min(budget // block, (n_tokens - 1) // (block + 1)))
    starts = np.linspace(0, n_tokens - block - 1, count).astype(int)
    return [(int(b), int(b) + block + 1, int(b) + 1) for b in starts]


def perplexity_summary(
    sum_nll_nats: float, n_tokens: int, n_bytes: int | None = None, n_words: int | None = None
) -> dict[str, float | None]:
    """Summarise a summed negative log-likelihood (lm-evaluation-harness definitions).

    nats_per_token = L / n_tokens, perplexity = exp(L / n_tokens),
    bits_per_byte = L / (n_bytes ln 2), word_perplexity = exp(L / n_words), where L is the
    summed NLL in nats of the scored tokens. Byte and word normalisations make models with
    different tokenizers comparable; they are None when the count is unknown.
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    nats = sum_nll_nats / n_tokens
    return {
        "nats_per_token": nats,
        "perplexity": math.exp(nats),
        "bits_per_byte": sum_nll_nats / (n_bytes * math.log(2)) if n_bytes else None,
        "word_perplexity": math.exp(sum_nll_nats / n_words) if n_words else None,
    }


# ------------------------------------------------------------------ per-token statistics


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(p) = -sum_v p_v log p_v in nats over the last dim (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def _as_float(probs: torch.Tensor) -> torch.Tensor:
    # half / bfloat16 lose too much in sum p^2 and p log p over 50k classes
    return probs if probs.dtype in (torch.float32, torch.float64) else probs.float()


@torch.no_grad()
def token_stats(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token statistics of one chunk of predictive distributions.

    probs (N, V) rows summing to 1, targets (N,) int. Returns 1-D tensors of length N:
      confidence = max_v p_v;  correct = (argmax_v p_v == y);  p_true = p_y;
      nll = -log max(p_y, tiny) (finite for p_y = 0: about 87 nats in float32);
      brier = sum_v (p_v - 1[v=y])^2 = sum_v p_v^2 - 2 p_y + 1  (in [0, 2]);
      entropy = -sum_v p_v log p_v (nats).
    """
    p = _as_float(probs)
    p_true = p.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    confidence, pred = p.max(dim=1)
    return {
        "confidence": confidence,
        "correct": pred == targets,
        "p_true": p_true,
        "nll": -p_true.clamp_min(torch.finfo(p.dtype).tiny).log(),
        "brier": (p * p).sum(1) - 2 * p_true + 1,
        "entropy": entropy(p),
    }


# ----------------------------------------------------------------------------- calibration


class ReliabilityCurve(NamedTuple):
    """Non-empty bins only: mean confidence, accuracy (mean of `correct`) and count per bin."""

    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


def reliability_curve(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, scheme: BinScheme = "width"
) -> ReliabilityCurve:
    """Bin tokens by confidence and average confidence and correctness within each bin.

    scheme="width": bins [b/B, (b+1)/B) on [0, 1], the last one closed (Guo et al. 2017).
    scheme="mass": bin edges at the B-quantiles of the confidences, so bins hold equal
    counts; tied confidences always share a bin (splitting a tie would invent a
    confidence-accuracy gap), so repeated values give fewer, larger bins. Empty bins are
    dropped. `correct` may be 0/1
    outcomes or probabilities of being correct (see true_probability_ece).
    """
    conf, corr = _np(confidence), _np(correct)
    if conf.shape != corr.shape or conf.size == 0:
        raise ValueError(f"need equal-length non-empty inputs, got {conf.shape} and {corr.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if scheme == "width":
        bin_of = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1).clip(0)
    elif scheme == "mass":
        inner_edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
        bin_of = np.searchsorted(inner_edges, conf, side="right")
    else:
        raise ValueError(f"scheme must be 'width' or 'mass', got {scheme!r}")
    groups = [g for g in (np.flatnonzero(bin_of == b) for b in range(n_bins)) if g.size]
    return ReliabilityCurve(
        confidence=np.array([conf[g].mean() for g in groups]),
        accuracy=np.array([corr[g].mean() for g in groups]),
        counts=np.array([g.size for g in groups], dtype=np.int64),
    )


def expected_calibration_error(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    scheme: BinScheme = "width",
    weights: ArrayLike | None = None,
) -> float:
    """ECE = sum_b (n_b / N) |mean confidence_b - accuracy_b| over the bins of reliability_curve.

    weights: per-token integer weights (equal-width bins only; see ``ece_resampled``)."""
    if weights is not None:
        if scheme != "width":
            raise ValueError(f"weighted ECE needs equal-width bins, got scheme={scheme!r}")
        return float(ece_resampled(confidence, correct, weights, n_bins)[0])
    curve = reliability_curve(confidence, correct, n_bins, scheme)
    weights = curve.counts / curve.counts.sum()
    return float(np.sum(weights * np.abs(curve.confidence - curve.accuracy)))


def ece_resampled(confidence: ArrayLike, correct: ArrayLike, weights: ArrayLike, n_bins: int = 15) -> np.ndarray:
    """Equal-width-bin ECE under each row of per-token ``weights`` (R, n) at once: (R,)."""
    conf, corr = _np(confidence), _np(correct)
    if conf.shape != corr.shape or conf.size == 0:
        raise ValueError(f"need equal-length non-empty inputs, got {conf.shape} and {corr.shape}")
    w = _weight_rows(weights, conf.size)
    bin_of = width_bins(conf, n_bins)
    order = np.argsort(bin_of, kind="stable")
    gap = np.add.reduceat(w[:, order] * (conf - corr)[order], _group_starts(bin_of[order]), axis=1)
    return ece_from_sums(gap, w.sum(1))


def width_bins(confidence: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """The equal-width bin of each confidence: [b/B, (b+1)/B), the last one closed."""
    return np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1).clip(0)


def ece_from_sums(gap: np.ndarray, total: np.ndarray) -> np.ndarray:
    """ECE from each bin's weighted sum of (confidence - correct) and the total weight:
    sum_b |sum_{i in b} w_i (conf_i - correct_i)| / sum_i w_i (= sum_b (W_b / W) |conf_b - acc_b|)."""
    return _ratio(np.abs(gap).sum(-1), total)


@torch.no_grad()
def kl_per_token(p_true: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """KL(p_true || p_model) = sum_v p_v (log p_v - log q_v) per row, in nats.

    0 log 0 = 0; model probabilities are clamped to the smallest normal float so a model
    zero where p_true > 0 costs a large finite amount instead of inf; rounding negatives
    are clamped to 0.
    """
    p, q = _as_float(p_true), _as_float(p_model)
    q = q.clamp_min(torch.finfo(q.dtype).tiny)
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1).clamp_min(0.0)


@torch.no_grad()
def calibration_vs_truth(p_model: torch.Tensor, p_true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token comparison with the exact next-token distribution (synthetic languages).

    p_model, p_true (N, V). Returns kl = KL(p_true || p_model), confidence = max_v q_v and
    true_prob_of_pred = p_true[argmax_v q_v], the exact probability that the model's top-1
    guess is the next token. Feed the last two to true_probability_ece.
    """
    q = _as_float(p_model)
    confidence, pred = q.max(dim=1)
    return {
        "kl": kl_per_token(p_true, q),
        "confidence": confidence,
        "true_prob_of_pred": _as_float(p_true).gather(1, pred.unsqueeze(1)).squeeze(1),
    }


def true_probability_ece(
    confidence: ArrayLike, true_prob_of_pred: ArrayLike, n_bins: int = 15, scheme: BinScheme = "width"
) -> float:
    """ECE against the true distribution: sum_b (n_b/N) |mean conf_b - mean p_true(argmax)_b|.

    Same bins as expected_calibration_error, but each 0/1 outcome is replaced by its
    expectation p_true(argmax q), which is known exactly on a synthetic language. This
    removes the Bernoulli sampling noise that biases the ordinary ECE upwards on small bins.
    """
    return expected_calibration_error(confidence, true_prob_of_pred, n_bins, scheme)


# ---------------------------------------------------------------------------------- AUROC


def _scored_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, y = _np(scores), _np(labels).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def auroc(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative),
    ties counting 1/2 (Mann-Whitney U / (n_pos n_neg), average ranks, O(n log n)).

    labels are truthy for positives. Returns NaN when either class is absent (the AUROC is
    undefined, e.g. a model that is never wrong). For "does uncertainty predict a wrong
    top-1 token" pass scores = uncertainty and labels = ~correct. weights: per-token integer
    weights (``auroc_resampled``).
    """
    if weights is not None:
        return float(auroc_resampled(scores, labels, weights)[0])
    s, y = _scored_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
    rank_sum = mean_rank[inverse.reshape(-1)][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_resampled(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """AUROC under each row of per-token ``weights`` (R, n) at once: (R,), NaN where a class has weight 0."""
    pos, neg = _grouped_by_score(scores, labels, weights)
    return auroc_from_counts(pos, neg)


def _grouped_by_score(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) weight of each distinct score, ascending, per row of ``weights``: (R, G) each."""
    s, y = _scored_labels(scores, labels)
    w = _weight_rows(weights, s.size)
    order = np.argsort(s, kind="stable")
    starts = _group_starts(s[order])
    wo, yo = w[:, order], y[order]
    return np.add.reduceat(wo * yo, starts, axis=1), np.add.reduceat(wo * ~yo, starts, axis=1)


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from the positive and negative weight of each score group, groups ascending (ties within a
    group count 1/2): sum_g P_g (N_{<g} + N_g / 2) / (P N) over the last axis; NaN where P N = 0."""
    below = np.cumsum(neg, axis=-1) - neg
    return _ratio((pos * (below + neg / 2.0)).sum(-1), pos.sum(-1) * neg.sum(-1))


def fpr_at_tpr(scores: ArrayLike, labels: ArrayLike, tpr: float = 0.95, weights: ArrayLike | None = None) -> float:
    """False-positive rate at the highest threshold that flags at least ``tpr`` of the positives.

    An input is flagged when its score >= t. With the positives' scores sorted ascending
    p_(1) <= ... <= p_(n), the highest t flagging >= ceil(tpr n) of them is p_(n - ceil(tpr n) + 1);
    FPR = the share of negatives with score >= t (ties flagged). For OOD detection: positives
    = out-of-domain inputs, scores = uncertainty, "FPR at 95 % TPR". NaN when a class is absent.
    weights: per-token integer weights (``fpr_at_tpr_resampled``).
    """
    if weights is not None:
        return float(fpr_at_tpr_resampled(scores, labels, weights, tpr)[0])
    s, y = _np(scores), _np(labels).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos, neg = np.sort(s[y]), s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    need = math.ceil(tpr * len(pos) - 1e-9)
    threshold = pos[len(pos) - need]
    return float((neg >= threshold).mean())


def fpr_at_tpr_resampled(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike, tpr: float = 0.95) -> np.ndarray:
    """fpr_at_tpr under each row of per-token ``weights`` (R, n) at once: (R,), NaN where a class has weight 0."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    return fpr_from_counts(*_grouped_by_score(scores, labels, weights), tpr)


def fpr_from_counts(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> np.ndarray:
    """fpr_at_tpr from the positive and negative weight of each score group, groups ascending: the
    threshold is the highest group whose weight of positives at or above it reaches ceil(tpr P); the
    FPR the weight of negatives at or above it over N. (R, G) -> (R,); NaN where P N = 0."""
    pos_up = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]  # positive weight at or above each group
    neg_up = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
    need = np.ceil(tpr * pos_up[:, 0] - 1e-9)
    threshold = pos.shape[1] - 1 - np.argmax((pos_up >= need[:, None])[:, ::-1], axis=1)
    fpr = _ratio(np.take_along_axis(neg_up, threshold[:, None], 1)[:, 0], neg_up[:, 0])
    return np.where(pos_up[:, 0] > 0, fpr, np.nan)


def segment_means(values: ArrayLike, length: int) -> np.ndarray:
    """Means of consecutive non-overlapping segments of ``length`` values (a shorter tail is
    dropped unless it is the only segment): per-sequence scores from per-token ones."""
    x = _np(values)
    if length < 1:
        raise ValueError(f"segment length must be >= 1, got {length}")
    n = len(x) // length
    if n == 0:
        return x.mean(keepdims=True) if len(x) else x
    return x[: n * length].reshape(n, length).mean(1)


class RiskCoverage(NamedTuple):
    coverage: np.ndarray  # share of tokens kept, at the end of each group of equal scores
    risk: np.ndarray  # error rate among the kept tokens
    aurc: float  # area under the risk-coverage curve (lower is better)
    aurc_optimal: float  # the same for an oracle that abstains on the errors first


def risk_coverage(uncertainty: ArrayLike, wrong: ArrayLike, weights: ArrayLike | None = None) -> RiskCoverage:
    """Selective prediction (Geifman & El-Yaniv 2017): keep the least uncertain tokens first.

    Keeping the k most confident of n tokens gives coverage k / n and risk = errors among them
    / k. Tokens of equal uncertainty are kept together, so the curve has a point per group;
    AURC = sum over groups of (group size / n) * risk at the group's end, which for distinct
    scores is the mean of the risk over k = 1..n. ``aurc_optimal`` ranks the errors last: the
    floor any score can reach at this error rate (E-AURC = aurc - aurc_optimal).
    weights: per-token integer weights (each token counted that often; see ``aurc_resampled``).
    """
    u, e = _np(uncertainty), _np(wrong)
    if u.shape != e.shape or len(u) == 0:
        raise ValueError(f"uncertainty and wrong must be non-empty and of one length: {u.shape} vs {e.shape}")
    if weights is not None:
        return _weighted_risk_coverage(u, e, _weight_rows(weights, u.size)[0])
    order = np.argsort(u, kind="stable")
    u_sorted, errors = u[order], np.cumsum(e[order])
    ends = np.flatnonzero(np.r_[u_sorted[1:] != u_sorted[:-1], True])  # last index of each tie group
    kept = ends + 1.0
    risk = errors[ends] / kept
    sizes = np.diff(np.r_[0, kept])
    n = len(u)
    k = np.arange(1, n + 1)
    optimal = np.maximum(0.0, k - (n - e.sum())) / k  # all correct tokens first
    return RiskCoverage(kept / n, risk, float((sizes / n * risk).sum()), float(optimal.mean()))


def _weighted_risk_coverage(u: np.ndarray, e: np.ndarray, w: np.ndarray) -> RiskCoverage:
    """risk_coverage with token i counted w_i times: tie groups of weight 0 vanish; the oracle's
    mean over k = 1..n of max(0, k - (n - E)) / k is (E - (n - E)(H_n - H_{n-E})) / n."""
    order = np.argsort(u, kind="stable")
    us, wo = u[order], w[order]
    ends = np.flatnonzero(np.r_[us[1:] != us[:-1], True])
    kept, errors = np.cumsum(wo)[ends], np.cumsum(wo * e[order])[ends]
    keep = np.diff(np.r_[0.0, kept]) > 0
    kept, errors = kept[keep], errors[keep]
    n, n_err = kept[-1], errors[-1]
    if n <= 0:
        raise ValueError("weights sum to 0")
    harmonic = float(np.sum(1.0 / np.arange(n - n_err + 1, n + 1)))  # H_n - H_{n-E}
    optimal = (n_err - (n - n_err) * harmonic) / n
    risk = errors / kept
    return RiskCoverage(kept / n, risk, float((np.diff(np.r_[0.0, kept]) / n * risk).sum()), float(optimal))


def aurc_resampled(uncertainty: ArrayLike, wrong: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """risk_coverage(...).aurc under each row of per-token ``weights`` (R, n) at once: (R,)."""
    u, e = _np(uncertainty), _np(wrong)
    if u.shape != e.shape or len(u) == 0:
        raise ValueError(f"uncertainty and wrong must be non-empty and of one length: {u.shape} vs {e.shape}")
    return aurc_from_counts(*_grouped_by_score(u, e.astype(bool), weights))


def aurc_from_counts(wrong: np.ndarray, right: np.ndarray) -> np.ndarray:
    """AURC from the weight of wrong and right tokens in each uncertainty group, groups ascending:
    sum_g (W_g / W) * (wrong kept / weight kept at the end of group g) over the last axis."""
    sizes = wrong + right
    kept, errors = np.cumsum(sizes, axis=-1), np.cumsum(wrong, axis=-1)
    risk = np.divide(errors, kept, out=np.zeros_like(kept), where=kept > 0)
    return _ratio((sizes * risk).sum(-1), kept[..., -1])


# ---------------------------------------------------------------------- multi-label sets


def _reference_mask(reference_sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted reference ids (-1 padding) and a mask of valid, first-occurrence entries."""
    refs, _ = reference_sets.long().sort(dim=1)
    valid = refs >= 0
    valid[:, 1:] &= refs[:, 1:] != refs[:, :-1]  # a duplicate id counts once
    return refs, valid


@torch.no_grad()
def set_counts(
    pred: torch.Tensor, reference_sets: torch.Tensor, tau: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token counts comparing a predicted set with a reference set.

    pred: (N, V) probabilities, predicted set = {v : p_v >= tau}, or an (N, V) bool mask.
    reference_sets: (N, K) token ids padded with -1 (duplicates count once).
    Returns (tp, n_pred, n_ref), int64 (N,): |pred & ref|, |pred|, |ref|.
    """
    mask = pred if pred.dtype == torch.bool else pred >= tau
    refs, valid = _reference_mask(reference_sets)
    hit = mask.gather(1, refs.clamp_min(0)) & valid
    return hit.sum(1), mask.sum(1), valid.sum(1)


@torch.no_grad()
def set_curve(
    probs: torch.Tensor, reference_sets: torch.Tensor, taus: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """set_counts for several thresholds in one call: (tp (T, N), n_pred (T, N), n_ref (N,)).

    The reference probabilities are gathered once; each threshold costs one chunk-sized
    comparison. Feed row t of tp and n_pred (accumulated over chunks) to set_prf.
    """
    refs, valid = _reference_mask(reference_sets)
    p_ref = probs.gather(1, refs.clamp_min(0))
    tp = torch.stack([((p_ref >= t) & valid).sum(1) for t in taus])
    n_pred = torch.stack([(probs >= t).sum(1) for t in taus])
    return tp, n_pred, valid.sum(1)


def set_prf(tp: ArrayLike, n_pred: ArrayLike, n_ref: ArrayLike) -> dict[str, float]:
    """Precision / recall / F1 of predicted sets from per-token counts.

    micro: P = sum tp / sum n_pred, R = sum tp / sum n_ref,
           F1 = 2 sum tp / (sum n_pred + sum n_ref)  (= harmonic mean of P and R).
    macro: per token P_i = tp_i / n_pred_i, R_i = tp_i / n_ref_i,
           F1_i = 2 tp_i / (n_pred_i + n_ref_i), then the mean over tokens.
    A 0/0 ratio is defined as 0, so an empty predicted set has precision 0 (predicting
    nothing is not rewarded) and an empty reference set has recall 0.
    Also the mean predicted and reference set sizes.
    """
    tp, n_pred, n_ref = _np(tp), _np(n_pred), _np(n_ref)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    def total_ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else 0.0

    return {
        "micro_precision": total_ratio(tp.sum(), n_pred.sum()),
        "micro_recall": total_ratio(tp.sum(), n_ref.sum()),
        "micro_f1": total_ratio(2 * tp.sum(), n_pred.sum() + n_ref.sum()),
        "macro_precision": float(ratio(tp, n_pred).mean()),
        "macro_recall": float(ratio(tp, n_ref).mean()),
        "macro_f1": float(ratio(2 * tp, n_pred + n_ref).mean()),
        "mean_pred_size": float(n_pred.mean()),
        "mean_ref_size": float(n_ref.mean()),
    }


# ------------------------------------------------------------------------------ diversity


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU on the 0-100 scale: mean_i BLEU-4(texts[i], references = all other texts).

    Equals mean_i sacrebleu.sentence_bleu(texts[i], texts[:i] + texts[i+1:]).score
    (13a tokenizer, "exp" smoothing, effective order; the tests check this). Higher means
    less diverse samples: identical texts give 100, texts sharing no token give 0.
    Calling sentence_bleu directly re-extracts every reference's n-grams for every
    hypothesis, O(n^2) (about 20 s for 100 samples of 200 words on one core); instead the
    multi-reference clip count max_{j != i} c_j(g) is read from each n-gram's two largest
    counts, and sacrebleu only scores the resulting statistics.
    """
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    if len(texts) < 2:
        raise ValueError("Self-BLEU needs at least two texts")
    tokenize = Tokenizer13a()
    words = [tokenize(t.rstrip()).split() for t in texts]
    counts = [Counter(tuple(w[k : k + n]) for n in range(1, 5) for k in range(len(w) - n + 1)) for w in words]
    top: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, its text, 2nd largest]
    for i, c in enumerate(counts):
        for gram, k in c.items():
            t = top.get(gram)
            if t is None:
                top[gram] = [k, i, 0]
            elif k > t[0]:
                top[gram] = [k, i, t[0]]
            elif k > t[2]:
                t[2] = k
    lengths = [len(w) for w in words]
    scores = []
    for i, c in enumerate(counts):
        correct, total = [0] * 4, [0] * 4
        for gram, k in c.items():
            best, owner, second = top[gram]
            total[len(gram) - 1] += k
            correct[len(gram) - 1] += min(k, second if owner == i else best)
        # closest reference length, ties to the shorter one (sacrebleu's rule)
        ref_len = min((abs(n - lengths[i]), n) for j, n in enumerate(lengths) if j != i)[1]
        scores.append(
            BLEU.compute_bleu(correct, total, lengths[i], ref_len, smooth_method="exp", effective_order=True).score
        )
    return float(np.mean(scores))


def _word_ngrams(texts: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All whitespace-word n-grams, taken within each text (never across two texts)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.split()
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n = |unique word n-grams| / |word n-grams| pooled over texts (0 if none)."""
    grams = _word_ngrams(texts, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_tokens(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n over token ids: |unique token n-grams| / |token n-grams| pooled over sequences.

    The word version saturates at 1 when samples hold few words (a character model's 64 new
    tokens are about a dozen words, whose 4-grams rarely repeat); token n-grams do not."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct4_study(texts: Sequence[str]) -> float:
    """The 2024 study's Distinct-4 variant: |unique word 4-grams| / |words| (0 if no words).

    Divides by the number of words, not of 4-grams, so it is slightly below distinct_n(·, 4)
    (each text has 3 fewer 4-grams than words). Kept only to compare with its Table 1.
    """
    n_words = sum(len(t.split()) for t in texts)
    return len(set(_word_ngrams(texts, 4))) / n_words if n_words else 0.0


def mean_length_words(texts: Sequence[str]) -> float:
    """Mean number of whitespace-separated words per text."""
    if not texts:
        raise ValueError("no texts")
    return float(np.mean([len(t.split()) for t in texts]))


# ----------------------------------------------------------------------------- selective prediction (weighted)


def selective_resampled(
    uncertainty: ArrayLike, wrong: ArrayLike, weights: np.ndarray, coverages: Sequence[float] = (0.8, 0.9, 0.95)
) -> dict[str, np.ndarray]:
    """PRR, AUGRC, AURC and the risk at each of ``coverages`` under each row of per-token integer
    ``weights`` (R, n) (token i counted w_i times; a block bootstrap's resamples): (R,) each, one sort.

    Keeping the least uncertain tokens first, tie groups together (``risk_coverage``'s curve): at
    the end of group g, coverage c_g = kept / W and risk r_g = wrong kept / kept; with s_g the
    group's share of W, AURC = sum_g s_g r_g, AUGRC = sum_g s_g r_g c_g (the generalized risk
    P(kept and wrong) = r_g c_g, Traub et al. 2024), PRR = (e - AURC) / (e - AURC_oracle) with e the
    error rate (a random order's AURC) and AURC_oracle the AURC of keeping the correct tokens first
    (Malinin et al. 2017; NaN when no order can help: no errors or no correct tokens). risk_at_C is
    r at the first group reaching coverage C."""
    u, e = _np(uncertainty), _np(wrong)
    w = np.atleast_2d(np.asarray(weights))
    if u.shape != e.shape or w.shape[1:] != u.shape or len(u) == 0:
        raise ValueError(f"uncertainty, wrong and weights rows must be non-empty and of one length: {u.shape}, "
                         f"{e.shape}, {w.shape}")  # fmt: skip
    whole = np.issubdtype(w.dtype, np.integer) or np.array_equal(w, np.round(w))  # a bootstrap's counts are ints
    if not whole or w.min() < 0 or (w.sum(1) == 0).any():
        raise ValueError("weights must be non-negative integers, not all 0 in a row")
    if not all(0 < c <= 1 for c in coverages):
        raise ValueError(f"coverages must be in (0, 1], got {list(coverages)}")
    order = np.argsort(u, kind="stable")
    ends = np.flatnonzero(np.r_[u[order][1:] != u[order][:-1], True])  # last index of each tie group
    w = w[:, order].astype(np.float64)  # one gather into the sorted order, reused by both sums
    return _selective_curve(np.cumsum(w, axis=1)[:, ends], np.cumsum(w * e[order], axis=1)[:, ends], coverages)


def selective_from_groups(
    tokens: np.ndarray, errors: np.ndarray, coverages: Sequence[float] = (0.8, 0.9, 0.95)
) -> dict[str, np.ndarray]:
    """``selective_resampled``'s figures from weighted counts per group, (R, G) each: the tokens and the
    wrong ones of each group, groups in ascending uncertainty, each one tie group of the curve (a
    bootstrap's quantile groups give the curve at G points, O(R G) instead of O(R n))."""
    return _selective_curve(np.cumsum(tokens, axis=1), np.cumsum(errors, axis=1), coverages)


def _selective_curve(kept: np.ndarray, errors: np.ndarray, coverages: Sequence[float]) -> dict[str, np.ndarray]:
    """The figures from the tokens and the wrong ones kept at the end of each tie group, (R, G) each."""
    total, n_wrong = kept[:, -1:], errors[:, -1]
    risk = np.divide(errors, kept, out=np.zeros_like(errors), where=kept > 0)
    coverage, share = kept / total, np.diff(kept, axis=1, prepend=0.0) / total
    aurc = (share * risk).sum(1)
    total, correct = total[:, 0], total[:, 0] - n_wrong
    partial_sums = np.r_[0.0, np.cumsum(1.0 / np.arange(1, total.max() + 1))]  # H_0 .. H_max(W)
    harmonic = partial_sums[total.astype(np.int64)] - partial_sums[correct.astype(np.int64)]  # sum_{k=C+1}^W 1/k
    oracle = ((total - correct) - correct * harmonic) / total
    rate = n_wrong / total
    gap = rate - oracle
    out = {
        "prr": np.divide(rate - aurc, gap, out=np.full_like(gap, np.nan), where=gap > 1e-12),
        "augrc": (share * risk * coverage).sum(1),
        "aurc": aurc,
    }
    for c in coverages:
        out[f"risk_at_{c:g}"] = risk[np.arange(len(kept)), (coverage >= c - 1e-12).argmax(1)]
    return out


def _selective(uncertainty: ArrayLike, wrong: ArrayLike, weights: ArrayLike | None, name: str, **kw) -> float:
    w = np.ones(len(_np(uncertainty))) if weights is None else _np(weights)
    return float(selective_resampled(uncertainty, wrong, w[None], **kw)[name][0])


def prr(uncertainty: ArrayLike, wrong: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Prediction-rejection ratio of top-1 error (``selective_resampled``): 1 = the oracle's order,
    0 = random, < 0 worse; NaN when undefined. ``weights``: per-token integer counts."""
    return _selective(uncertainty, wrong, weights, "prr")


def augrc(uncertainty: ArrayLike, wrong: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Area under the generalized risk-coverage curve (``selective_resampled``), in [0, error rate],
    lower is better. ``weights``: per-token integer counts."""
    return _selective(uncertainty, wrong, weights, "augrc")


def risk_at_coverage(
    uncertainty: ArrayLike, wrong: ArrayLike, coverage: float, weights: ArrayLike | None = None
) -> float:
    """Top-1 error of the kept tokens at the first point of the risk-coverage curve whose coverage
    reaches ``coverage`` in (0, 1] (``selective_resampled``). ``weights``: per-token integer counts."""
    return _selective(uncertainty, wrong, weights, f"risk_at_{coverage:g}", coverages=(coverage,))
