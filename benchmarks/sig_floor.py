"""The best normalised cross-entropy a sigmoid head can reach when trained on oracle sets.

BCE against a positive set P is minimised by s(z_v) = P(v in P | context). With oracle sets
S = {v : p_true(v) > threshold} given at a fraction ``ratio`` of positions and the true
token always positive, P(v in P) = ratio [v in S] + (1 - ratio [v in S]) p_true(v). The
sigmoid head's predictive distribution normalises that, q_v = P(v in P) / sum_u P(u in P),
so even a perfect Sig-GPT scores E[-log q_y] rather than the true entropy rate. This
computes both on a synthetic dataset's validation split from the exact next-token
distribution, giving the floor that a trained sig model can be compared against.

    python benchmarks/sig_floor.py data/synthetic --threshold 0.01 --ratio 1.0 0.5 0.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gptvariants.data import TokenDataset


def floors(data_dir: Path, threshold: float, ratios: list[float]) -> tuple[float, dict[float, float]]:
    data = TokenDataset(data_dir)
    if data.synthetic is None:
        raise SystemExit(f"{data_dir} is not the synthetic language: the exact distribution is unknown")
    val = np.asarray(data.split("val"))
    nll_true, nll_sig, n = 0.0, {r: 0.0 for r in ratios}, 0
    for start, p in data.synthetic.iter_next_token_probs(val):
        m = min(len(p), len(val) - 1 - start)  # the last position has no next token
        p, y = p[:m].astype(np.float64), val[start + 1 : start + 1 + m]
        rows = np.arange(m)
        nll_true += -np.log(p[rows, y]).sum()
        in_set = p > threshold
        for r in ratios:
            member = r * in_set + (1 - r * in_set) * p
            nll_sig[r] += -np.log(member[rows, y] / member.sum(1)).sum()
        n += m
    return nll_true / n, {r: v / n for r, v in nll_sig.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--ratio", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    args = ap.parse_args()
    true_ce, sig = floors(args.data, args.threshold, args.ratio)
    print(f"true entropy of the val split (cross-entropy of p_true): {true_ce:.4f} nats/token")
    print("| oracle ratio | sig optimum (nats/token) | vs truth |\n|---|---|---|")
    for r, v in sig.items():
        print(f"| {r} | {v:.4f} | {v / true_ce:.3f}x |")


if __name__ == "__main__":
    main()
