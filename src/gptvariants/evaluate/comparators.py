"""The uncertainty study of ``gptv experiment --methods``: every variant beside the methods any
uncertainty study compares against, on one table.

Systems (rows), each a set of runs and a ``methods.METHODS`` entry:
    VARIANT                 each trained variant with its own predictive (``default``)
    VARIANT + MC dropout    ``mc_dropout`` on the baseline-dropout variant (trained with dropout 0.1)
    baseline x K runs       a deep ensemble: the baseline and K - 1 more runs of it with other seeds
    ensemble (K heads)      the ``ensemble`` variant: K heads on one backbone, trained together
    baseline + Laplace      ``laplace`` fitted post hoc to the trained baseline (``gptv laplace``)
Temperature scaling is a column, not a row: every system gets a T fitted on the first half of the
validation split (``calibration.fit_temperature``), and its ECE and NLL are reported before and
after on the second half.

Columns: NLL and ECE of the whole validation split (as ``gptv eval``), ECE and NLL before -> after
temperature scaling (second half), OOD AUROC at token and sequence level of the predictive entropy
and of the epistemic score (MI) against the shifted text, AURC of the entropy, and cost: the
training step time and the evaluation time as ratios to the baseline's.

Scores: every score of ``uncertainty.SCORES`` the systems give (the feature density is fitted on
the training split of each system's first run, ``predict.density``) is ranked by token-level OOD
AUROC beside its sequence AUROC, FPR95, PRR, AUGRC and risk at 90 % coverage; PRR and AUGRC carry
block-bootstrap intervals and the verdict of their paired difference from the entropy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..data.sources import split_source
from ..intervals import Interval
from ..predict.calibration import fit_temperature, save_temperature
from ..predict.density import FeatureDensity, fit_density
from ..predict.laplace import fit_laplace
from ..predict.methods import load_runs
from ..store.run import RunFolder
from .evaluation import evaluate
from .report import figure, markdown_table
from .result import headline
from .verdicts import ood_score_sentence

METHOD_CHOICES = ("temperature", "mc_dropout", "ensemble", "laplace")
ENSEMBLE_RUNS = 4  # runs of a deep ensemble (the baseline and 3 more seeds)
ENSEMBLE_STRIDE = 1000  # a member's seed is the experiment seed plus a multiple of this
DEFAULT_OOD = "synthetic?shift=0.5"
SYSTEM_FILE = "system.json"  # a system's stored result in OUT/uncertainty[-seedS]/SYSTEM/
DENSITY_POSITIONS = 100_000  # training positions of each system's feature density
UNCERTAINTY_TABLE = [
    "system", "nll", "ece", "ece_half", "ece_half_t", "temperature", "nll_half", "nll_half_t",
    "auroc_token_entropy", "auroc_token_mi", "auroc_seq_entropy", "auroc_seq_mi", "mi_in", "mi_out", "aurc_entropy",
    "train_cost", "eval_cost", "draws",
]  # fmt: skip


def parse_methods(spec: str | None) -> list[str]:
    """Comma-separated comparator names (or "all"); unknown names raise ValueError."""
    if not spec:
        return []
    names = list(METHOD_CHOICES) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in METHOD_CHOICES]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHOD_CHOICES)} or all")
    return list(dict.fromkeys(names))


def extra_variants(methods: list[str]) -> list[str]:
    """Variants the comparators need trained besides the study's."""
    out = []
    if "mc_dropout" in methods:
        out.append("baseline-dropout")
    if "ensemble" in methods:
        out.append("ensemble")
    return out


def ensemble_seeds(seeds: list[int]) -> dict[int, list[int]]:
    """seed -> the seeds of its deep ensemble's other members: ``seed + 1000 k`` (k = 1, 2, ...), skipping
    the experiment's seeds and another seed's members, so that no run serves two seeds' ensembles (their
    figures would be correlated and the interval over seeds too narrow) nor doubles a seed's baseline."""
    taken, out = set(seeds), {}
    for seed in seeds:
        members: list[int] = []
        k = 1
        while len(members) < ENSEMBLE_RUNS - 1:
            if seed + ENSEMBLE_STRIDE * k not in taken:
                members.append(seed + ENSEMBLE_STRIDE * k)
                taken.add(members[-1])
            k += 1
        out[seed] = members
    return out


