"""An evaluation's result, typed, and its ONE headline projection.

``evaluate`` writes and returns the eval JSON (a dict: its keys are an on-disk format);
``EvalResult.from_dict`` reads one, fresh or from disk, into dataclasses. ``headline`` flattens
it into the named figures that every consumer reads: the console (``format_result``),
TensorBoard / W&B (``scalars``), the experiment's results table and the uncertainty table.
A registered per-token metric (``scoring.register_token_metric``) joins the headline by itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..intervals import Interval


def _section(cls, d: dict[str, Any] | None):
    """``cls`` from the keys of ``d`` it declares (others stay in the JSON); None for a missing section."""
    if d is None:
        return None
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class Perplexity:
    tokens_scored: int
    block_size: int
    stride: int
    nats_per_token: float
    perplexity: float
    bits_per_byte: float | None = None
    raw_bce_per_token: float | None = None  # sigmoid heads: the training objective


@dataclass
class Calibration:
    ece_width: float
    ece_mass: float
    brier: float
    nll: float
    accuracy: float
    mean_confidence: float


@dataclass
class Uncertainty:
    mean_entropy: float
    auroc_entropy: float
    auroc_one_minus_confidence: float
    mean_expected_entropy: float | None = None  # several draws only
    mean_mutual_information: float | None = None
    auroc_expected_entropy: float | None = None
    auroc_mutual_information: float | None = None


@dataclass
class Selective:
    aurc: dict[str, float]
    aurc_optimal: float
    error_rate: float | None = None


@dataclass
class Sets:
    reference: str | None = None  # None: skipped, for the reason in ``skipped``
    tau: float | None = None
    micro_f1: float | None = None
    best_micro_f1: float | None = None
    best_tau: float | None = None
    mean_pred_size: float | None = None
    mean_ref_size: float | None = None
    skipped: str | None = None


@dataclass
class GroundTruth:
    true_entropy_rate: float
    true_nats_per_token: float
    excess_nats_per_token: float
    kl_true_model: float
    ece_vs_truth_width: float
    ece_vs_truth_mass: float


@dataclass
class Diversity:
    num_samples: int
    self_bleu: float | None
    distinct_4: float
    distinct_4_study: float
    distinct_4_tokens: float
    mean_length_words: float
    max_new_tokens: int
    prompt_tokens: int


@dataclass
class Ood:
    source: str
    n_tokens: dict[str, int]
    auroc: dict[str, dict[str, float]]  # level ("token", "sequence") -> score -> AUROC
    fpr95: dict[str, dict[str, float]]
    mean: dict[str, dict[str, float]]  # side ("in", "out") -> score -> mean


@dataclass
class Speed:
    scoring_tokens_per_s: float
    scoring_seconds: float
    generation_tokens_per_s: float | None = None


@dataclass
class EvalResult:
    """An eval JSON's figures, typed; ``data`` is the JSON itself."""

    run: str
    step: int
    variant: str
    source: dict[str, Any]
    mc_samples: int
    perplexity: Perplexity
    calibration: Calibration
    uncertainty: Uncertainty
    selective: Selective
    sets: Sets
    speed: Speed
    ground_truth: GroundTruth | None = None
    diversity: Diversity | None = None
    ood: Ood | None = None
    posterior_perplexity: float | None = None  # a stochastic head's posterior mean, beside its draws
    token_metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        post = d.get("posterior_mean")
        return cls(
            run=d["run"],
            step=d["step"],
            variant=d["variant"],
            source=d["source"],
            mc_samples=d["mc_samples"],
            perplexity=_section(Perplexity, d["perplexity"]),
            calibration=_section(Calibration, d["calibration"]),
            uncertainty=_section(Uncertainty, d["uncertainty"]),
            selective=_section(Selective, d["selective"]),
            sets=_section(Sets, d["sets"]),
            speed=_section(Speed, d["speed"]),
            ground_truth=_section(GroundTruth, d.get("ground_truth")),
            diversity=_section(Diversity, d.get("diversity")),
            ood=_section(Ood, d.get("ood")),
            posterior_perplexity=post["perplexity"]["perplexity"] if post else None,
            token_metrics=dict(d.get("token_metrics") or {}),
            data=d,
        )


