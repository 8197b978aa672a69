"""The experiment's uncertainty scores and conformal sets over seeds: means, t intervals and the
comparisons those intervals allow.

Each seed gives one value of a figure per system (its runs trained with that seed, scored on the
same held-out and shifted text). A cell is the mean over seeds with its Student-t interval; a
comparison is the paired difference over seeds (``intervals.paired_t_interval``), worded by
``intervals.compare``:
    scores   each score's OOD AUROC (token, sequence) and PRR minus the predictive entropy's, within
             a system: which scores detect the shift better than the entropy
    sets     each system's mean conformal set size over the baseline's (the LAC set at each alpha;
             the size relative to the true floor on the synthetic language): which output layer
             gives the smallest valid sets
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..intervals import Interval, paired_t_interval, t_interval, verdict
from .report import interval_cell
from .sets import TOLERANCE
from .verdicts import finite

SCORE_FIGURES = {"auroc_token": "OOD AUROC tok", "auroc_sequence": "OOD AUROC seq", "prr": "PRR"}
REFERENCE = "entropy"  # the score every other is compared with
WORDS = ("better", "worse")


def _cell(iv: Interval | None, fmt: str = "{:.3f}") -> str:
    """'mean ± half the interval' (``report.interval_cell``); '-' without a value."""
    return "-" if iv is None else interval_cell(iv.estimate, fmt, iv)


def _values(per_seed: Sequence[dict[str, Any] | None], key: str) -> list[float] | None:
    """The figure ``key`` of every seed's row, or None unless every seed has a finite one."""
    vals = [None if row is None else row.get(key) for row in per_seed]
    return [float(v) for v in vals] if all(finite(v) for v in vals) else None  # type: ignore[arg-type]


