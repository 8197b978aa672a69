"""The eval JSON's intervals: every figure of one scored text from the same block-bootstrap resamples.

A figure ``x`` of a section gets ``x_ci`` beside it (``Interval.to_dict``): its standard error and
95 % percentile interval over ``resamples`` resamples of the scored tokens, drawn by blocks of
``block`` contiguous tokens (tokens of one window share context, so they are not independent).
Every statistic of one text uses the same resamples (per-token integer weights); the OOD section
resamples the in-domain and the out-of-domain tokens independently, and its sequence level the
block_size-token sequences. The settings go in the JSON's ``intervals`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .. import metrics as M
from ..intervals import BLOCK, CHUNK, LEVEL, RESAMPLES, BlockBootstrap
from .summaries import N_BINS
from .uncertainty import available, uncertainty_of

UNCERTAINTY_AUROCS = {  # uncertainty section key -> the per-token statistic it ranks by
    "auroc_entropy": "entropy",
    "auroc_expected_entropy": "expected_entropy",
    "auroc_mutual_information": "mutual_information",
}


@dataclass(frozen=True)
class Resampling:
    """How ``gptv eval`` resamples: ``resamples`` = 0 turns the intervals off."""

    resamples: int = RESAMPLES
    block: int = BLOCK
    seed: int = 1337

    def of(self, n: int, offset: int = 0) -> BlockBootstrap:
        return BlockBootstrap(n, self.block, self.resamples, self.seed + offset)


def _ci(boot: BlockBootstrap, estimate: float, replicates: np.ndarray) -> dict[str, Any]:
    return boot.interval(estimate, replicates).to_dict()


def _resampled_ci(boot: BlockBootstrap, estimate: float, metric, *arrays: np.ndarray) -> dict[str, Any]:
    """The interval of ``metric(*arrays, weights)`` (a ``metrics.*_resampled`` function) over ``boot``."""
    return _ci(boot, estimate, boot.batched(partial(metric, *arrays)))


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
    ece = partial(M.ece_resampled, n_bins=N_BINS)
    cal["ece_width_ci"] = _resampled_ci(boot, cal["ece_width"], ece, t["confidence"], t["correct"])
    wrong = ~t["correct"].astype(bool)
    scores = {k: t[stat] for k, stat in UNCERTAINTY_AUROCS.items() if k in unc and stat in t}
    scores["auroc_one_minus_confidence"] = -t["confidence"]
    for key, score in scores.items():
        unc[f"{key}_ci"] = _resampled_ci(boot, unc[key], M.auroc_resampled, score, wrong)
    sel = result["selective"]
    sel["aurc_ci"] = {
        s: _resampled_ci(boot, sel["aurc"][s], M.aurc_resampled, uncertainty_of(t, s), wrong)
        for s in available(t, need_label_free=True)
    }
    sets = result.get("sets") or {}
    if "micro_f1" in sets and "set_tp" in t:
        f1 = boot.ratios(2 * t["set_tp"], t["set_n_pred"].astype(np.float64) + t["set_n_ref"])
        sets["micro_f1_ci"] = _ci(boot, sets["micro_f1"], f1)
    return settings(how, boot)


def settings(how: Resampling, boot: BlockBootstrap) -> dict[str, Any]:
    return {
        "method": "block bootstrap, percentile interval",
        "block_tokens": boot.block,
        "resamples": how.resamples,
        "seed": how.seed,
        "level": LEVEL,
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
            if min(len(x), len(y)) >= 2:
                boot, auc, fpr = _two_sample(x, y, Resampling(how.resamples, block, how.seed))
                ood["auroc_ci"][level][s] = _ci(boot, ood["auroc"][level][s], auc)
                ood["fpr95_ci"][level][s] = _ci(boot, ood["fpr95"][level][s], fpr)


def _two_sample(x: np.ndarray, y: np.ndarray, how: Resampling) -> tuple[BlockBootstrap, np.ndarray, np.ndarray]:
    """(the in-domain bootstrap, AUROC and FPR95 replicates) of negatives ``x`` vs positives ``y``,
    each side resampled by its own blocks."""
    boot_x, boot_y = how.of(len(x)), how.of(len(y), offset=1)
    scores, labels = np.concatenate([x, y]), np.r_[np.zeros(len(x), bool), np.ones(len(y), bool)]
    step = max(1, CHUNK // len(scores))
    auc, fpr = [], []
    for i in range(0, how.resamples, step):
        w = np.concatenate([boot_x.rows(i, i + step), boot_y.rows(i, i + step)], axis=1)
        auc.append(M.auroc_resampled(scores, labels, w))
        fpr.append(M.fpr_at_tpr_resampled(scores, labels, w))
    return boot_x, np.concatenate(auc), np.concatenate(fpr)