def headline(ev: EvalResult | dict[str, Any]) -> dict[str, Any]:
    """The named figures of an evaluation (None where it has none): the first ones, in order,
    are the experiment's results.csv columns after the variant."""
    ev = ev if isinstance(ev, EvalResult) else EvalResult.from_dict(ev)
    p, c, u, s = ev.perplexity, ev.calibration, ev.uncertainty, ev.sets
    d, g = ev.diversity, ev.ground_truth
    out: dict[str, Any] = {
        "steps": ev.step,
        "perplexity": p.perplexity,
        "self_bleu": d.self_bleu if d else None,
        "distinct_4_study": d.distinct_4_study if d else None,
        "distinct_4": d.distinct_4 if d else None,
        "nats_per_token": p.nats_per_token,
        "bits_per_byte": p.bits_per_byte,
        "ece": c.ece_width,
        "brier": c.brier,
        "accuracy": c.accuracy,
        "auroc_entropy": u.auroc_entropy,
        "set_f1": s.micro_f1,
        "set_f1_best": s.best_micro_f1,
        "set_best_tau": s.best_tau,
        "set_size": s.mean_pred_size,
        "kl_to_truth": g.kl_true_model if g else None,
        "mutual_information": u.mean_mutual_information,
        "raw_bce": p.raw_bce_per_token,
        **ev.token_metrics,
        "ece_mass": c.ece_mass,
        "auroc_mutual_information": u.auroc_mutual_information,
        "posterior_perplexity": ev.posterior_perplexity,
        **{f"aurc_{k}": v for k, v in ev.selective.aurc.items()},
        "aurc_optimal": ev.selective.aurc_optimal,
        "set_ref_size": s.mean_ref_size,
        "true_entropy_rate": g.true_entropy_rate if g else None,
        "true_nats_per_token": g.true_nats_per_token if g else None,
        "ece_vs_truth": g.ece_vs_truth_width if g else None,
        "distinct_4_tokens": d.distinct_4_tokens if d else None,
        "mean_length_words": d.mean_length_words if d else None,
        "scoring_tokens_per_s": ev.speed.scoring_tokens_per_s,
        "generation_tokens_per_s": ev.speed.generation_tokens_per_s,
        "scoring_seconds": ev.speed.scoring_seconds,
        "draws": ev.mc_samples or 1,
    }
    if ev.ood is not None:
        o = ev.ood
        out.update({f"ood_auroc_{k}": v for k, v in o.auroc["token"].items()})
        out.update({f"ood_auroc_seq_{k}": v for k, v in o.auroc["sequence"].items()})
        out.update({f"ood_fpr95_seq_{k}": v for k, v in o.fpr95["sequence"].items()})
        out.update({f"ood_mean_{side}_{k}": v for side in ("in", "out") for k, v in o.mean[side].items()})
    return out


def interval_of(d: dict[str, Any] | None) -> Interval | None:
    """An ``x_ci`` entry of the eval JSON as an Interval (None when absent)."""
    return Interval(**d) if d else None


def headline_intervals(ev: EvalResult | dict[str, Any]) -> dict[str, Interval]:
    """The block-bootstrap interval of each headline figure that has one (``bootstrap.token_intervals``):
    the same names as ``headline``; empty for an eval JSON written without intervals."""
    d = ev.data if isinstance(ev, EvalResult) else ev
    sections = {k: d.get(k) or {} for k in ("perplexity", "calibration", "uncertainty", "selective", "sets", "ood")}
    found: dict[str, dict[str, Any] | None] = {
        "perplexity": sections["perplexity"].get("perplexity_ci"),
        "nats_per_token": sections["perplexity"].get("nats_per_token_ci"),
        "ece": sections["calibration"].get("ece_width_ci"),
        "brier": sections["calibration"].get("brier_ci"),
        "accuracy": sections["calibration"].get("accuracy_ci"),
        "auroc_entropy": sections["uncertainty"].get("auroc_entropy_ci"),
        "auroc_mutual_information": sections["uncertainty"].get("auroc_mutual_information_ci"),
        "set_f1": sections["sets"].get("micro_f1_ci"),
    }
    found.update({f"aurc_{k}": v for k, v in (sections["selective"].get("aurc_ci") or {}).items()})
    ood = sections["ood"]
    for prefix, key, level in (
        ("ood_auroc_", "auroc_ci", "token"),
        ("ood_auroc_seq_", "auroc_ci", "sequence"),
        ("ood_fpr95_seq_", "fpr95_ci", "sequence"),
    ):
        found.update({prefix + k: v for k, v in (ood.get(key) or {}).get(level, {}).items()})
    return {k: iv for k, v in found.items() if (iv := interval_of(v)) is not None}


NOT_LOGGED = ("steps", "draws", "scoring_seconds")  # the step is the x axis; the others describe the run


def scalars(ev: EvalResult | dict[str, Any], prefix: str) -> dict[str, float]:
    """The headline's finite numbers as ``prefix/name``, for TensorBoard and W&B."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in headline(ev).items()
        if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    }


def _with_ci(h: dict[str, Any], cis: dict[str, Interval], key: str, fmt: str = "{:.4f}") -> str:
    """'0.1234 [0.1100, 0.1300]' with the figure's interval, the figure alone without one."""
    return cis[key].format(fmt) if key in cis else fmt.format(h[key])


