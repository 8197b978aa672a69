"""An experiment over seeds: each figure's mean and interval, and the comparisons its intervals allow.

``SeedStudy`` holds the results.csv rows of every seed (``report.experiment_row``) and the eval JSONs
behind them. A table cell is the mean over seeds with its Student-t interval (n = seeds); with one
seed, the value itself with the eval's block-bootstrap interval. A comparison of a variant with the
baseline is the paired difference: over seeds (``paired_t_interval``), or with one seed a paired
block bootstrap over the same held-out tokens, both runs' per-token statistics read from
RUN/eval/val.tokens.npz (``bootstrap.paired_figures``). Every sentence is worded by
``intervals.compare``: better, worse, or no significant difference. Also here: where a seed's runs
live (``run_folder``), ``--seeds`` (``parse_seeds``) and which table cells may be marked best (``best_cells``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import InputError
from ..intervals import Interval, chance_note, compare, paired_t_interval, t_interval
from ..intervals import unpaired_difference as unpaired
from .bootstrap import Resampling, paired_figures, token_file, within_difference
from .result import headline, headline_intervals

HIGHER_IS_BETTER = {"auroc_entropy", "auroc_mutual_information", "distinct_4_study", "distinct_4", "set_f1"}
NAMES = {
    "perplexity": "perplexity",
    "nats_per_token": "nats/token",
    "ece": "ECE",
    "brier": "Brier",
    "auroc_entropy": "AUROC (entropy)",
    "self_bleu": "Self-BLEU (lower = more diverse)",
    "distinct_4_study": "Distinct-4",
    "kl_to_truth": "KL to truth",
}
SETTINGS = {"steps", "set_best_tau"}  # columns that describe a run rather than measure it: no mean, no interval
# compared over seeds; perplexity only through nats/token (its log), whose paired difference is the one
# the t interval suits: exp() stretches the seed-to-seed spread unevenly and the two could disagree
SEED_FIGURES = [k for k in NAMES if k != "perplexity"]
TOKEN_FIGURES = ["nats_per_token", "ece", "brier", "auroc_entropy"]  # compared with one seed (per-token statistics)


class SeedStudy:
    """``per_seed[seed]``: results.csv rows (one per variant, same order every seed); ``evals[seed][variant]``:
    the eval JSONs; ``runs[seed][variant]``: the run folders. The first seed is the experiment's own."""

    def __init__(
        self,
        per_seed: dict[int, list[dict[str, Any]]],
        evals: dict[int, dict[str, dict[str, Any]]],
        runs: dict[int, dict[str, Path]],
    ) -> None:
        self.per_seed, self.evals, self.runs = per_seed, evals, runs
        self.seeds = list(per_seed)
        self.first = self.seeds[0]
        self.variants = [r["variant"] for r in per_seed[self.first]]

    def values(self, variant: str, key: str) -> list[Any]:
        i = self.variants.index(variant)
        return [self.per_seed[s][i].get(key) for s in self.seeds]

    def rows(self) -> list[dict[str, Any]]:
        """One row per variant: with one seed the row itself, else each number's mean over the seeds
        (None unless every seed has it) and ``seeds``."""
        if len(self.seeds) == 1:
            return self.per_seed[self.first]
        out = []
        for i, v in enumerate(self.variants):
            row: dict[str, Any] = {"variant": v}
            for key in self.per_seed[self.first][i]:
                vals = self.values(v, key)
                if key in SETTINGS:  # the same for every seed, or the first seed's
                    row[key] = vals[0]
                elif key != "variant":
                    row[key] = float(np.mean(vals)) if all(finite(x) for x in vals) else None
            out.append({**row, "seeds": len(self.seeds)})
        return out

    def intervals(self) -> dict[str, dict[str, Interval]]:
        """variant -> figure -> its 95 % interval: t over seeds, or the eval's bootstrap with one seed."""
        if len(self.seeds) == 1:
            return {v: headline_intervals(self.evals[self.first][v]) for v in self.variants}
        out: dict[str, dict[str, Interval]] = {}
        for i, v in enumerate(self.variants):
            out[v] = {}
            for key in self.per_seed[self.first][i]:
                vals = self.values(v, key)
                if key != "variant" and key not in SETTINGS and all(finite(x) for x in vals):
                    out[v][key] = t_interval(vals)
        return out

    def differences(self, baseline: str = "baseline") -> dict[str, dict[str, Interval]]:
        """variant -> figure -> (variant - baseline) with its paired interval; {} without a baseline."""
        if baseline not in self.variants:
            return {}
        out: dict[str, dict[str, Interval]] = {}
        for v in self.variants:
            if v == baseline:
                continue
            if len(self.seeds) > 1:
                out[v] = {
                    k: paired_t_interval(self.values(v, k), self.values(baseline, k))
                    for k in SEED_FIGURES
                    if all(finite(x) for x in self.values(v, k) + self.values(baseline, k))
                }
            else:
                out[v] = self._paired_tokens(v, baseline)
        return out

    def _tokens(self, variant: str) -> dict[str, np.ndarray] | None:
        path = token_file(self.runs[self.first][variant] / "eval" / "val.json")
        if not path.is_file():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def _resampling(self, variant: str) -> Resampling | None:
        boot = self.evals[self.first][variant].get("intervals")
        return Resampling(boot["resamples"], boot["block_tokens"], boot["seed"]) if boot else None

    def _paired_tokens(self, variant: str, baseline: str) -> dict[str, Interval]:
        a, b, how = self._tokens(variant), self._tokens(baseline), self._resampling(variant)
        if a is None or b is None or how is None or len(a["nll"]) != len(b["nll"]):
            return {}
        paired = paired_figures(a, b, how)
        return {k: paired[k] for k in TOKEN_FIGURES if k in paired}

    def epistemic(self) -> dict[str, Interval]:
        """variant -> AUROC(MI) - AUROC(entropy) for flagging a wrong top-1 token, paired within the
        system (over seeds, or by the bootstrap over its tokens), for the variants with MI."""
        out: dict[str, Interval] = {}
        for v in self.variants:
            mi = [headline(self.evals[s][v])["auroc_mutual_information"] for s in self.seeds]
            if not all(finite(x) for x in mi):
                continue
            if len(self.seeds) > 1:
                h = [headline(self.evals[s][v])["auroc_entropy"] for s in self.seeds]
                out[v] = paired_t_interval(mi, h)
            elif (t := self._tokens(v)) is not None and (how := self._resampling(v)) and "mutual_information" in t:
                out[v] = within_difference(t, "mutual_information", "entropy", how)
        return out


