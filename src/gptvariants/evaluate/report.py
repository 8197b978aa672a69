"""Reports: the one catalogue of table columns, the one markdown table writer, every figure
(drawn without a display, on matplotlib's Agg canvas), and the experiment's report.md.

A table is a list of keys into ``COLUMNS`` (and the registered per-token metrics); its rows
are projections of ``result.headline``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import metrics as M
from ..common.atomic import atomic_write
from ..store.run import RunFolder
from .result import headline
from .scoring import TAUS, TOKEN_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Column(NamedTuple):
    header: str
    fmt: str


COLUMNS: dict[str, Column] = {  # every column of every report table, by headline (or row) key
    "variant": Column("Variant", "{}"),
    "system": Column("System", "{}"),
    "perplexity": Column("Perplexity", "{:.4f}"),
    "self_bleu": Column("Self-BLEU", "{:.2f}"),
    "distinct_4_study": Column("Distinct-4 (study)", "{:.4f}"),
    "steps": Column("Steps", "{}"),
    "nats_per_token": Column("Nats/token", "{:.4f}"),
    "bits_per_byte": Column("Bits/byte", "{:.4f}"),
    "ece": Column("ECE", "{:.4f}"),
    "brier": Column("Brier", "{:.4f}"),
    "auroc_entropy": Column("AUROC (entropy)", "{:.3f}"),
    "set_f1": Column("Set F1", "{:.3f}"),
    "set_size": Column("Set size", "{:.2f}"),
    "set_f1_best": Column("Best set F1", "{:.3f}"),
    "set_best_tau": Column("at tau", "{}"),
    "kl_to_truth": Column("KL to truth", "{:.4f}"),
    "mutual_information": Column("MI (nats)", "{:.2e}"),
    "ms_per_step": Column("ms/step", "{:.0f}"),
    "nll": Column("NLL", "{:.4f}"),
    "ece_half": Column("ECE (half)", "{:.4f}"),
    "ece_half_t": Column("ECE after T", "{:.4f}"),
    "temperature": Column("T", "{:.3f}"),
    "nll_half": Column("NLL (half)", "{:.4f}"),
    "nll_half_t": Column("NLL after T", "{:.4f}"),
    "auroc_token_entropy": Column("OOD AUROC tok H", "{:.3f}"),
    "auroc_token_mi": Column("tok MI", "{:.3f}"),
    "auroc_seq_entropy": Column("seq H", "{:.3f}"),
    "auroc_seq_mi": Column("seq MI", "{:.3f}"),
    "mi_in": Column("MI in", "{:.2e}"),
    "mi_out": Column("MI out", "{:.2e}"),
    "aurc_entropy": Column("AURC (H)", "{:.4f}"),
    "train_cost": Column("train cost", "{:.2f}x"),
    "eval_cost": Column("eval cost", "{:.2f}x"),
    "draws": Column("draws", "{}"),
}
EXPERIMENT_TABLE = [  # report.md's results table (results.csv holds every key of ``experiment_row``)
    "variant", "perplexity", "self_bleu", "distinct_4_study", "steps", "nats_per_token", "bits_per_byte", "ece",
    "brier", "auroc_entropy", "set_f1", "set_size", "set_f1_best", "set_best_tau", "kl_to_truth",
    "mutual_information", "ms_per_step",
]  # fmt: skip
ROW_FIGURES = [  # the headline figures of an experiment row, after the variant: results.csv's columns
    "steps", "perplexity", "self_bleu", "distinct_4_study", "distinct_4", "nats_per_token", "bits_per_byte", "ece",
    "brier", "accuracy", "auroc_entropy", "set_f1", "set_f1_best", "set_best_tau", "set_size", "kl_to_truth",
    "mutual_information", "raw_bce",
]  # fmt: skip


def column(key: str) -> Column:
    """A table column by key: the catalogue's, or a registered per-token metric's."""
    if key in TOKEN_METRICS:
        return Column(TOKEN_METRICS[key].header, TOKEN_METRICS[key].fmt)
    return COLUMNS[key]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return fmt.format(value)


def markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """A markdown table of ``rows`` with the columns ``keys`` ("-" for a missing or non-finite value)."""
    cols = [column(k) for k in keys]
    lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k), c.fmt) for k, c in zip(keys, cols)) + " |" for r in rows]
    return "\n".join(lines)


def experiment_table(rows: list[dict[str, Any]]) -> str:
    """The experiment's results table: EXPERIMENT_TABLE and the registered per-token metrics."""
    return markdown_table(rows, EXPERIMENT_TABLE + list(TOKEN_METRICS))


