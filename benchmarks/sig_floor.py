"""The best normalised cross-entropy a sigmoid head can reach when trained on oracle sets.

BCE against a positive set P is minimised by s(z_v) = P(v in P | context); the head's
predictive distribution is a readout of s. This computes, on a synthetic dataset's
validation split from the exact next-token distribution p, what a perfect Sig-GPT scores:

- top-k ("threshold") oracle sets S = {v : p(v) > threshold}, given at a fraction ``ratio``
  of positions, the true token always positive: P(v in P) = ratio [v in S] + (1 - ratio
  [v in S]) p(v). The study's readout normalises it, q_v = P(v in P) / sum_u P(u in P), and
  no readout can do better: every confident candidate has membership 1.
- sampled sets (``gptv targets --select sample --k m``), the distinct tokens among m draws
  from p (the true token is one): P(v in P) = 1 - (1 - p(v))^m. Normalised as above it is
  flattened too; the inverse readout (``SigmoidBCE(set_draws=m)``) recovers p exactly.

    python benchmarks/sig_floor.py data/synthetic --threshold 0.01 --ratio 1.0 0.5 0.0 --draws 8 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gptvariants.data.dataset import TokenDataset


def floors(data_dir: Path, threshold: float, ratios: list[float], draws: list[int]) -> tuple[float, dict[str, float]]:
    """(cross-entropy of p, {set rule and readout: cross-entropy of a perfect sigmoid head}) in nats/token."""
    data = TokenDataset(data_dir)
    if data.synthetic is None:
        raise SystemExit(f"{data_dir} is not the synthetic language: the exact distribution is unknown")
    val = np.asarray(data.split("val"))
    rules = {f"oracle p > {threshold}, ratio {r}": ("top", r) for r in ratios}
    rules |= {f"sampled, k = {m}, normalised": ("sample", m) for m in draws}
    nll_true, nll, n = 0.0, dict.fromkeys(rules, 0.0), 0
    for start, p in data.synthetic.iter_next_token_probs(val):
        m_ = min(len(p), len(val) - 1 - start)  # the last position has no next token
        p, y = p[:m_].astype(np.float64), val[start + 1 : start + 1 + m_]
        rows = np.arange(m_)
        nll_true += -np.log(p[rows, y]).sum()
        in_set = p > threshold
        for name, (kind, a) in rules.items():
            member = a * in_set + (1 - a * in_set) * p if kind == "top" else 1 - (1 - p) ** a
            nll[name] += -np.log(member[rows, y] / member.sum(1)).sum()
        n += m_
    out = {name: v / n for name, v in nll.items()}
    out |= {f"sampled, k = {m}, inverse readout": nll_true / n for m in draws}
    return nll_true / n, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--ratio", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    ap.add_argument("--draws", type=int, nargs="*", default=[8, 16])
    args = ap.parse_args()
    true_ce, sig = floors(args.data, args.threshold, args.ratio, args.draws)
    print(f"true entropy of the val split (cross-entropy of p_true): {true_ce:.4f} nats/token")
    print("| sets and readout | sig optimum (nats/token) | vs truth |\n|---|---|---|")
    for name, v in sig.items():
        print(f"| {name} | {v:.4f} | {v / true_ce:.3f}x |")


if __name__ == "__main__":
    main()