def differences_section(study: SeedStudy, baseline: str = "baseline") -> list[str]:
    """The report's "Differences from the baseline": a sentence per figure from its paired interval."""
    diffs, epistemic = study.differences(baseline), study.epistemic()
    if not diffs and not epistemic:
        return []
    n = len(study.seeds)
    how = (
        f"paired over the {n} seeds (Student t, n = {n})"
        if n > 1
        else "with one seed, a paired block bootstrap over the same held-out tokens (both runs' per-token "
        "statistics from RUN/eval/val.tokens.npz, the same resamples weighing both)"
    )
    lines = [
        "## Differences from the baseline",
        "",
        f"Each figure of a variant minus the baseline's, with its 95 % interval, {how}. A difference is called "
        "better or worse only when its interval excludes 0; otherwise there is no significant difference.",
        "",
    ]
    for v, figures in diffs.items():
        said = [compare(NAMES[k], v, baseline, iv, k in HIGHER_IS_BETTER) for k, iv in figures.items()]
        missing = "no paired statistics (its eval has no per-token file: rerun `gptv eval`)"
        lines.append(f"- **{v}**: " + ("; ".join(said) if said else missing))
    if epistemic:
        lines += ["", "Epistemic against total uncertainty, within each system (AUROC for a wrong top-1 token):", ""]
        lines += [
            f"- {compare('AUROC of MI minus AUROC of entropy', f'MI of {v}', f'entropy of {v}', iv, True)}"
            for v, iv in epistemic.items()
        ]
    notes = []
    for v, cis in study.intervals().items():
        for key in ("auroc_entropy", "auroc_mutual_information"):
            if key in cis and (note := chance_note(cis[key])):
                notes.append(f"- {NAMES.get(key, 'AUROC (MI)')} of {v} ({cis[key].format('{:.3f}')}): {note}.")
    return lines + (["", *notes] if notes else []) + [""]