def experiment_row(variant: str, ev: dict[str, Any], run_dir: Path, train_seconds: float | None) -> dict[str, Any]:
    """One row of results.csv: the eval's headline figures, with the run's median step time."""
    h = headline(ev)
    ms = RunFolder(run_dir).ms_per_step()
    return {
        "variant": variant,
        **{k: h[k] for k in ROW_FIGURES},
        **{k: h.get(k) for k in TOKEN_METRICS},
        "ms_per_step": float(np.median(ms)) if ms else None,
        "train_seconds": train_seconds,
    }


# ----------------------------------------------------------------------------- figures


def figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on an Agg canvas: no window, no global pyplot state."""
    # matplotlib is slow to import (benchmarks/README.md, issue 24): only commands that draw pay for it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(
    curves: dict[str, tuple[M.ArrayLike, M.ArrayLike]],
    path: str | Path,
    n_bins: int = 15,
    title: str = "Reliability diagram",
    scheme: M.BinScheme = "width",
) -> Path:
    """Reliability diagram of one or several models, saved as a PNG; returns the path.

    curves maps a label to (confidence, correct). Top panel: accuracy vs. mean confidence
    per bin and the diagonal (perfect calibration), ECE in the legend; bottom panel: token
    counts in n_bins equal-width confidence bins (log scale), i.e. what each point is worth.
    """
    fig = figure((5.5, 6.5))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for label, (conf, corr) in curves.items():
        curve = M.reliability_curve(conf, corr, n_bins, scheme)
        ece = M.expected_calibration_error(conf, corr, n_bins, scheme)
        ax.plot(curve.confidence, curve.accuracy, marker="o", markersize=3, label=f"{label} (ECE {ece:.3f})")
        hist.hist(np.asarray(conf), bins=n_bins, range=(0.0, 1.0), histtype="step", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize="small")
    hist.set(xlabel="confidence (max probability)", ylabel="tokens", yscale="log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_curves(runs: dict[str, Path], path: Path, ideal: float | None = None) -> Path:
    """Validation cross-entropy of the predictive distribution (one scale for every variant) vs
    step; ``ideal``: the true model's cross-entropy on the split (synthetic language), drawn as a line."""
    fig = figure((6.5, 4.2))
    ax = fig.subplots()
    if ideal is not None:
        ax.axhline(ideal, color="grey", linestyle="--", linewidth=1, label="true distribution")
    for name, run_dir in runs.items():
        evals = RunFolder(run_dir).records("eval")
        ax.plot([r["step"] for r in evals], [r["val_ce"] for r in evals], marker="o", markersize=3, label=name)
    ax.set(
        xlabel="step",
        ylabel="validation cross-entropy (nats/token)",
        title="Validation CE of the predictive distribution (fixed batches)",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_reliability_bins(evals: dict[str, dict[str, Any]], path: Path) -> Path:
    """Every variant's reliability curve (15 equal-width bins, from its eval JSON) on one diagram."""
    fig = figure((5.5, 5.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, ev in evals.items():
        c = ev["calibration"]
        ax.plot(
            c["reliability"]["confidence"],
            c["reliability"]["accuracy"],
            marker="o",
            markersize=3,
            label=f"{name} (ECE {c['ece_width']:.3f})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (max probability)",
        ylabel="accuracy",
        title="Reliability, top-1, validation split",
    )
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_ppl_vs_selfbleu(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = figure((5.5, 4.2))
    ax = fig.subplots()
    for r in rows:
        if r["self_bleu"] is not None:
            ax.scatter(r["perplexity"], r["self_bleu"])
            ax.annotate(
                r["variant"],
                (r["perplexity"], r["self_bleu"]),
                fontsize="small",
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set(
        xlabel="validation perplexity (lower is better)",
        ylabel="Self-BLEU (lower = more diverse)",
        title="Quality vs diversity",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_experiment(
    out: Path, runs: dict[str, Path], evals: dict[str, Any], rows: list[dict[str, Any]], ideal: float | None
) -> None:
    """The experiment's figures: curves.png, reliability.png and ppl_vs_selfbleu.png in ``out``."""
    plot_curves(runs, out / "curves.png", ideal)
    plot_reliability_bins(evals, out / "reliability.png")
    plot_ppl_vs_selfbleu(rows, out / "ppl_vs_selfbleu.png")


# ----------------------------------------------------------------------------- report.md


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    evals: dict[str, dict[str, Any]],
    plan: dict[str, Any],
    command: str,
    sections: Sequence[str] = (),
) -> Path:
    """report.md, results.json and results.csv in ``out``."""
    atomic_write(
        out / "results.json",
        json.dumps({"command": command, "plan": plan, "rows": rows, "evals": evals}, indent=1) + "\n",
    )
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "results.csv", table.getvalue())
    any_eval = next(iter(evals.values()))
    lines = [
        *_report_header(rows, any_eval, plan),
        *_how_to_read(any_eval),
        *sections,
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
    ]
    atomic_write(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _report_header(rows: list[dict[str, Any]], any_eval: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The report's title, what was run on which data, the results table and the ground truth."""
    steps = plan["budget_kind"] == "steps"
    budget_kind = "optimizer steps" if steps else "training wall time, converted to steps by timing each variant"
    targets = ""
    if plan.get("targets"):
        rule = (
            "sampled: the distinct tokens among k teacher draws, the true token one of them"
            if plan.get("sets") == "sample"
            else "the study's top rule: the teacher's most probable tokens plus the true one"
        )
        targets = f" Sigmoid variants train on the teacher sets `{plan['targets']}` ({rule})."
    lines = [
        "# gptvariants experiment",
        "",
        f"Data: `{plan['data']}` ({any_eval['perplexity']['tokens_scored']:,} validation tokens scored). "
        f"Budget: {plan['budget']} per variant ({budget_kind}), seed {plan['seed']}." + targets,
        "",
        experiment_table(rows),
        "",
    ]
    truth = any_eval.get("ground_truth")
    if truth:
        lines += [
            f"Ground truth: the ideal model scores {truth['true_nats_per_token']:.4f} nats/token "
            f"(perplexity {np.exp(truth['true_nats_per_token']):.4f}); true entropy rate "
            f"{truth['true_entropy_rate']:.4f} nats.",
            "",
        ]
    return lines


def _how_to_read(any_eval: dict[str, Any]) -> list[str]:
    """What each column of the results table means, with the settings it was measured under."""
    div = any_eval.get("diversity") or {}
    sets = any_eval["sets"].get("reference", "none")
    own = "; built by the baseline itself, so the baseline's own set scores are not independent"
    return [
        "## How to read this",
        "",
        "- **Perplexity** is exp(nats/token) of the predictive distribution on the *held-out* split, every token "
        f"scored once with sliding windows (block {any_eval['perplexity']['block_size']}, stride "
        f"{any_eval['perplexity']['stride']}); sigmoid heads are scored on their readout of sigmoid(z) (normalised; "
        "for sampled sets first inverted, 1 - (1 - s)^(1/k)), Bayesian heads on the mixture of their posterior draws "
        "(the run's mc_samples). Lower is better; the study scored random windows of the training split.",
        f"- **Self-BLEU** (0-100, lower = more diverse) and **Distinct-4** (the study's unique 4-grams / words) over "
        f"{div.get('num_samples', 0)} samples of {div.get('max_new_tokens', 0)} tokens from "
        f"{div.get('prompt_tokens', 0)}-token "
        "validation prompts, temperature 1. Diversity alone rewards word salad: read it next to perplexity.",
        "- **ECE** (15 equal-width bins, top-1) and **Brier**: calibration, lower is better. **AUROC (entropy)**: "
        "how well the predictive entropy flags a wrong top-1 guess (0.5 = not at all).",
        f"- **Set F1**: micro F1 of {{v : q_v >= 0.5}} (sigmoid(z) for sigmoid heads, the probability for "
        f"softmax heads) against the reference sets ({sets}{own if 'ckpt_baseline' in sets else ''}), with the mean "
        "predicted set size; **Best set F1** is the best over thresholds tau in {"
        + ", ".join(map(str, TAUS))
        + "} (a softmax head must spread 1 over the set, so it needs a low tau).",
        "- **KL to truth**: mean KL(p_true || p_model) in nats, synthetic language only (0 = exact). **MI**: mean "
        "mutual information between the next token and the posterior draws (Bayesian heads only).",
        "- **ms/step**: median training step time on this machine.",
        "",
        "Curves: `curves.png` (validation CE on one scale for every variant), `reliability.png`, "
        "`ppl_vs_selfbleu.png`; per-variant details in `runs/VARIANT/eval/val.json` with samples in "
        "`val.samples.jsonl`.",
        "",
    ]
