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
from safetensors import safe_open

from .. import metrics as M
from ..common.atomic import atomic_write
from ..intervals import Interval
from ..store.run import RunFolder
from .result import headline
from .scoring import TAUS, TOKEN_METRICS
from .verdicts import SeedStudy, best_cells, differences_section

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
    "ms_per_step": Column("ms/step (noisy)", "{:.0f}"),
    "params": Column("Params", "{:,}"),
    "tokens_seen": Column("Tokens seen", "{:,}"),
    "ood_auroc_entropy": Column("OOD AUROC (H)", "{:.3f}"),
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
HEADLINE_TABLE = [  # report.md's first table; DETAIL_TABLE the rest (results.csv holds every key of ``experiment_row``)
    "variant", "perplexity", "self_bleu", "distinct_4_study", "nats_per_token", "ece", "ood_auroc_entropy", "params",
    "tokens_seen",
]  # fmt: skip
DETAIL_TABLE = [
    "variant", "steps", "bits_per_byte", "brier", "auroc_entropy", "set_f1", "set_size", "set_f1_best", "set_best_tau",
    "kl_to_truth", "mutual_information", "ms_per_step",
]  # fmt: skip
EXPERIMENT_TABLE = [  # every column of both, the console's and earlier reports' one table
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


def interval_cell(value: Any, fmt: str, interval: Interval | None = None, best: bool = False) -> str:
    """The value ("-" when missing or not finite), with "± h" (half the 95 % interval's width) when it
    has one, in bold when ``best``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    text = fmt.format(value)
    if interval is not None and np.isfinite(interval.lo) and np.isfinite(interval.hi):
        text += f" ± {fmt.format((interval.hi - interval.lo) / 2)}"
    return f"**{text}**" if best else text


def markdown_table(
    rows: list[dict[str, Any]],
    keys: list[str],
    intervals: dict[str, dict[str, Interval]] | None = None,
    label: str = "variant",
    best: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> str:
    """A markdown table of ``rows`` with the columns ``keys`` ("-" for a missing or non-finite value);
    ``intervals``: row label -> column key -> the interval printed beside the value; ``best``: the
    (row label, column key) cells set in bold."""
    cols = [column(k) for k in keys]
    cis = intervals or {}
    lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        name = str(r.get(label))
        cells = [
            interval_cell(r.get(k), c.fmt, cis.get(name, {}).get(k), (name, k) in best) for k, c in zip(keys, cols)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def experiment_table(rows: list[dict[str, Any]], intervals: dict[str, dict[str, Interval]] | None = None) -> str:
    """The experiment's results in one table: EXPERIMENT_TABLE and the registered per-token metrics."""
    return markdown_table(rows, EXPERIMENT_TABLE + list(TOKEN_METRICS), intervals)


def filled(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """``keys`` without the columns no row has a value for (the label column always stays)."""
    return [k for i, k in enumerate(keys) if i == 0 or any(r.get(k) is not None for r in rows)]


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


LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]


def style(i: int) -> dict[str, Any]:
    """The i-th line's style: a colour, line style and marker of its own, so that 7+ lines that lie on
    top of each other stay distinguishable."""
    return {"color": f"C{i % 10}", "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def plot_curves(
    runs: dict[str, Path], path: Path, ideal: float | None = None, more: Sequence[dict[str, Path]] = ()
) -> Path:
    """Validation cross-entropy of the predictive distribution (one scale for every variant) vs
    step; ``ideal``: the true model's cross-entropy on the split (synthetic language), drawn as a line.
    ``more``: the same variants' runs at other seeds: the line is then the mean over seeds and the
    band spans the lowest to the highest seed."""
    fig = figure((6.5, 4.2))
    ax = fig.subplots()
    if ideal is not None:
        ax.axhline(ideal, color="grey", linestyle="--", linewidth=1, label="true distribution")
    for i, (name, run_dir) in enumerate(runs.items()):
        curves = [RunFolder(r).records("eval") for r in [run_dir, *(m[name] for m in more if name in m)]]
        n = min(len(c) for c in curves)
        steps = [r["step"] for r in curves[0][:n]]
        ce = np.array([[r["val_ce"] for r in c[:n]] for c in curves])
        label = name if len(curves) == 1 else f"{name} (mean of {len(curves)} seeds)"
        ax.plot(steps, ce.mean(0), markersize=4, label=label, **style(i))
        if len(curves) > 1:
            ax.fill_between(steps, ce.min(0), ce.max(0), color=style(i)["color"], alpha=0.15, linewidth=0)
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
    """Every variant's reliability curve (15 equal-width bins, from its eval JSON) on one diagram, and
    below it the tokens in each bin (log scale): a bin of a few tokens says little."""
    fig = figure((5.5, 6.8))
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for i, (name, ev) in enumerate(evals.items()):
        c = ev["calibration"]
        r = c["reliability"]
        ax.plot(r["confidence"], r["accuracy"], markersize=4, label=f"{name} (ECE {c['ece_width']:.3f})", **style(i))
        counts.plot(r["confidence"], r["count"], markersize=3, linewidth=1, **style(i))
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="Reliability, top-1, validation split")
    ax.legend(fontsize="small", loc="upper left")
    counts.set(xlabel="confidence (max probability)", ylabel="tokens per bin", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_ppl_vs_selfbleu(
    rows: list[dict[str, Any]], path: Path, intervals: dict[str, dict[str, Interval]] | None = None
) -> Path:
    """Perplexity against Self-BLEU, a marker per variant named in the legend (labels beside crowded
    points overlap), with error bars of each figure's 95 % interval when it has one."""
    fig = figure((6.5, 4.2))
    ax = fig.subplots()
    cis = intervals or {}
    for i, r in enumerate(rows):
        if r["self_bleu"] is None:
            continue
        st = style(i)
        err = [_half(cis.get(r["variant"], {}).get(k)) for k in ("perplexity", "self_bleu")]
        ax.errorbar(
            r["perplexity"], r["self_bleu"], xerr=err[0], yerr=err[1], color=st["color"], marker=st["marker"],
            linestyle="none", capsize=3, label=r["variant"],
        )  # fmt: skip
    ax.set(
        xlabel="validation perplexity (lower is better)",
        ylabel="Self-BLEU (lower = more diverse)",
        title="Quality vs diversity",
    )
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _half(iv: Interval | None) -> float | None:
    if iv is None or not (np.isfinite(iv.lo) and np.isfinite(iv.hi)):
        return None
    return (iv.hi - iv.lo) / 2


def plot_experiment(
    out: Path,
    runs: dict[str, Path],
    evals: dict[str, Any],
    rows: list[dict[str, Any]],
    ideal: float | None,
    study: SeedStudy | None = None,
) -> None:
    """The experiment's figures: curves.png, reliability.png and ppl_vs_selfbleu.png in ``out``
    (error bars from ``study``'s intervals)."""
    others = [r for s, r in study.runs.items() if s != study.first] if study else []
    plot_curves(runs, out / "curves.png", ideal, others)
    plot_reliability_bins(evals, out / "reliability.png")
    plot_ppl_vs_selfbleu(rows, out / "ppl_vs_selfbleu.png", study.intervals() if study else None)


# ----------------------------------------------------------------------------- report.md


def write_report(out: Path, study: SeedStudy, plan: dict[str, Any], command: str, sections: Sequence[str] = ()) -> Path:
    """report.md, results.json and results.csv in ``out``: the tables hold each figure with its interval
    (t over seeds, or the eval's bootstrap with one seed); results.json and results.csv the values of
    every seed (results.csv gains a ``seed`` column when there are several)."""
    rows, evals = study.rows(), study.evals[study.first]
    intervals = study.intervals()
    results: dict[str, Any] = {"command": command, "plan": plan, "rows": rows, "evals": evals}
    results["intervals"] = {v: {k: iv.to_dict() for k, iv in cis.items()} for v, cis in intervals.items()}
    if len(study.seeds) > 1:
        results["per_seed"] = {str(s): r for s, r in study.per_seed.items()}
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    flat = study.per_seed[study.first] if len(study.seeds) == 1 else _seed_rows(study)
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(flat[0]))
    w.writeheader()
    w.writerows(flat)
    atomic_write(out / "results.csv", table.getvalue())
    any_eval = next(iter(evals.values()))
    lines = [
        *_report_header(table_rows(study), intervals, any_eval, plan, len(study.seeds)),
        *differences_section(study),
        *_how_to_read(any_eval),
        *_samples(study),
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


def _seed_rows(study: SeedStudy) -> list[dict[str, Any]]:
    return [{"seed": s, **r} for s in study.seeds for r in study.per_seed[s]]


def table_rows(study: SeedStudy) -> list[dict[str, Any]]:
    """The rows as the report shows them: set F1 and size at tau blank for softmax heads (their
    probabilities spread 1 over the set, so F1 at 0.5 is not meaningful), with the model's size,
    the tokens it was trained on and the OOD AUROC of the entropy when evaluated."""
    out = []
    for row in study.rows():
        v = row["variant"]
        ev, run = study.evals[study.first][v], study.runs[study.first][v]
        cfg = RunFolder(run).config()
        shown = {**row, "params": _params(run), "tokens_seen": _tokens_seen(cfg, row.get("steps"))}
        shown["ood_auroc_entropy"] = headline(ev).get("ood_auroc_entropy")
        if not ev.get("sigmoid", True):
            shown["set_f1"] = shown["set_size"] = None
        out.append(shown)
    return out


def _params(run: Path) -> int | None:
    """The number of weights in the run's checkpoint (read from its safetensors header)."""
    try:
        with safe_open(str(RunFolder(run).checkpoint() / "model.safetensors"), "np") as f:
            return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    except (OSError, ValueError, RuntimeError):
        return None


def _tokens_seen(cfg: Any, steps: Any) -> int | None:
    if not isinstance(steps, (int, float)):
        return None
    return int(steps) * cfg.train.batch_size * cfg.model.block_size * getattr(cfg.train, "grad_accum", 1)


def _samples(study: SeedStudy, per_variant: int = 2, chars: int = 240) -> list[str]:
    """A few of each variant's samples (RUN/eval/val.samples.jsonl), prompt marked off, cut to ``chars``."""
    lines = ["## Samples", "", f"The first {per_variant} samples of each variant (seed {study.first}), cut to "
             f"{chars} characters; the prompt is in brackets.", ""]  # fmt: skip
    found = False
    for v, run in study.runs[study.first].items():
        path = run / "eval" / "val.samples.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines()[:per_variant]:
            s = json.loads(line)
            text = f"[{s.get('prompt', '')}]{s.get('continuation', s.get('text', ''))}"
            lines.append(f"- **{v}**: `{' '.join(text.split())[:chars]}`")
            found = True
    return [*lines, ""] if found else []


def _report_header(
    rows: list[dict[str, Any]],
    intervals: dict[str, dict[str, Interval]],
    any_eval: dict[str, Any],
    plan: dict[str, Any],
    n_seeds: int,
) -> list[str]:
    """The report's title, what was run on which data, the headline and detail tables and the ground truth."""
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
    seeds = plan.get("seeds") or [plan["seed"]]
    spread = (
        f"Each cell is the mean over {n_seeds} seeds ({', '.join(map(str, seeds))}) ± half the width of its 95 % "
        f"Student-t interval (n = {n_seeds}); results.csv holds every seed's value."
        if n_seeds > 1
        else "Each figure carries ± half the width of its 95 % block-bootstrap interval over the held-out tokens "
        "(one seed: training-seed variation is not included; run with --seeds 3 for it)."
    )
    best = best_cells(rows, intervals)
    spread += " **Bold**: the best value of its column, where its interval does not overlap the runner-up's."
    lines = [
        "# gptvariants experiment",
        "",
        f"Data: `{plan['data']}` ({any_eval['perplexity']['tokens_scored']:,} validation tokens scored). "
        f"Budget: {plan['budget']} per variant ({budget_kind}), seed{'s' if n_seeds > 1 else ''} "
        f"{', '.join(map(str, seeds))}." + targets,
        "",
        spread,
        "",
        markdown_table(rows, filled(rows, HEADLINE_TABLE) + list(TOKEN_METRICS), intervals, best=best),
        "",
        "Details:",
        "",
        markdown_table(rows, filled(rows, DETAIL_TABLE), intervals, best=best),
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
        "- **ms/step (noisy)**: median training step time on this machine while the experiment ran; it measures "
        "the machine's load as much as the variant (compare step times with benchmarks/bench_step.py, side by side).",
        "- **Params**: weights in the checkpoint (a Bayesian head stores a mean and a width per weight); **Tokens "
        "seen**: steps x batch x block_size.",
        "- **±**: half the width of the 95 % interval; a comparison is only claimed in *Differences from the "
        "baseline*, from the interval of the paired difference.",
        "",
        "Curves: `curves.png` (validation CE on one scale for every variant), `reliability.png`, "
        "`ppl_vs_selfbleu.png`; per-variant details in `runs/VARIANT/eval/val.json` with samples in "
        "`val.samples.jsonl`.",
        "",
    ]
