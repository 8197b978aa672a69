"""The scored sections of the eval JSON, from the scoring pass's per-token statistics, and the
conventions each one follows (written into every eval JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from ..data.sources import Source
from ..predict.predictive import Predictor
from ..store.run import RunFolder
from .diversity import PROMPT_TOKENS
from .scoring import EXACT_SUPPORT_THRESHOLD, TAUS, TOKEN_METRICS, metric_column
from .uncertainty import selective_summary

N_BINS = 15


def calibration_summary(t: dict[str, np.ndarray]) -> dict[str, Any]:
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
            "count": curve.counts.tolist(),
        },
    }


def uncertainty_summary(t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean uncertainties and the AUROC of each for predicting that the top-1 guess is wrong."""
    wrong = ~t["correct"].astype(bool)
    names = ["entropy", "expected_entropy", "mutual_information"]
    out: dict[str, Any] = {f"mean_{k}": float(t[k].mean()) for k in names if k in t}
    out.update({f"auroc_{k}": M.auroc(t[k], wrong) for k in names if k in t})
    out["auroc_one_minus_confidence"] = M.auroc(1.0 - t["confidence"], wrong)
    return out


def sets_summary(t: dict[str, np.ndarray], curve: tuple[np.ndarray, np.ndarray], tau: float) -> dict[str, Any]:
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


def ground_truth_summary(t: dict[str, np.ndarray]) -> dict[str, float]:
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


def summarise(
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
        "calibration": calibration_summary(tok),
        "uncertainty": uncertainty_summary(tok),
        "selective": selective_summary(tok),  # its intervals: evaluation._intervals
    }
    if model.objective.sigmoid:
        result["perplexity"]["raw_bce_per_token"] = raw["raw_bce_sum"] / len(tok["nll"])
        trained_on = cfg.objective.targets if raw.get("train_sets_used") else "true token only"
        result["perplexity"]["raw_bce_targets"] = trained_on
    if raw["point"] is not None:
        result["posterior_mean"] = {
            "perplexity": ppl(raw["point"]["nll"]),
            "calibration": calibration_summary(raw["point"]),
            "uncertainty": uncertainty_summary(raw["point"]),
        }
    result["ground_truth"] = ground_truth_summary(tok) if source.truth is not None else None
    if TOKEN_METRICS:
        result["token_metrics"] = {
            name: float(tok[metric_column(name)].astype(np.float64).mean()) for name in TOKEN_METRICS
        }
    return result


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
