"""The eval JSON's intervals: every figure of one scored text from the same block-bootstrap resamples.

A figure ``x`` of a section gets ``x_ci`` beside it (``Interval.to_dict``): its standard error and
95 % percentile interval over ``resamples`` resamples of the scored tokens, drawn by blocks of
``block`` contiguous tokens (tokens of one window share context, so they are not independent).
Every statistic of one text uses the same resamples; the OOD section resamples the in-domain and
the out-of-domain tokens independently, and its sequence level the block_size-token sequences.

Cost: a resample weights each block by how often it was drawn, so a statistic of sums per group
(ECE's bins; the AUROC's, FPR's and AURC's score groups) is one (blocks, groups) table of sums
and one matrix product with the resamples' block counts (``BlockBootstrap.group_sums``), never a
(resamples, tokens) array. The rank statistics group their scores into ``BINS`` quantile bins
for the resamples only; each replicate is shifted by (exact estimate - binned estimate), so the
binning moves the interval by about the binning error of the estimate itself, far below its width
(tests/test_evaluation_intervals.py compares with the exact per-token weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from ..common.errors import InputError
from ..intervals import BINS, BLOCK, LEVEL, RESAMPLES, BlockBootstrap, Interval, quantile_groups
from .summaries import N_BINS
from .uncertainty import available, uncertainty_of

UNCERTAINTY_AUROCS = {  # uncertainty section key -> the per-token statistic it ranks by
    "auroc_entropy": "entropy",
    "auroc_expected_entropy": "expected_entropy",
    "auroc_mutual_information": "mutual_information",
}
Counts = tuple[np.ndarray, np.ndarray]  # (positive, negative) weight per ascending score group


@dataclass(frozen=True)
class Resampling:
    """How ``gptv eval`` resamples: ``resamples`` = 0 turns the intervals off."""

    resamples: int = RESAMPLES
    block: int = BLOCK
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.resamples == 1 or self.resamples < 0 or self.block < 1:
            raise InputError(
                f"resamples must be 0 (no intervals) or >= 2 and block >= 1, got {self.resamples} and {self.block}"
            )

    def of(self, n: int, offset: int = 0) -> BlockBootstrap:
        return BlockBootstrap(n, self.block, self.resamples, self.seed + offset)


def _ci(boot: BlockBootstrap, estimate: float, replicates: np.ndarray) -> dict[str, Any]:
    return boot.interval(estimate, replicates).to_dict()


def _shifted_ci(
    boot: BlockBootstrap, estimate: float, statistic: Callable[..., np.ndarray], full: Counts, resampled: Counts
) -> dict[str, Any]:
    """The interval of ``statistic`` over the resampled group counts, each replicate shifted by the
    exact estimate minus the statistic of the full data's group counts (the binning error)."""
    shift = estimate - float(statistic(full[0][None], full[1][None])[0])
    return _ci(boot, estimate, statistic(*resampled) + shift)


def _rank_replicates(
    boot: BlockBootstrap, statistic: Callable[..., np.ndarray], estimate: float, score: np.ndarray, positive: np.ndarray
) -> np.ndarray:
    """A rank statistic's replicates over ``boot`` from the quantile-group counts of ``score``, each
    shifted by ``estimate`` minus the statistic of the full data's group counts (the binning error)."""
    full, resampled = one_sample_counts(boot, score, positive)
    return statistic(*resampled) + estimate - float(statistic(full[0][None], full[1][None])[0])


def one_sample_counts(
    boot: BlockBootstrap, score: np.ndarray, positive: np.ndarray, bins: int = BINS
) -> tuple[Counts, Counts]:
    """(full, resampled) positive and negative counts per quantile group of ``score``."""
    groups, k = quantile_groups(score, bins)
    pos, neg = positive.astype(np.float64), (~positive).astype(np.float64)
    full = (np.bincount(groups, pos, k), np.bincount(groups, neg, k))
    return full, (boot.group_sums(groups, k, pos), boot.group_sums(groups, k, neg))