@dataclass
class System:
    """One row: runs evaluated under a method."""

    name: str
    runs: list[Path]
    method: str = "default"
    variant: str = "baseline"
    train_runs: list[Path] = field(default_factory=list)  # whose step time is its training cost

    @property
    def folder(self) -> str:
        """The system's folder name under a section's output (uncertainty[-seedS]/, sets[-seedS]/)."""
        return self.name.replace(" ", "_").replace("+", "").replace("__", "_")


def systems(variants: list[str], methods: list[str], runs: dict[str, Path], seed_runs: list[Path]) -> list[System]:
    rows = [System(v, [runs[v]], variant=v, train_runs=[runs[v]]) for v in variants]
    if "mc_dropout" in methods:
        rows.append(
            System(
                "baseline-dropout + MC dropout",
                [runs["baseline-dropout"]],
                "mc_dropout",
                "baseline-dropout",
                [runs["baseline-dropout"]],
            )
        )
    if "ensemble" in methods:
        members = [runs["baseline"], *seed_runs]
        rows.append(System(f"baseline x {len(members)} runs", members, variant="baseline", train_runs=members))
    if "laplace" in methods:
        rows.append(System("baseline + Laplace", [runs["baseline"]], "laplace", "baseline", [runs["baseline"]]))
    return rows


def _ms_per_step(run: Path) -> float:
    ms = RunFolder(run).ms_per_step()
    return float(np.median(ms)) if ms else float("nan")


def system_key(system: System, data_dir: Path, ood: str | None, seed: int) -> dict[str, Any]:
    """What a system's result depends on: its runs at their checkpoint steps, method, data, shift, seed."""
    steps = [RunFolder(r).checkpoint_step() for r in system.runs]
    return {"runs": [str(r) for r in system.runs], "steps": steps, "method": system.method, "data": str(data_dir),
            "ood": ood, "seed": seed}  # fmt: skip


