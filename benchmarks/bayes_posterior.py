"""Why a last-layer posterior's mutual information barely rises on a shifted synthetic language.

For a Bayesian run (and the checkpoints it kept) on the synthetic language, against shifted
siblings of that language (``SyntheticLanguage.shifted``):
  1. MI in-domain and shifted, per bin of the target token's training frequency: whether the
     shift raises MI for a given kind of token, or only changes how often each kind occurs;
  2. the posterior width sigma per bin of the output row's token frequency;
  3. MI in-domain and shifted against training tokens (every kept checkpoint): whether the
     posterior contracts the same way on both sides as data accumulates.

    python benchmarks/bayes_posterior.py --run runs/bayes --data data/synthetic --out bayes_posterior

Prints markdown tables and writes OUT.png and OUT.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptvariants.data.dataset import TokenDataset
from gptvariants.data.sources import shifted_source
from gptvariants.evaluate.scoring import score
from gptvariants.predict.predictive import Predictor
from gptvariants.store.checkpoint import load_run, load_weights

BINS = np.array([0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1.0])  # training frequency of a token


def per_token(model, tokens: np.ndarray, samples: int) -> dict[str, np.ndarray]:
    t = score(Predictor([model], samples=samples, seed=0), tokens, stride=model.config.block_size // 2, point=False)
    return {"mi": t["tokens"]["mutual_information"], "entropy": t["tokens"]["entropy"], "target": tokens[1:]}


def by_bin(values: np.ndarray, freq: np.ndarray) -> list[float]:
    which = np.digitize(freq, BINS[1:-1])
    return [float(values[which == b].mean()) if (which == b).any() else float("nan") for b in range(len(BINS) - 1)]


def frequency_table(model, freq: np.ndarray, sides: dict[str, dict[str, np.ndarray]]) -> dict:
    sigma_rows = F.softplus(model.head.weight_rho.detach().float()).mean(1).numpy()
    out = {"bins": BINS.tolist(), "sigma": by_bin(sigma_rows, freq), "vocab_share": by_bin(np.ones_like(freq), freq)}
    for name, t in sides.items():
        f = freq[t["target"]]
        out[name] = {
            "mi": by_bin(t["mi"], f),
            "share": [float(x) for x in np.bincount(np.digitize(f, BINS[1:-1]), minlength=len(BINS) - 1) / len(f)],
            "mi_mean": float(t["mi"].mean()),
        }
    return out


def checkpoints(run: Path, model, cfg, tokens_in, tokens_out, samples: int, batch_tokens: int) -> list[dict]:
    rows = []
    for ckpt in sorted(run.glob("ckpt-*")):
        load_weights(ckpt, model)
        step = int(ckpt.name.split("-")[1])
        a, b = per_token(model, tokens_in, samples), per_token(model, tokens_out, samples)
        sigma = F.softplus(model.head.weight_rho.detach().float()).mean().item()
        rows.append(
            {
                "step": step,
                "train_tokens": step * batch_tokens,
                "sigma_mean": sigma,
                "mi_in": float(a["mi"].mean()),
                "mi_out": float(b["mi"].mean()),
            }
        )
    return rows


def plot(table: dict, curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = [f"<{b:g}" for b in BINS[1:]]
    x = np.arange(len(labels))
    for k, name in enumerate(n for n in table if isinstance(table[n], dict)):
        axes[0].bar(x + 0.25 * (k - 1), table[name]["mi"], 0.25, label=f"{name} (mean {table[name]['mi_mean']:.4f})")
    axes[0].set(
        xticks=x,
        xticklabels=labels,
        xlabel="training frequency of the target token",
        ylabel="mean MI (nats)",
        title="MI by token frequency",
    )
    axes[0].legend(fontsize="small")
    axes[1].bar(x, table["sigma"])
    axes[1].set(
        xticks=x,
        xticklabels=labels,
        xlabel="training frequency of the row's token",
        ylabel="mean posterior sigma",
        title="Posterior width by token frequency",
    )
    if curve:
        t = [c["train_tokens"] for c in curve]
        axes[2].plot(t, [c["mi_in"] for c in curve], marker="o", label="in-domain")
        axes[2].plot(t, [c["mi_out"] for c in curve], marker="o", label="shifted")
        axes[2].set(
            xscale="log",
            yscale="log",
            xlabel="training tokens",
            ylabel="mean MI (nats)",
            title="MI against training tokens",
        )
        axes[2].legend(fontsize="small")
    for ax in axes:
        ax.tick_params(axis="x", labelsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a Bayesian run on the synthetic language")
    p.add_argument("--data", required=True, help="its prepared synthetic data folder")
    p.add_argument("--shifts", default="synthetic?shift=0.5,synthetic?shift=1.0&part=transition")
    p.add_argument("--tokens", type=int, default=20_000, help="tokens scored on each side")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--out", default="bayes_posterior")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = TokenDataset(Path(args.data))
    model, cfg = load_run(Path(args.run))
    freq = np.bincount(np.asarray(data.split("train")), minlength=cfg.model.vocab_size) / len(data.split("train"))
    tokens_in = np.asarray(data.split("val"))[: args.tokens]
    sides = {"in-domain": per_token(model, tokens_in, args.samples)}
    shifted = {}
    for spec in args.shifts.split(","):
        shifted[spec] = shifted_source(f"{spec}&tokens={args.tokens}", data.synthetic, args.tokens).tokens
        sides[spec] = per_token(model, shifted[spec], args.samples)
    table = frequency_table(model, freq, sides)
    first = next(iter(shifted.values()))
    batch_tokens = cfg.train.batch_size * cfg.model.block_size * cfg.train.gradient_accumulation_steps
    curve = checkpoints(Path(args.run), model, cfg, tokens_in, first, args.samples, batch_tokens)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"table": table, "curve": curve}, indent=1))
    plot(table, curve, out.with_suffix(".png"))
    print("| target-token frequency | " + " | ".join(f"< {b:g}" for b in BINS[1:]) + " | mean |")
    print("|---" * (len(BINS) + 1) + "|")
    for name in sides:
        row = table[name]
        print(f"| MI, {name} | " + " | ".join(f"{v:.4f}" for v in row["mi"]) + f" | {row['mi_mean']:.4f} |")
        print(f"| share of positions, {name} | " + " | ".join(f"{v:.3f}" for v in row["share"]) + " | |")
    print("| posterior sigma of the row | " + " | ".join(f"{v:.4f}" for v in table["sigma"]) + " | |")
    if curve:
        print(
            "\n| step | training tokens | sigma mean | MI in-domain | MI shifted | ratio |\n|---|---|---|---|---|---|"
        )
        for c in curve:
            print(
                f"| {c['step']} | {c['train_tokens']:,} | {c['sigma_mean']:.4f} | {c['mi_in']:.4f} | {c['mi_out']:.4f} "
                f"| {c['mi_out'] / c['mi_in']:.2f} |"
            )


if __name__ == "__main__":
    main()