def score_figures(ranked_by_seed: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """system -> one row per score: each of ``SCORE_FIGURES`` as an interval over seeds (``key``) and
    its paired difference from the entropy (``key_vs``), ordered by mean token-level OOD AUROC.
    ``ranked_by_seed``: seed -> system -> ``comparators.score_rows`` of that seed's eval."""
    seeds = list(ranked_by_seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for system in ranked_by_seed[seeds[0]]:
        if not all(system in ranked_by_seed[s] for s in seeds):
            continue
        by_score = [{r["score"]: r for r in ranked_by_seed[s][system]} for s in seeds]
        reference = [rows.get(REFERENCE) for rows in by_score]
        rows = []
        for score in by_score[0]:
            per_seed = [rows_of.get(score) for rows_of in by_score]
            row: dict[str, Any] = {"score": score, "seeds": len(seeds)}
            for key in SCORE_FIGURES:
                vals, ref = _values(per_seed, key), _values(reference, key)
                row[key] = t_interval(vals) if vals else None
                row[f"{key}_vs"] = paired_t_interval(vals, ref) if vals and ref and score != REFERENCE else None
            rows.append(row)
        out[system] = sorted(rows, key=lambda r: -(r["auroc_token"].estimate if r["auroc_token"] else -1.0))
    return out


def _verdict_cell(
    iv: Interval | None, higher_is_better: bool = True, words: tuple[str, str] = ("better", "worse")
) -> str:
    """'better (+0.012 ± 0.004)', 'worse (...)' or 'n.s. (...)' from ``intervals.verdict``."""
    if iv is None:
        return "-"
    word = {"better": words[0], "worse": words[1]}.get(verdict(iv, higher_is_better), "n.s.")
    return f"{word} ({_digits(iv.estimate, '+')} ± {_digits(iv.hi - iv.estimate)})"


def _digits(x: float, sign: str = "") -> str:
    """Three decimals, or two significant digits where three decimals would print a nonzero figure as 0.000
    (a difference called better must not read +0.000)."""
    return f"{x:{sign}.3f}" if x == 0 or abs(x) >= 0.0005 else f"{x:{sign}.2g}"


def scores_over_seeds_section(figures: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The report's "Scores over seeds": a table per system and the sentences its intervals allow."""
    if not figures:
        return []
    n = next(iter(figures.values()))[0]["seeds"]
    lines = [
        f"### Scores over {n} seeds",
        "",
        f"Each score's figure as the mean over the {n} seeds ± half its 95 % Student-t interval (n = {n}); "
        f"*vs H* is the paired difference from the predictive entropy over the same seeds: better, worse or "
        "n.s. (no significant difference: the interval holds 0). OOD AUROC: higher = the score is higher on "
        "the shifted text; below 0.5 the score is *lower* there (more confident on shifted text).",
        "",
    ]
    header = ["score", *(f"{name}{suffix}" for name in SCORE_FIGURES.values() for suffix in ("", " vs H"))]
    for system, rows in figures.items():
        lines += [f"**{system}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [r["score"]]
            for key in SCORE_FIGURES:
                cells += [_cell(r[key]), _verdict_cell(r[f"{key}_vs"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_score_sentences(system, rows), ""]
    return lines


def _score_sentences(system: str, rows: list[dict[str, Any]]) -> list[str]:
    """Which scores beat the entropy of ``system`` significantly, per level; which are below chance."""
    said = []
    for key, level in (("auroc_token", "token"), ("auroc_sequence", "sequence")):
        better = [r for r in rows if r[f"{key}_vs"] is not None and r[f"{key}_vs"].lo > 0]
        if better:
            names = ", ".join(f"{r['score']} ({_digits(r[f'{key}_vs'].estimate, '+')})" for r in better)
            said.append(f"- {system}, {level}-level OOD AUROC: better than the entropy over the seeds: {names}.")
        else:
            said.append(f"- {system}, {level}-level OOD AUROC: no score beats the entropy significantly.")
        below = [r["score"] for r in rows if r[key] is not None and r[key].hi < 0.5]
        if below:
            said.append(
                f"  Below chance ({level}): {', '.join(below)}: higher in domain than on the shifted text, "
                "the score more confident where the text is shifted."
            )
    return said


def set_figures(
    rows_by_seed: dict[int, list[dict[str, Any]]], alphas: Sequence[float], baseline: str = "baseline"
) -> list[dict[str, Any]]:
    """One row per (system, set) present in every seed: coverage, mean size and size/floor as intervals
    over seeds; for the LAC sets, the paired difference of mean size (and size/floor) from the
    baseline's LAC set at the same alpha (``vs_baseline``, ``floor_vs_baseline``)."""
    seeds = list(rows_by_seed)
    keyed = [{(r["system"], r["set"]): r for r in rows_by_seed[s]} for s in seeds]
    out = []
    for system, name in keyed[0]:
        per_seed = [k.get((system, name)) for k in keyed]
        if any(r is None for r in per_seed):
            continue
        row: dict[str, Any] = {"system": system, "set": name, "seeds": len(seeds)}
        for key in ("coverage", "mean_size", "size_floor", "ood_coverage"):
            vals = _values(per_seed, key)
            row[key] = t_interval(vals) if vals else None
        base = [k.get((baseline, name)) for k in keyed]
        if name.startswith("lac@") and system != baseline and all(b is not None for b in base):
            for key, to in (("mean_size", "vs_baseline"), ("size_floor", "floor_vs_baseline")):
                a, b = _values(per_seed, key), _values(base, key)
                row[to] = paired_t_interval(a, b) if a and b else None
        out.append(row)
    return out


def sets_over_seeds_section(
    figures: list[dict[str, Any]], alphas: Sequence[float], baseline: str = "baseline"
) -> list[str]:
    """The report's "Sets over seeds": per alpha, the LAC set of every system with intervals, and which
    output layer gives the smallest valid sets (valid: mean coverage within tolerance of 1 - alpha)."""
    lac = [r for r in figures if r["set"].startswith("lac@")]
    if not lac:
        return []
    n = lac[0]["seeds"]
    lines = [
        f"### Sets over {n} seeds",
        "",
        f"The LAC set (threshold on the predictive probability) of every system: mean over the {n} seeds ± half "
        f"the 95 % t interval; *vs {baseline}* is the paired difference of mean set size (of size / floor on the "
        "synthetic language) from the baseline's over the same seeds.",
        "",
    ]
    for a in alphas:
        at = [r for r in lac if r["set"] == f"lac@{a:g}"]
        if not at:
            continue
        has_floor = any(r["size_floor"] is not None for r in at)
        key = "floor_vs_baseline" if has_floor else "vs_baseline"
        header = ["System", "Coverage", "Mean size", *(["Size / floor"] if has_floor else []), f"vs {baseline}"]
        lines += [f"alpha = {a:g}:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in at:
            cells = [r["system"], _cell(r["coverage"], "{:.4f}"), _cell(r["mean_size"], "{:.2f}")]
            cells += [_cell(r["size_floor"], "{:.3f}")] if has_floor else []
            cells.append(_verdict_cell(r.get(key), False, ("smaller", "larger")))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_set_sentences(at, a, key, baseline), ""]
    return lines


def _set_sentences(rows: list[dict[str, Any]], alpha: float, key: str, baseline: str) -> list[str]:
    """The smallest valid LAC sets at ``alpha`` and every system whose sets are significantly smaller or
    larger than the baseline's."""
    from_floor = "size / floor" if key == "floor_vs_baseline" else "mean size"
    valid = [r for r in rows if r["coverage"] is not None and r["coverage"].estimate >= 1 - alpha - TOLERANCE]
    said = []
    if valid:
        best = min(valid, key=lambda r: r["mean_size"].estimate)
        said.append(
            f"- Smallest valid sets on average: {best['system']} ({_cell(best['mean_size'], '{:.2f}')} tokens)."
        )
    smaller = [r["system"] for r in rows if r.get(key) is not None and r[key].hi < 0]
    larger = [r["system"] for r in rows if r.get(key) is not None and r[key].lo > 0]
    same = [r["system"] for r in rows if r.get(key) is not None and not r[key].excludes(0.0)]
    for group, word in ((smaller, "smaller than"), (larger, "larger than"), (same, "no significant difference from")):
        if group:
            said.append(f"- {from_floor}: {', '.join(group)} {word} {baseline}'s.")
    return said