def stored(path: Path, key: dict[str, Any]) -> Any | None:
    """The result ``store`` wrote to ``path`` under the same key, so that an interrupted experiment
    resumes a section; None when there is none, it is damaged or stale."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record["result"] if record["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(path: Path, key: dict[str, Any], result: Any) -> None:
    """Write ``result`` with the key it depends on (``stored`` reads it back), atomically."""
    atomic_write(path, json.dumps({"key": key, "result": result}, allow_nan=True) + "\n")


def reused_result(system: System, data_dir: Path, ood: str, seed: int, out: Path) -> dict[str, Any] | None:
    """The result ``evaluate_system`` stored in ``out`` for the same system, data, shift and seed."""
    return stored(out / SYSTEM_FILE, system_key(system, data_dir, ood, seed))


def evaluate_system(system: System, data_dir: Path, ood: str, seed: int, out: Path) -> dict[str, Any]:
    """``gptv eval`` of the system as trained (no temperature) with the OOD source, and its temperature
    fit (first half of val; before/after on the second half); stored in OUT/system.json for reuse."""

    fits = []
    for run in load_runs(system.runs):
        fit = fit_temperature(run, split_source(run.folder, data_dir, "val").tokens, method=system.method, seed=seed)
        save_temperature(run.folder, fit)
        fits.append(fit)
    ev = evaluate(
        system.runs,
        data_dir,
        out=out / "val.json",
        temperature=False,
        ood=ood,
        num_samples=0,
        seed=seed,
        method=system.method,
        sets="none",
    )
    result = {
        "system": system.name,
        "method": system.method,
        "runs": [str(r) for r in system.runs],
        "temperature": [f["temperature"] for f in fits],
        "fits": fits,
        "eval": ev,
        "train_ms_per_step": sum(_ms_per_step(r) for r in system.train_runs),
    }
    store(out / SYSTEM_FILE, system_key(system, data_dir, ood, seed), result)
    return result


def _row(res: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One row of the uncertainty table: the eval's headline figures, the temperature fits and the costs."""
    h, fits = headline(res["eval"]), res["fits"]
    return {
        "system": res["system"],
        "nll": h["nats_per_token"],
        "ece": h["ece"],
        "ece_half": float(np.mean([f["before"]["ece"] for f in fits])),
        "ece_half_t": float(np.mean([f["after"]["ece"] for f in fits])),
        "nll_half": float(np.mean([f["before"]["nll"] for f in fits])),
        "nll_half_t": float(np.mean([f["after"]["nll"] for f in fits])),
        "temperature": float(np.mean(res["temperature"])),
        "auroc_token_entropy": h["ood_auroc_entropy"],
        "auroc_seq_entropy": h["ood_auroc_seq_entropy"],
        "auroc_token_mi": h.get("ood_auroc_mi"),
        "auroc_seq_mi": h.get("ood_auroc_seq_mi"),
        "auroc_token_surprisal": h["ood_auroc_surprisal"],
        "fpr95_seq_entropy": h["ood_fpr95_seq_entropy"],
        "mi_in": h.get("ood_mean_in_mi"),
        "mi_out": h.get("ood_mean_out_mi"),
        "aurc_entropy": h["aurc_entropy"],
        "train_cost": res["train_ms_per_step"] / base["train_ms_per_step"],
        "eval_cost": h["scoring_seconds"] / headline(base["eval"])["scoring_seconds"],
        "draws": h["draws"],
    }


def run_uncertainty(
    out: Path,
    data_dir: Path,
    variants: list[str],
    methods: list[str],
    runs: dict[str, Path],
    seed_runs: list[Path],
    ood: str,
    seed: int,
    log,
    tag: str = "",
) -> tuple[list[dict[str, Any]], list[str], dict[str, list[dict[str, Any]]]]:
    """Fit, evaluate and tabulate every system; results in OUT/uncertainty{tag}.json, the plot beside it
    (``tag``: "-seedS" for an experiment's other seeds). Returns the rows, the report section and each
    system's ranked scores (``score_rows``)."""

    if "laplace" in methods:
        base = runs["baseline"]
        if RunFolder(base).has_laplace():
            log(f"laplace: {base} (already fitted)")
        else:
            [run] = load_runs(base)
            info = fit_laplace(
                base,
                run.model,
                split_source(base, data_dir, "train").tokens,
                split_source(base, data_dir, "val").tokens,
            )
            log(f"laplace: {info['kind']}, prior precision {info['prior_precision']:.3g}, {info['fit_seconds']:.1f} s")
    rows_of = systems(variants, methods, runs, seed_runs)
    fit_densities(list(dict.fromkeys(s.runs[0] for s in rows_of)), data_dir, log)
    results = []
    for system in rows_of:
        folder = out / f"uncertainty{tag}" / system.folder
        done = reused_result(system, data_dir, ood, seed, folder)
        log(f"uncertainty: {system.name}" + (" (already done)" if done else ""))
        results.append(done or evaluate_system(system, data_dir, ood, seed, folder))
    rows = [_row(r, results[0]) for r in results]
    ranked = {r["system"]: score_rows(r["eval"]) for r in results}
    atomic_write(
        out / f"uncertainty{tag}.json",
        json.dumps(
            {
                "ood": ood,
                "rows": rows,
                "scores": ranked,
                "results": [{k: v for k, v in r.items() if k != "eval"} for r in results],
            },
            indent=1,
        )
        + "\n",
    )
    plot_uncertainty(results, rows, out / f"uncertainty{tag}.png")
    section = uncertainty_section(rows, [r["eval"] for r in results], ood, f"uncertainty{tag}.png")
    return rows, section + scores_section(ranked), ranked


