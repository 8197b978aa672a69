"""Which uncertainty score tells shifted text apart (issue 19): every score of ``uncertainty.SCORES``
(entropy, MI, max-prob, surprisal, energy, max-logit, Mahalanobis, relative Mahalanobis, kNN) by
token and sequence OOD AUROC, over the runs given (one per training seed), with intervals.

For each run: the feature density is fitted on its training split when it has none
(``gptv density``, ``--positions``), its validation split and the ``--ood`` text are scored as
``gptv eval --ood`` scores them, and each score's AUROC is taken. Over the runs (seeds): the mean
AUROC with its t interval, and the paired t interval of (score - entropy) with its verdict
(``intervals.verdict``; one run gives no interval, hence no verdict but "no significant
difference"). OUT.png shows the first run's score distributions in and out of domain: where no
score beats the entropy, they show why (the distributions overlap).

    # the synthetic language and its shifted sibling, 3 seeds
    gptv prepare synthetic --out data/synthetic
    for s in 1 2 3; do gptv train --variant baseline --data data/synthetic --out runs/syn-$s --seed=$s; done
    python benchmarks/study_ood_scores.py --runs runs/syn-1,runs/syn-2,runs/syn-3 --data data/synthetic \\
        --ood "synthetic?shift=0.5" --out ood_synthetic
    # Tiny Shakespeare -> the WikiText-2 sample
    gptv prepare text:../shared/data/tinyshakespeare/input.txt --out data/shakespeare
    for s in 1 2 3; do gptv train --variant baseline --data data/shakespeare --out runs/shk-$s --seed=$s; done
    python benchmarks/study_ood_scores.py --runs runs/shk-1,runs/shk-2,runs/shk-3 --data data/shakespeare \\
        --ood text:../shared/data/wikitext-2/valid.txt --out ood_shakespeare

Prints a markdown table; writes OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gptvariants.data.sources import resolve_source, split_source
from gptvariants.data.tokenizers import load_tokenizer
from gptvariants.evaluate.report import figure
from gptvariants.evaluate.scoring import score
from gptvariants.evaluate.uncertainty import SCORES, available, ood_summary, uncertainty_of
from gptvariants.intervals import paired_t_interval, t_interval, verdict
from gptvariants.predict.density import FeatureDensity, fit_density
from gptvariants.predict.methods import load_runs
from gptvariants.predict.prediction import Prediction, build_predictor
from gptvariants.store.run import RunFolder

SHOWN = ("entropy", "energy", "max_logit", "mahalanobis", "rel_mahalanobis", "knn", "surprisal", "mi")


def one_run(run_dir: Path, data: Path, ood: str, positions: int, tokens: int) -> tuple[dict, dict, dict]:
    """(the ood section, per-token statistics in, out) of one run."""
    if FeatureDensity.load(run_dir, RunFolder(run_dir).step) is None:
        [run] = load_runs(run_dir)
        density, info = fit_density(run.model, split_source(run_dir, data, "train").tokens, positions=positions)
        density.save(run_dir, {**info, "step": RunFolder(run_dir).step})
    runs = load_runs(run_dir)
    predictor = build_predictor(runs, Prediction(seed=0))
    source = split_source(run_dir, data, "val")
    source.tokens = source.tokens[:tokens]
    shifted = resolve_source(ood, run_dir, load_tokenizer(run_dir), source, "val")
    shifted.tokens = shifted.tokens[: len(source.tokens)]
    stride = predictor.block_size // 2
    inside = score(predictor, source.tokens, stride=stride, point=False)["tokens"]
    outside = score(predictor, shifted.tokens, stride=stride, point=False)["tokens"]
    return ood_summary(inside, outside, predictor.block_size, shifted.name), inside, outside


def table(sections: list[dict]) -> tuple[list[str], dict]:
    lines = [
        "| score | token AUROC | token - entropy | verdict | sequence AUROC | sequence - entropy | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    out = {}
    names = sorted(sections[0]["auroc"]["token"], key=lambda s: -np.mean([o["auroc"]["token"][s] for o in sections]))
    for s in names:
        cells, out[s] = [s], {}
        for level in ("token", "sequence"):
            values = [o["auroc"][level][s] for o in sections]
            base = [o["auroc"][level]["entropy"] for o in sections]
            diff = paired_t_interval(values, base)
            word = verdict(diff, higher_is_better=True)
            cells += [t_interval(values).format("{:.3f}"), diff.format("{:+.3f}"), word]
            out[s][level] = {"auroc": values, "difference": diff.to_dict(), "verdict": word}
        lines.append("| " + " | ".join(cells) + " |")
    return lines, out


def plot(inside: dict, outside: dict, path: Path) -> None:
    names = [s for s in SHOWN if s in available(inside)]
    fig = figure((3.2 * len(names), 3.0))
    for ax, s in zip(np.atleast_1d(fig.subplots(1, len(names))), names):
        a, b = uncertainty_of(inside, s), uncertainty_of(outside, s)
        bins = np.linspace(*np.quantile(np.r_[a, b], [0.005, 0.995]), 50)
        ax.hist(a, bins, alpha=0.5, density=True, label="in domain")
        ax.hist(b, bins, alpha=0.5, density=True, label="shifted")
        ax.set(title=s if SCORES[s][1] > 0 else f"-{s}", yticks=[])  # as uncertainty: higher = less familiar
    fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated run folders, one per seed")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--ood", required=True, help="as gptv eval --ood: synthetic?shift=S, text:PATH or a data folder")
    p.add_argument("--positions", type=int, default=200_000, help="training positions of a density fitted here")
    p.add_argument("--tokens", type=int, default=100_000, help="validation tokens scored (as many shifted ones)")
    p.add_argument("--out", type=Path, default=Path("ood_scores"))
    a = p.parse_args()
    results = [one_run(Path(r), a.data, a.ood, a.positions, a.tokens) for r in a.runs.split(",")]
    lines, summary = table([r[0] for r in results])
    print(f"OOD: {a.ood}; {len(results)} run(s); token AUROC mean [95 % t interval over runs]\n")
    print("\n".join(lines))
    a.out.with_suffix(".json").write_text(json.dumps({"ood": a.ood, "runs": a.runs, "scores": summary}, indent=1))
    plot(results[0][1], results[0][2], a.out.with_suffix(".png"))
    print(f"\nwrote {a.out.with_suffix('.json')} and {a.out.with_suffix('.png')} (score distributions, first run)")


if __name__ == "__main__":
    main()
