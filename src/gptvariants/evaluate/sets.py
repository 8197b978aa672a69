"""The "Sets" section of ``gptv experiment``: conformal next-token sets of every variant and method.

For each system (runs under a method, ``comparators.System``) and each alpha of ``ALPHAS``, the
sets of every conformity score (``predict.conformal``) are fitted on the first half of the
validation split and checked on the second: coverage (promised: >= 1 - alpha), mean set size,
the worst coverage over set-size strata (conditional coverage), and the same thresholds' coverage
and size under shift. An entmax head's own support is one more set, with no threshold.

On the synthetic language the true next-token distribution p* is known, which gives measures
independent of any teacher:
    floor       the size of the smallest set holding 1 - alpha of p*'s mass (no set predictor
                with conditional coverage 1 - alpha can be smaller on average)
    size/floor  mean set size / mean floor
    precision   |C ∩ S| / |C|, recall |C ∩ S| / |S|, S = {v : p*(v) > 0} the true support
    true mass   sum_{v in C} p*(v): the set's coverage given the context, averaged
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.atomic import atomic_write
from ..data.sources import Source, resolve_source, split_source
from ..data.tokenizers import load_tokenizer
from ..predict.conformal import (
    ALPHAS,
    SUPPORT,
    Chunk,
    fit_and_check,
    rules_to_json,
    save_conformal,
    set_names,
    summary,
)
from ..predict.methods import load_runs
from ..predict.prediction import Prediction, build_predictor, temperature_key
from .comparators import System, store, stored, system_key
from .report import Column
from .scoring import Rows

SETS_FILE = "sets.json"
TOLERANCE = 0.015  # coverage this far below 1 - alpha still counts as valid (the target)
SETS_TABLE: dict[str, Column] = {  # the Sets tables' columns, by row key
    "system": Column("System", "{}"),
    "set": Column("Set", "{}"),
    "coverage": Column("Coverage", "{:.4f}"),
    "mean_size": Column("Mean size", "{:.2f}"),
    "size_floor": Column("Size / floor", "{:.2f}"),
    "worst_stratum": Column("Worst size stratum", "{:.4f}"),
    "precision": Column("Precision", "{:.3f}"),
    "recall": Column("Recall", "{:.3f}"),
    "true_mass": Column("True mass", "{:.4f}"),
    "ood_coverage": Column("OOD coverage", "{:.4f}"),
    "ood_mean_size": Column("OOD mean size", "{:.2f}"),
}


def truth_columns(source: Source, start: int, alphas: Sequence[float]) -> Callable[[Chunk, dict], dict]:
    """An ``on_chunk`` for ``evaluate_rules`` over ``source.tokens[start:]``: per token the floor at each
    alpha and, per set, precision, recall and true mass against p* (module docstring)."""
    assert source.truth is not None  # callers check that the source is the synthetic language
    rows = Rows(source.truth.iter_next_token_probs(source.tokens[:-1]))
    if start:
        rows.take(start)  # row j is p*(. | tokens[:j+1]): target start + 1, the first scored, is row start

    def on_chunk(c: Chunk, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p_true = rows.take(len(c.y)).to(c.p.device)
        out = {}
        cum = p_true.sort(1, descending=True).values.cumsum(1)
        for a in alphas:
            out[f"floor@{a:g}"] = (cum < (1 - a) - 1e-6).sum(1) + 1
        support = p_true > 0
        for name, m in masks.items():
            hit = (m & support).sum(1).float()
            out[f"{name}/precision"] = hit / m.sum(1).clamp_min(1)
            out[f"{name}/recall"] = hit / support.sum(1).clamp_min(1)
            out[f"{name}/true_mass"] = (p_true * m).sum(1)
        return out

    return on_chunk


def _row(system: str, name: str, check: dict[str, np.ndarray], ood: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """One table row: the set ``name`` of ``system`` (``evaluate_rules`` columns in and out of domain)."""
    s = summary(check, name)
    row = {
        "system": system,
        "set": name,
        "coverage": s["coverage"],
        "mean_size": s["mean_size"],
        "worst_stratum": s["worst_size_stratum_coverage"],
        "by_size": s["by_size"],
        "by_entropy": s["by_entropy"],
    }
    alpha = name.split("@")[1] if "@" in name else None
    if f"{name}/precision" in check:
        for k in ("precision", "recall", "true_mass"):
            row[k] = float(check[f"{name}/{k}"].mean())
        if alpha is not None:
            row["floor"] = float(check[f"floor@{alpha}"].mean())
            row["size_floor"] = s["mean_size"] / row["floor"]
    if ood is not None:
        o = summary(ood, name)
        row["ood_coverage"], row["ood_mean_size"] = o["coverage"], o["mean_size"]
    return row


def sets_of_system(
    system: System, data_dir: Path, alphas: Sequence[float], ood: str | None, seed: int, tokens: int | None
) -> list[dict[str, Any]]:
    """The rows of one system; its fit is stored with the run when the system is one run."""
    runs = load_runs(system.runs)
    source = split_source(runs[0].folder, data_dir, "val")
    ids = source.tokens[:tokens] if tokens else source.tokens
    prediction = Prediction(system.method, seed=seed)
    predictor = build_predictor(runs, prediction)
    half = len(ids) // 2
    on_chunk = truth_columns(source, half, alphas) if source.truth is not None else None
    shifted = None
    if ood:
        shifted = resolve_source(ood, runs[0].folder, load_tokenizer(runs[0].folder), source, "val").tokens
        shifted = shifted[: len(ids) - half]
    rules, check, out = fit_and_check(predictor, ids, alphas, ood=shifted, seed=seed, on_chunk=on_chunk)
    names = set_names(rules, predictor)
    if len(runs) == 1:
        record = {"key": temperature_key(runs, prediction), "alphas": list(alphas), "rules": rules_to_json(rules)}
        record["check"] = {n: summary(check, n) for n in names}
        save_conformal(runs[0].folder, record)
    return [_row(system.name, n, check, out) for n in names]


def run_sets(
    out: Path,
    data_dir: Path,
    systems: Sequence[System],
    *,
    alphas: Sequence[float] = ALPHAS,
    ood: str | None = None,
    seed: int = 0,
    tokens: int | None = None,
    file: str = SETS_FILE,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, the report's Sets section) of every system; the rows are also written to OUT/``file``.

    Each system's rows are stored in OUT/<file's stem>/SYSTEM/sets.json with what they depend on
    (``comparators.system_key``, the alphas, ``tokens``) and reused by a rerun, so an interrupted
    experiment resumes its Sets section."""
    rows: list[dict[str, Any]] = []
    for system in systems:
        path = Path(out) / Path(file).stem / system.folder / SETS_FILE
        key = system_key(system, Path(data_dir), ood, seed) | {"alphas": list(alphas), "tokens": tokens}
        done = stored(path, key)
        log(f"sets: {system.name}" + (" (already done)" if done is not None else ""))
        if done is None:
            done = sets_of_system(system, Path(data_dir), alphas, ood, seed, tokens)
            store(path, key, done)
        rows += done
    atomic_write(Path(out) / file, json.dumps({"alphas": list(alphas), "ood": ood, "rows": rows}, indent=1) + "\n")
    return rows, sets_section(rows, alphas, ood)


