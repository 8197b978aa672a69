"""What uncertainty is good for: telling shifted text apart, and knowing when to abstain.

Scores, per token, from the per-token statistics of ``evaluate.score`` (higher = more uncertain;
max_prob enters as 1 - max_prob):
    surprisal          -log p(y): needs the token itself, so it is an OOD score only
    entropy            H[p], the predictive (total) uncertainty
    max_prob           max_v p_v, the top-1 confidence
    mi                 mutual information between the token and the draws (epistemic; several draws)
    expected_entropy   mean entropy of the draws (aleatoric; several draws)
    energy             -logsumexp of the draws' mean logits (a sigmoid head: -log sum_v sigmoid(z_v))
    max_logit          the top mean logit (a sigmoid head's top log-odds), entering as -max_logit
    mahalanobis        min over classes of the Mahalanobis distance of the final hidden state
    rel_mahalanobis    mahalanobis minus the distance under one Gaussian of all training features
    knn                distance of the normalised hidden state to its k-th nearest training feature
The last three need a density fitted by ``gptv density`` (``predict.density``); energy and
max_logit are defined in ``predict.predictive``.

OOD detection: out-of-domain tokens (or sequences: means over consecutive segments of
``seq_len`` tokens) are the positives; AUROC and FPR at 95 % TPR of each score.
Selective prediction: keep the least uncertain tokens first; the risk is the top-1 error rate
of the kept ones; AURC is the area under the risk-coverage curve (lower is better), AUGRC the
area under the generalized risk P(kept and wrong) (lower is better), PRR the share of the oracle's
gain over a random order that the score achieves (higher is better), and the risk at 80/90/95 %
coverage (``metrics.selective_resampled``). PRR and AUGRC carry block-bootstrap intervals, and
each score's paired difference from the entropy on the same resamples carries its verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import metrics as M
from ..intervals import BLOCK, BlockBootstrap, quantile_groups, verdict

# score name -> (per-token statistic, sign that makes higher = more uncertain)
SCORES: dict[str, tuple[str, float]] = {
    "surprisal": ("nll", 1.0),
    "entropy": ("entropy", 1.0),
    "max_prob": ("confidence", -1.0),
    "mi": ("mutual_information", 1.0),
    "expected_entropy": ("expected_entropy", 1.0),
    "energy": ("energy", 1.0),
    "max_logit": ("max_logit", -1.0),
    "mahalanobis": ("mahalanobis", 1.0),
    "rel_mahalanobis": ("rel_mahalanobis", 1.0),
    "knn": ("knn", 1.0),
}
CURVE_POINTS = 50
COVERAGES = (0.8, 0.9, 0.95)


def available(tokens: dict[str, np.ndarray], *, need_label_free: bool = False) -> list[str]:
    """The score names this run's statistics hold (surprisal excluded when ``need_label_free``)."""
    names = [s for s, (k, _) in SCORES.items() if k in tokens]
    return [s for s in names if s != "surprisal"] if need_label_free else names


def uncertainty_of(tokens: dict[str, np.ndarray], score: str) -> np.ndarray:
    key, sign = SCORES[score]
    return sign * tokens[key].astype(np.float64)


def ood_summary(
    inside: dict[str, np.ndarray], outside: dict[str, np.ndarray], seq_len: int, source: str
) -> dict[str, Any]:
    """In-domain vs out-of-domain per-token statistics -> the ``ood`` section of the eval JSON:
    {"source", "n_tokens": {"in", "out"}, "n_sequences": {...}, "sequence_tokens", "mean": {"in": {score: x},
    "out": {...}}, "auroc": {"token": {score: x}, "sequence": {...}}, "fpr95": {"token": ..., "sequence": ...}}."""
    names = [s for s in available(inside) if SCORES[s][0] in outside]
    out: dict[str, Any] = {
        "source": source,
        "n_tokens": {"in": int(len(inside["nll"])), "out": int(len(outside["nll"]))},
        "sequence_tokens": seq_len,
        "mean": {
            side: {s: float(t[SCORES[s][0]].astype(np.float64).mean()) for s in names}
            for side, t in (("in", inside), ("out", outside))
        },
        "auroc": {"token": {}, "sequence": {}},
        "fpr95": {"token": {}, "sequence": {}},
    }
    for s in names:
        a, b = uncertainty_of(inside, s), uncertainty_of(outside, s)
        for level, (x, y) in (
            ("token", (a, b)),
            ("sequence", (M.segment_means(a, seq_len), M.segment_means(b, seq_len))),
        ):
            scores = np.concatenate([x, y])
            labels = np.r_[np.zeros(len(x), bool), np.ones(len(y), bool)]
            out["auroc"][level][s] = M.auroc(scores, labels)
            out["fpr95"][level][s] = M.fpr_at_tpr(scores, labels, 0.95)
    out["n_sequences"] = {
        side: len(M.segment_means(t["nll"], seq_len)) for side, t in (("in", inside), ("out", outside))
    }
    return out