def token_intervals(result: dict[str, Any], t: dict[str, np.ndarray], how: Resampling) -> dict[str, Any]:
    """Add ``x_ci`` beside the perplexity, NLL, ECE, Brier, accuracy, uncertainty AUROCs, AURCs and
    set F1 of ``result`` (the eval JSON) from its per-token statistics ``t``; returns the settings."""
    boot = how.of(len(t["nll"]))
    nats = boot.means(t["nll"].astype(np.float64))
    ppl, cal, unc = result["perplexity"], result["calibration"], result["uncertainty"]
    ppl["nats_per_token_ci"] = _ci(boot, ppl["nats_per_token"], nats)
    ppl["perplexity_ci"] = _ci(boot, ppl["perplexity"], np.exp(nats))
    cal["nll_ci"] = _ci(boot, cal["nll"], nats)
    cal["brier_ci"] = _ci(boot, cal["brier"], boot.means(t["brier"]))
    cal["accuracy_ci"] = _ci(boot, cal["accuracy"], boot.means(t["correct"]))
    cal["ece_width_ci"] = _ci(boot, cal["ece_width"], _ece_replicates(boot, t))
    wrong = ~t["correct"].astype(bool)
    scores = {k: t[stat] for k, stat in UNCERTAINTY_AUROCS.items() if k in unc and stat in t}
    scores["auroc_one_minus_confidence"] = -t["confidence"]
    for key, score in scores.items():
        unc[f"{key}_ci"] = _ci(boot, unc[key], _rank_replicates(boot, M.auroc_from_counts, unc[key], score, wrong))
    sel = result["selective"]
    sel["aurc_ci"] = {}
    for s in available(t, need_label_free=True):
        reps = _rank_replicates(boot, M.aurc_from_counts, sel["aurc"][s], uncertainty_of(t, s), wrong)
        sel["aurc_ci"][s] = _ci(boot, sel["aurc"][s], reps)
    sets = result.get("sets") or {}
    if "micro_f1" in sets and "set_tp" in t:
        f1 = boot.ratios(2 * t["set_tp"], t["set_n_pred"].astype(np.float64) + t["set_n_ref"])
        sets["micro_f1_ci"] = _ci(boot, sets["micro_f1"], f1)
    return {
        "method": "block bootstrap, percentile interval",
        "block_tokens": boot.block,
        "resamples": how.resamples,
        "seed": how.seed,
        "level": LEVEL,
        "rank_statistic_bins": BINS,
    }