def smallest_valid(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any] | None:
    """The row of smallest mean size among the sets at ``alpha`` that cover at >= 1 - alpha - TOLERANCE."""
    valid = [r for r in rows if r["set"].endswith(f"@{alpha:g}") and r["coverage"] >= 1 - alpha - TOLERANCE]
    return min(valid, key=lambda r: r["mean_size"]) if valid else None


def sets_section(rows: list[dict[str, Any]], alphas: Sequence[float] = ALPHAS, ood: str | None = None) -> list[str]:
    """The markdown lines of the report's "Sets" section: one table per alpha (and the support sets)."""
    lines = [
        "## Sets",
        "",
        "Split conformal next-token sets (`gptv conformal`): thresholds fitted on the first half of the "
        "validation split, checked on the second. Coverage is promised >= 1 - alpha in domain only"
        + (f"; ood_* columns: the same thresholds on {ood}." if ood else ".")
        + " worst_stratum: the lowest coverage over set-size strata with >= 20 positions. On the synthetic "
        "language: size_floor = mean size / the smallest set holding 1 - alpha of the true distribution's "
        "mass; precision/recall against its support; true_mass = the set's true probability.",
        "",
    ]
    for a in alphas:
        at = [r for r in rows if r["set"].endswith(f"@{a:g}")]
        if not at:
            continue
        lines += [f"### alpha = {a:g} (coverage promised >= {1 - a:g})", "", sets_table(at), ""]
        best = smallest_valid(rows, a)
        if best is not None:
            ratio = f" ({best['size_floor']:.2f} x the floor)" if "size_floor" in best else ""
            lines += [
                f"Smallest valid sets: {best['system']}, {best['set']}: {best['mean_size']:.2f} tokens{ratio}.",
                "",
            ]
    support = [r for r in rows if r["set"] == SUPPORT]
    if support:
        lines += ["### The sparse heads' own support (no threshold)", "", sets_table(support), ""]
    return lines


def sets_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of Sets rows, with the columns of ``SETS_TABLE`` that any row has ("-": no value)."""
    keys = [k for k in SETS_TABLE if any(k in r for r in rows)]

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)

    lines = ["| " + " | ".join(SETS_TABLE[k].header for k in keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(k), SETS_TABLE[k].fmt) for k in keys) + " |" for r in rows])