def ood_score_sentence(
    first: str,
    first_eval: dict[str, Any],
    first_score: str,
    second: str,
    second_eval: dict[str, Any],
    second_score: str,
) -> str:
    """A token-level OOD AUROC of one system's score against another's (e.g. the best MI against the
    baseline's entropy), worded from the interval of their difference, with a below-chance note.

    The two evals' OOD sections are resampled separately, so the difference's interval is the
    conservative unpaired one (``intervals.unpaired_difference``); without intervals (an eval from
    before them) it says that no verdict is possible."""
    a, b = (_ood_ci(ev, s) for ev, s in ((first_eval, first_score), (second_eval, second_score)))
    what = "token-level OOD AUROC"
    if a is None or b is None:
        return f"{what}: {first} {_ood_value(first_eval, first_score):.3f} and {second} " \
            f"{_ood_value(second_eval, second_score):.3f} (no intervals, so no verdict)"  # fmt: skip
    said = compare(what, f"{first} ({a.format('{:.3f}')})", f"{second} ({b.format('{:.3f}')})", unpaired(a, b), True)
    notes = [f"{name}'s is {note}" for name, iv in ((first, a), (second, b)) if (note := chance_note(iv))]
    return said + ("; " + "; ".join(notes) if notes else "") + "."


def _ood_ci(ev: dict[str, Any], score: str) -> Interval | None:
    d = ((ev.get("ood") or {}).get("auroc_ci") or {}).get("token", {}).get(score)
    return Interval(**d) if d else None


def _ood_value(ev: dict[str, Any], score: str) -> float:
    return float((ev.get("ood") or {}).get("auroc", {}).get("token", {}).get(score, math.nan))


BETTER = {  # the columns with a better direction: True = higher is better
    "perplexity": False, "nats_per_token": False, "ece": False, "brier": False, "kl_to_truth": False,
    "auroc_entropy": True, "ood_auroc_entropy": True, "set_f1_best": True, "bits_per_byte": False,
}  # fmt: skip


def best_cells(rows: list[dict[str, Any]], intervals: dict[str, dict[str, Interval]]) -> set[tuple[str, str]]:
    """(variant, column) of each column's best value where its interval supports it: the best row's
    95 % interval does not overlap the runner-up's (a conservative test); none without intervals."""
    marked = set()
    for key, higher in BETTER.items():
        cis = [intervals.get(r["variant"], {}).get(key) for r in rows if finite(r.get(key))]
        have = [(r["variant"], r[key], iv) for r, iv in zip((r for r in rows if finite(r.get(key))), cis)]
        if len(have) < 2 or any(iv is None or not np.isfinite(iv.lo) for iv in cis):
            continue
        ranked = sorted(((n, v, iv) for n, v, iv in have if iv is not None), key=lambda h: -h[1] if higher else h[1])
        (name, _, first), (_, _, second) = ranked[:2]
        if (first.lo > second.hi) if higher else (first.hi < second.lo):
            marked.add((name, key))
    return marked


def finite(v: Any) -> bool:
    """A finite int or float (a bool, None, a string or NaN is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_seeds(spec: str | None, seed: int) -> list[int]:
    """--seeds: a count N (seeds seed, seed + 1, ..., seed + N - 1) or a comma list; None = [seed]."""
    if spec is None:
        return [seed]
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise InputError(f"--seeds {spec!r}: give a number of seeds (3) or a comma list of seeds (1337,1,2)")
    if len(parts) == 1:
        if int(parts[0]) < 1:
            raise InputError(f"--seeds {spec!r}: need at least one seed")
        return [seed + i for i in range(int(parts[0]))]
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seed listed twice in --seeds {spec!r}")
    return seeds


def run_folder(out: Path, variant: str, seed: int, first_seed: int) -> Path:
    """OUT/runs/VARIANT for the first seed (the one-seed layout), OUT/runs-seedS/VARIANT for another."""
    return out / ("runs" if seed == first_seed else f"runs-seed{seed}") / variant