def ood_intervals(
    ood: dict[str, Any], inside: dict[str, np.ndarray], outside: dict[str, np.ndarray], seq_len: int, how: Resampling
) -> None:
    """Add ``auroc_ci`` and ``fpr95_ci`` (level -> score -> interval) to the ``ood`` section: the two
    texts resampled independently, by blocks of tokens (token level) or of sequences (sequence level)."""
    ood["auroc_ci"], ood["fpr95_ci"] = {"token": {}, "sequence": {}}, {"token": {}, "sequence": {}}
    for s in ood["auroc"]["token"]:
        a, b = uncertainty_of(inside, s), uncertainty_of(outside, s)
        for level, x, y, block in (
            ("token", a, b, how.block),
            ("sequence", M.segment_means(a, seq_len), M.segment_means(b, seq_len), max(1, how.block // seq_len)),
        ):
            if min(len(x), len(y)) < 2:
                continue
            boot, full, resampled = _two_sample(x, y, Resampling(how.resamples, block, how.seed))
            ood["auroc_ci"][level][s] = _shifted_ci(boot, ood["auroc"][level][s], M.auroc_from_counts, full, resampled)
            ood["fpr95_ci"][level][s] = _shifted_ci(boot, ood["fpr95"][level][s], M.fpr_from_counts, full, resampled)


def _two_sample(x: np.ndarray, y: np.ndarray, how: Resampling) -> tuple[BlockBootstrap, Counts, Counts]:
    """(the in-domain bootstrap, full and resampled counts per score group) of negatives ``x`` vs
    positives ``y``, each side resampled by its own blocks."""
    boot_x, boot_y = how.of(len(x)), how.of(len(y), offset=1)
    groups, k = quantile_groups(np.concatenate([x, y]))
    gx, gy = groups[: len(x)], groups[len(x) :]
    full = (np.bincount(gy, minlength=k).astype(np.float64), np.bincount(gx, minlength=k).astype(np.float64))
    return boot_x, full, (boot_y.group_sums(gy, k), boot_x.group_sums(gx, k))


TOKEN_FILE_STATS = ("nll", "brier", "confidence", "correct", "entropy", "mutual_information")


def token_file(eval_json: Path) -> Path:
    """RUN/eval/<stem>.tokens.npz beside the eval JSON: the per-token statistics a paired comparison
    of two runs scored on the same tokens resamples (``verdicts``)."""
    return eval_json.with_suffix(".tokens.npz")


def save_token_stats(eval_json: Path, tokens: dict[str, np.ndarray]) -> Path:
    path = token_file(eval_json)
    with open(path, "wb") as f:  # a file object: savez would append .npz to a path that lacks it
        arrays: dict[str, Any] = {k: np.asarray(tokens[k]) for k in TOKEN_FILE_STATS if k in tokens}
        np.savez_compressed(f, **arrays)
    return path


def paired_figures(a: dict[str, np.ndarray], b: dict[str, np.ndarray], how: Resampling) -> dict[str, Interval]:
    """Figure of a - figure of b with its paired block-bootstrap interval, for two systems scored on
    the same tokens (the same resamples weigh both): nats_per_token, brier, ece, auroc_entropy and,
    when both have it, auroc_mutual_information."""
    n = len(a["nll"])
    if len(b["nll"]) != n:
        raise ValueError(f"paired statistics need the same tokens, got {n} and {len(b['nll'])}")
    boot = how.of(n)
    out = {
        k: boot.paired_interval(float(a[k].mean()), float(b[k].mean()), boot.means(a[k]), boot.means(b[k]))
        for k in ("nll", "brier")
    }
    out["nats_per_token"] = out.pop("nll")
    ece = [M.expected_calibration_error(t["confidence"], t["correct"], N_BINS, "width") for t in (a, b)]
    out["ece"] = boot.paired_interval(ece[0], ece[1], _ece_replicates(boot, a), _ece_replicates(boot, b))
    for key, stat in (("auroc_entropy", "entropy"), ("auroc_mutual_information", "mutual_information")):
        if stat in a and stat in b:
            r = [_auroc_replicates(boot, t[stat], ~t["correct"].astype(bool)) for t in (a, b)]
            out[key] = boot.paired_interval(r[0][0], r[1][0], r[0][1], r[1][1])
    return out


def within_difference(t: dict[str, np.ndarray], score_a: str, score_b: str, how: Resampling) -> Interval:
    """AUROC(score_a) - AUROC(score_b) for flagging a wrong top-1 token, within one system, paired."""
    boot, wrong = how.of(len(t["nll"])), ~t["correct"].astype(bool)
    (ea, ra), (eb, rb) = (_auroc_replicates(boot, t[s], wrong) for s in (score_a, score_b))
    return boot.paired_interval(ea, eb, ra, rb)


def _ece_replicates(boot: BlockBootstrap, t: dict[str, np.ndarray]) -> np.ndarray:
    """Equal-width-bin ECE in every resample (exact: per-bin sums of confidence - correct)."""
    conf = t["confidence"].astype(np.float64)
    gap = boot.group_sums(M.width_bins(conf, N_BINS), N_BINS, conf - t["correct"])
    total = boot.group_sums(np.zeros(len(conf), np.int64), 1)[:, 0]  # each resample's token count
    return M.ece_from_sums(gap, total)


def _auroc_replicates(boot: BlockBootstrap, score: np.ndarray, wrong: np.ndarray) -> tuple[float, np.ndarray]:
    estimate = M.auroc(score, wrong)
    return estimate, _rank_replicates(boot, M.auroc_from_counts, estimate, score, wrong)
