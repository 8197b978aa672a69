"""What one temperature can and cannot fix: held-out NLL, top-1 ECE and (on the synthetic language)
KL to the true distribution of a trained softmax run, as functions of T.

    python benchmarks/temperature_sweep.py --run runs/experiment/runs/baseline --data runs/experiment/data

Scores the first ``--tokens`` validation tokens once (logits cached), then for each T of a grid:
NLL of softmax(z / T), top-1 ECE (15 equal-width bins), the ECE against the true probability of
the top-1 token and KL(p_true || p) (synthetic language only). Marks the T that ``gptv calibrate``
fits (lowest NLL) and the T of lowest top-1 ECE. Prints a markdown table, writes OUT.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gptvariants import metrics as M
from gptvariants.data.dataset import TokenDataset
from gptvariants.predict.predictive import Predictor, score_windows
from gptvariants.store.checkpoint import load_run

GRID = np.unique(np.round(np.concatenate([np.arange(0.70, 1.0, 0.02), np.arange(1.0, 1.41, 0.05)]), 3))


@torch.no_grad()
def logits(run: Path, tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    model, cfg = load_run(run)
    windows = M.sliding_windows(len(tokens), cfg.model.block_size, cfg.model.block_size // 2)
    zs, ys = [], []
    for _, y, draws in score_windows(Predictor([model], samples=0), tokens, windows):
        zs.append(model.logits(draws.hidden[0]))
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


def row(z: torch.Tensor, y: torch.Tensor, T: float, p_true: torch.Tensor | None) -> dict[str, float]:
    log_p = torch.log_softmax(z / T, dim=-1)
    p = log_p.exp()
    conf, pred = p.max(-1)
    out = {
        "T": T,
        "nll": float(-log_p.gather(1, y[:, None]).double().mean()),
        "ece": M.expected_calibration_error(conf, pred == y, 15, "width"),
    }
    if p_true is not None:
        out["ece_truth"] = M.true_probability_ece(conf, p_true.gather(1, pred[:, None]).squeeze(1), 15, "width")
        out["kl_truth"] = float(M.kl_per_token(p_true, p).double().mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tokens", type=int, default=50_000)
    p.add_argument("--out", default="temperature_sweep")
    args = p.parse_args()
    data = TokenDataset(Path(args.data))
    tokens = np.asarray(data.split("val"))[: args.tokens]
    z, y = logits(Path(args.run), tokens)
    p_true = None
    if data.synthetic is not None:
        p_true = torch.from_numpy(data.synthetic.next_token_probs(tokens[:-1]))
    rows = [row(z, y, float(T), p_true) for T in GRID]
    best_nll, best_ece = min(rows, key=lambda r: r["nll"]), min(rows, key=lambda r: r["ece"])
    keys = [k for k in ("nll", "ece", "ece_truth", "kl_truth") if k in rows[0]]
    print("| T | " + " | ".join(keys) + " | |\n|---" * 1 + "|---" * (len(keys) + 1) + "|")
    for r in rows:
        mark = " ".join(m for m, b in (("lowest NLL", best_nll), ("lowest ECE", best_ece)) if b is r)
        print(f"| {r['T']:.2f} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + f" | {mark} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.3))
    for ax, k in zip(axes, keys):
        ax.plot([r["T"] for r in rows], [r[k] for r in rows], marker="o", markersize=3)
        ax.axvline(best_nll["T"], color="tab:red", linestyle="--", linewidth=1, label="lowest NLL")
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="T = 1")
        ax.set(xlabel="temperature T", title=k)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