def fit_densities(run_dirs: list[Path], data_dir: Path, log) -> None:
    """Fit the feature density of each run not fitted at its step (``gptv density RUN --positions N``)."""
    for run_dir in run_dirs:
        try:
            if FeatureDensity.load(run_dir, RunFolder(run_dir).step) is not None:
                log(f"density: {run_dir} (already fitted)")
                continue
        except InputError as e:  # fitted at another step, or unreadable: fit again
            log(f"density: {e}")
        [run] = load_runs(run_dir)
        density, info = fit_density(
            run.model, split_source(run_dir, data_dir, "train").tokens, positions=DENSITY_POSITIONS
        )
        density.save(run_dir, {**info, "step": RunFolder(run_dir).checkpoint_step(), "seed": 0})
        log(f"density: {run_dir}, {info['positions']:,} positions, {info['fit_seconds']:.1f} s")


def score_rows(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Every score of one system's eval JSON: OOD AUROC / FPR95 (token, sequence; intervals when the
    eval has them), PRR and AUGRC with intervals, risk at 90 % coverage and the verdicts against the
    entropy; ranked by token-level OOD AUROC."""
    ood, sel = ev.get("ood") or {}, ev["selective"]
    names = list(dict.fromkeys([*ood.get("auroc", {}).get("token", {}), *sel.get("prr", {})]))
    rows = []
    for s in names:
        row: dict[str, Any] = {"score": s}
        for level in ("token", "sequence"):
            for key in ("auroc", "fpr95"):
                row[f"{key}_{level}"] = ood.get(key, {}).get(level, {}).get(s)
                row[f"{key}_{level}_ci"] = ood.get(f"{key}_ci", {}).get(level, {}).get(s)
        for key in ("prr", "augrc"):
            row[key], row[f"{key}_ci"] = sel.get(key, {}).get(s), sel.get(f"{key}_ci", {}).get(s)
            row[f"{key}_vs_entropy"] = sel.get("vs_entropy", {}).get(s, {}).get(key)
        row["risk_at_0.9"] = sel.get("risk_at", {}).get(s, {}).get("0.9")
        rows.append(row)
    return sorted(rows, key=lambda r: -(r["auroc_token"] if r["auroc_token"] is not None else -1.0))


def _cell(value: float | None, ci: dict[str, Any] | None = None, fmt: str = "{:.3f}") -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if ci is None:
        return fmt.format(value)
    return Interval(value, ci["lo"], ci["hi"], ci["se"], ci["n"], ci["method"], ci["level"]).format(fmt)


def _versus(diff: dict[str, Any] | None) -> str:
    return "-" if diff is None else f"{diff['verdict']} ({_cell(diff['estimate'], diff)})"


SCORE_HEADER = (
    "| score | OOD AUROC tok | OOD AUROC seq | FPR95 tok | FPR95 seq | PRR | PRR - PRR(H) | AUGRC | "
    "AUGRC - AUGRC(H) | risk @ 90 % |"
)


def scores_section(ranked: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The report's score ranking: a table per system, ranked by token-level OOD AUROC."""
    lines = [
        "### Scores",
        "",
        "Every uncertainty score, ranked by token-level OOD AUROC (higher is better; FPR95, AUGRC and risk: lower "
        "is better). PRR (prediction-rejection ratio) is for the top-1 error: the share of the oracle's AURC gain "
        "over a random order that the score achieves (1 = oracle, 0 = random). Intervals are 95 % block-bootstrap "
        "intervals over the validation tokens; *PRR - PRR(H)* and *AUGRC - AUGRC(H)* are paired differences from "
        "the predictive entropy on the same resamples, with the verdict their interval allows. The ranking by "
        "AUROC itself states no difference between scores: compare their intervals. energy / max_logit read the "
        "logits; mahalanobis, rel_mahalanobis and knn the final hidden state (feature density fitted on the "
        "training split).",
        "",
    ]
    for system, rows in ranked.items():
        lines += [f"**{system}**", "", SCORE_HEADER, "|" + "---|" * 10]
        for r in rows:
            cells = [
                r["score"],
                _cell(r["auroc_token"], r["auroc_token_ci"]),
                _cell(r["auroc_sequence"], r["auroc_sequence_ci"]),
                _cell(r["fpr95_token"], r["fpr95_token_ci"]),
                _cell(r["fpr95_sequence"], r["fpr95_sequence_ci"]),
                _cell(r["prr"], r["prr_ci"]),
                _versus(r["prr_vs_entropy"]),
                _cell(r["augrc"], r["augrc_ci"], "{:.4f}"),
                _versus(r["augrc_vs_entropy"]),
                _cell(r["risk_at_0.9"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot_uncertainty(results: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> Path:
    """Left: token-level OOD AUROC of the entropy and of MI per system. Middle: risk-coverage curves of
    the entropy per system. Right: the first system's risk-coverage curve of every score."""

    fig = figure((16, 4.2))
    ax, bx, cx = fig.subplots(1, 3)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["auroc_token_entropy"] for r in rows], 0.4, label="entropy")
    ax.bar(x + 0.2, [r["auroc_token_mi"] or 0.0 for r in rows], 0.4, label="mutual information")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, [r["system"] for r in rows], rotation=35, ha="right", fontsize="small")
    ax.set(ylim=(0.3, 1.0), ylabel="token-level OOD AUROC", title="Telling the shifted text apart")
    ax.legend(fontsize="small")
    for res in results:
        curve = res["eval"]["selective"]["curve"]["entropy"]
        bx.plot(curve["coverage"], curve["risk"], label=res["system"], linewidth=1)
    bx.set(
        xlabel="coverage (least uncertain first)",
        ylabel="top-1 error of the kept tokens",
        title="Risk-coverage (entropy)",
    )
    bx.legend(fontsize="x-small")
    first = results[0]["eval"]["selective"]
    for name, curve in first["curve"].items():
        cx.plot(curve["coverage"], curve["risk"], label=name, linewidth=1)
    cx.axhline(first["error_rate"], color="grey", linestyle="--", linewidth=1)
    cx.set(xlabel="coverage (least uncertain first)", title=f"Rejection curves, every score ({results[0]['system']})")
    cx.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def uncertainty_section(rows: list[dict[str, Any]], evals: list[dict[str, Any]], ood: str, plot_name: str) -> list[str]:
    """The report's "Uncertainty" section."""
    best = max(rows, key=lambda r: max(r["auroc_token_mi"] or 0, 0))
    lines = [
        "## Uncertainty",
        "",
        f"Every system on the validation split and, as shifted text, `{ood}`. Temperature T is fitted on the first "
        "half of the validation split and checked on the second half (the *half* columns).",
        "",
        markdown_table(rows, UNCERTAINTY_TABLE),
        "",
        "- **OOD AUROC**: how well a score separates the shifted text's tokens (tok), or its block_size-token "
        "sequences (seq, the mean score), from the in-domain ones; H = predictive entropy, MI = mutual information "
        "between the "
        "token and the draws (epistemic; systems with several draws). 0.5 = no better than chance.",
        "- **AURC (H)**: area under the risk-coverage curve of the top-1 prediction when the most uncertain tokens "
        "are abstained on first (lower is better).",
        "- **train cost / eval cost**: training step time (summed over an ensemble's runs) and evaluation time as "
        "ratios to the baseline's, measured in this run on this machine.",
    ]
    if best["auroc_token_mi"] is not None:  # worded from the interval of the difference, never from the gap alone
        first = evals[rows.index(best)]
        sentence = ood_score_sentence(
            f"MI of {best['system']}", first, "mi", "the baseline's entropy", evals[0], "entropy"
        )
        lines.append(f"- The highest epistemic score: {sentence}")
    lines += ["", f"![uncertainty]({plot_name})", ""]
    return lines