def selective_summary(
    tokens: dict[str, np.ndarray], resamples: int = 0, seed: int = 0, block: int = BLOCK
) -> dict[str, Any]:
    """Risk-coverage of top-1 predictions for every label-free score: AURC, the oracle's AURC,
    the error rate at full coverage, each curve at CURVE_POINTS coverages, ``selective_figures`` and,
    with ``resamples``, ``selective_intervals`` (``gptv eval`` adds those in its timed bootstrap)."""
    wrong = ~tokens["correct"].astype(bool)
    out: dict[str, Any] = {"error_rate": float(wrong.mean()), "aurc": {}, "curve": {}}
    grid = np.linspace(0, 1, CURVE_POINTS + 1)[1:]
    for s in available(tokens, need_label_free=True):
        rc = M.risk_coverage(uncertainty_of(tokens, s), wrong)
        out["aurc"][s] = rc.aurc
        out["aurc_optimal"] = rc.aurc_optimal
        at = np.searchsorted(rc.coverage, grid - 1e-12)  # the first curve point reaching each coverage
        out["curve"][s] = {"coverage": rc.coverage[at].tolist(), "risk": rc.risk[at].tolist()}
    out.update(selective_figures(tokens))
    out.update(selective_intervals(tokens, out, resamples, seed, block))
    return out


def selective_figures(tokens: dict[str, np.ndarray]) -> dict[str, Any]:
    """PRR, AUGRC and risk at COVERAGES of every label-free score."""
    wrong = ~tokens["correct"].astype(bool)
    ones = np.ones((1, len(wrong)))
    names = available(tokens, need_label_free=True)
    full = {s: M.selective_resampled(uncertainty_of(tokens, s), wrong, ones, COVERAGES) for s in names}
    return {
        "prr": {s: float(f["prr"][0]) for s, f in full.items()},
        "augrc": {s: float(f["augrc"][0]) for s, f in full.items()},
        "risk_at": {s: {f"{c:g}": float(f[f"risk_at_{c:g}"][0]) for c in COVERAGES} for s, f in full.items()},
    }


def selective_intervals(
    tokens: dict[str, np.ndarray], figures: dict[str, Any], resamples: int, seed: int = 0, block: int = BLOCK
) -> dict[str, Any]:
    """The block bootstrap's intervals of ``figures``' PRR and AUGRC ("prr_ci", "augrc_ci") and of each
    score's paired difference from the entropy with its verdict ("vs_entropy": score -> {"prr",
    "augrc"}); {} with fewer than 2 resamples or 4 tokens."""
    wrong = ~tokens["correct"].astype(bool)
    if resamples < 2 or len(wrong) < 4:
        return {}
    names = list(figures["prr"])
    boot = BlockBootstrap(len(wrong), min(block, len(wrong) // 2), resamples, seed)
    reps = {
        s: _replicates(boot, uncertainty_of(tokens, s), wrong, {k: figures[k][s] for k in ("prr", "augrc")})
        for s in names
    }
    out: dict[str, Any] = {"bootstrap": boot.method, "vs_entropy": {}}
    for key in ("prr", "augrc"):
        out[f"{key}_ci"] = {s: boot.interval(figures[key][s], reps[s][key]).to_dict() for s in names}
    for s in names if "entropy" in reps else []:
        out["vs_entropy"][s] = {}
        for key, better in (("prr", True), ("augrc", False)):
            diff = boot.interval(figures[key][s] - figures[key]["entropy"], reps[s][key] - reps["entropy"][key])
            out["vs_entropy"][s][key] = {**diff.to_dict(), "verdict": verdict(diff, higher_is_better=better)}
    return out


def _replicates(
    boot: BlockBootstrap, u: np.ndarray, wrong: np.ndarray, exact: dict[str, float]
) -> dict[str, np.ndarray]:
    """PRR and AUGRC in every resample of ``boot`` from the tokens and errors of BINS quantile groups of
    ``u`` (each group one tie group of the curve: O(resamples x groups), not x tokens), each replicate
    shifted by the ``exact`` estimate minus the grouped one (the grouping error), as the AUROC's are."""
    groups, k = quantile_groups(u)
    e = wrong.astype(np.float64)
    full = M.selective_from_groups(np.bincount(groups, minlength=k)[None], np.bincount(groups, e, k)[None], ())
    reps = M.selective_from_groups(boot.group_sums(groups, k), boot.group_sums(groups, k, e), ())
    return {key: reps[key] + exact[key] - float(full[key][0]) for key in ("prr", "augrc")}