def format_result(ev: EvalResult | dict[str, Any]) -> str:
    """The console summary of ``gptv eval``: the headline's figures with their 95 % intervals, a line per section."""
    ev = ev if isinstance(ev, EvalResult) else EvalResult.from_dict(ev)
    h, src, cis = headline(ev), ev.source, headline_intervals(ev)

    def f(key: str, fmt: str = "{:.4f}") -> str:
        return _with_ci(h, cis, key, fmt)

    lines = [
        f"{ev.variant} (step {ev.step}) on {src['name']}: {ev.perplexity.tokens_scored:,} tokens, "
        f"stride {ev.perplexity.stride}"
    ]
    if src.get("unknown", {}).get("count"):
        unk = src["unknown"]
        lines.append(
            f"  {unk['count']:,} piece(s) the tokenizer cannot encode were dropped ({unk['distinct']} distinct, "
            f"e.g. {', '.join(repr(k) for k in list(unk['examples'])[:5])})"
        )
    lines += _interval_note(ev.data.get("intervals"))
    lines += [
        f"  perplexity {f('perplexity')}  nats/token {f('nats_per_token')}"
        + (f"  bits/byte {h['bits_per_byte']:.4f}" if h["bits_per_byte"] else "")
        + (f"  raw BCE {h['raw_bce']:.4f}" if h["raw_bce"] is not None else ""),
        f"  ECE {f('ece')} (mass {h['ece_mass']:.4f})  Brier {f('brier')}  accuracy {f('accuracy')}",
        f"  AUROC(entropy) {f('auroc_entropy')}",
        "  selective prediction AURC: "
        + ", ".join(f"{k} {f(f'aurc_{k}')}" for k in ev.selective.aurc)
        + f" (oracle {h['aurc_optimal']:.4f})",
    ]
    if h["posterior_perplexity"] is not None:
        lines.append(
            f"  posterior mean: perplexity {h['posterior_perplexity']:.4f}; mutual information "
            f"{h['mutual_information']:.5f} nats, AUROC(MI) {f('auroc_mutual_information')}"
        )
    if h["set_f1"] is not None:
        lines.append(
            f"  sets vs {ev.sets.reference}: F1 {f('set_f1')} at tau {ev.sets.tau} (best "
            f"{h['set_f1_best']:.4f} at {h['set_best_tau']}), "
            f"mean size {h['set_size']:.2f} (reference {h['set_ref_size']:.2f})"
        )
    if ev.ground_truth:
        lines.append(
            f"  truth: entropy rate {h['true_entropy_rate']:.4f}, ideal nats/token {h['true_nats_per_token']:.4f}, "
            f"KL {h['kl_to_truth']:.4f}, ECE vs truth {h['ece_vs_truth']:.4f}"
        )
    lines += _ood_lines(ev.ood, h, cis)
    if ev.diversity:
        bleu = "-" if h["self_bleu"] is None else f"{h['self_bleu']:.2f}"
        lines.append(
            f"  {ev.diversity.num_samples} samples: Self-BLEU {bleu}, Distinct-4 words {h['distinct_4']:.4f} "
            f"(study's {h['distinct_4_study']:.4f}), Distinct-4 tokens {h['distinct_4_tokens']:.4f}, "
            f"mean length {h['mean_length_words']:.1f} words"
        )
    if ev.token_metrics:
        lines.append("  " + ", ".join(f"{k} {v:.4f}" for k, v in ev.token_metrics.items()))
    lines.append(
        f"  speed: scoring {h['scoring_tokens_per_s']:,.0f} tok/s"
        + (f", generation {h['generation_tokens_per_s']:,.0f} tok/s" if h["generation_tokens_per_s"] else "")
    )
    return "\n".join(lines)


def _interval_note(boot: dict[str, Any] | None) -> list[str]:
    if not boot:
        return []
    return [
        f"  [95 % intervals: {boot['method']}, {boot['resamples']} resamples of {boot['block_tokens']}-token blocks]"
    ]


def _ood_lines(o: Ood | None, h: dict[str, Any], cis: dict[str, Interval]) -> list[str]:
    if not o:
        return []
    fmt = "{:.3f}"
    return [
        f"  OOD vs {o.source} ({o.n_tokens['out']:,} tokens): AUROC token / sequence",
        *(
            f"    {k} {_with_ci(h, cis, f'ood_auroc_{k}', fmt)} / {_with_ci(h, cis, f'ood_auroc_seq_{k}', fmt)}"
            for k in o.auroc["token"]
        ),
        "    mean in -> out: "
        + ", ".join(f"{k} {o.mean['in'][k]:.4g} -> {o.mean['out'][k]:.4g}" for k in o.mean["in"]),
    ]
