"""Are the intervals right, and what do they cost? (issue 18)

  1. coverage: the 95 % block-bootstrap interval of the mean of an AR(1) series (correlated like
     the tokens of one window; true mean 0) over ``--reps`` repetitions (target 93-97 %), beside
     the naive i.i.d. bootstrap (blocks of 1 token) that ignores the correlation;
  2. the seed interval (``t_interval``) against scipy's t interval;
  3. false positives of the paired tests on two identical systems (target <= 5 %): the paired
     block bootstrap of an AUROC difference (the same tokens, the same resamples for both) and the
     paired t interval over 3 seeds;
  4. cost: `gptv eval` (``evaluate``) of a run trained for ``--steps`` steps with and without the
     bootstrap at the default resamples, and the bootstrap's share (target <= 10 %).

    python benchmarks/bench_intervals.py                      # full: 200 repetitions, default data
    python benchmarks/bench_intervals.py --reps 40 --data synthetic:tiny --steps 10   # quick check

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from gptvariants import metrics as M
from gptvariants.core.config import load_config
from gptvariants.data.prepare import prepare
from gptvariants.evaluate.bootstrap import one_sample_counts
from gptvariants.evaluate.evaluation import evaluate
from gptvariants.evaluate.experiment import DEFAULT_SHAPE
from gptvariants.intervals import BLOCK, RESAMPLES, BlockBootstrap, paired_t_interval, t_interval
from gptvariants.train.loop import train


def ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary AR(1) series x_t = phi x_{t-1} + e_t, e_t ~ N(0, 1): mean 0."""
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - phi**2)
    e = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def coverage(reps: int, n: int, phi: float, block: int, resamples: int, seed: int) -> float:
    """Share of ``reps`` series whose bootstrap interval of the mean covers the true mean 0."""
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        x = ar1(n, phi, rng)
        hits += not BlockBootstrap(n, block, resamples, seed=r).mean_interval(x).excludes(0.0)
    return hits / reps


def seed_interval_error(trials: int, seed: int) -> float:
    """Largest |bound - scipy's bound| of t_interval over random samples of 2..10 seeds."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(trials):
        x = rng.normal(size=rng.integers(2, 11))
        iv = t_interval(x)
        lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        worst = max(worst, abs(iv.lo - lo), abs(iv.hi - hi))
    return worst


def paired_auroc_false_positives(reps: int, n: int, block: int, resamples: int, seed: int) -> float:
    """Share of ``reps`` cases where the paired bootstrap calls two identical systems different: both
    score the same correlated tokens with the same signal and independent noise of one size."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for r in range(reps):
        signal = ar1(n, 0.8, rng)
        wrong = rng.random(n) < 1 / (1 + np.exp(-signal))
        a, b = signal + rng.normal(size=n), signal + rng.normal(size=n)
        boot = BlockBootstrap(n, block, resamples, seed=r)
        reps_ab = []
        for score in (a, b):
            full, resampled = one_sample_counts(boot, score, wrong)
            shift = M.auroc(score, wrong) - M.auroc_from_counts(full[0][None], full[1][None])[0]
            reps_ab.append(M.auroc_from_counts(*resampled) + shift)
        rejected += boot.paired_interval(M.auroc(a, wrong), M.auroc(b, wrong), *reps_ab).excludes(0.0)
    return rejected / reps


def paired_seed_false_positives(reps: int, seeds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(reps, seeds))  # what a seed does to both systems
    a, b = common + rng.normal(size=(reps, seeds)), common + rng.normal(size=(reps, seeds))
    return float(np.mean([paired_t_interval(a[i], b[i]).excludes(0.0) for i in range(reps)]))


def eval_cost(data: str, steps: int, resamples: int, num_samples: int) -> tuple[float, float, float]:
    """(eval seconds without intervals, with them, the bootstrap's own seconds) of one trained run."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(data, root / "data")
        shape = {**DEFAULT_SHAPE, "max_iters": steps, "eval_interval": 10**9, "eval_iters": 1, "tensorboard": False}
        train(load_config("baseline", None, {**shape, "data": str(root / "data"), "out_dir": str(root / "run")}))
        seconds = []
        for r in (0, resamples):
            t0 = time.perf_counter()
            ev = evaluate(root / "run", root / "data", resamples=r, num_samples=num_samples, out=root / f"{r}.json")
            seconds.append(time.perf_counter() - t0)
        return seconds[0], seconds[1], ev["speed"]["bootstrap_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200, help="repetitions of each synthetic check")
    ap.add_argument("--n", type=int, default=20_000, help="tokens per synthetic series")
    ap.add_argument("--phi", type=float, default=0.5, help="AR(1) coefficient of the coverage series")
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    ap.add_argument("--block", type=int, default=BLOCK)
    ap.add_argument("--data", default="synthetic:default", help="`gptv prepare` source of the cost check")
    ap.add_argument("--steps", type=int, default=100, help="training steps of the cost check's run")
    ap.add_argument("--num-samples", type=int, default=100, help="the eval's diversity samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"## Intervals (n = {args.n} tokens, {args.reps} repetitions, {args.resamples} resamples)\n")
    print("| check | result | target |\n|---|---:|---|")
    cov = coverage(args.reps, args.n, args.phi, args.block, args.resamples, args.seed)
    naive = coverage(args.reps, args.n, args.phi, 1, args.resamples, args.seed)
    print(f"| coverage of the 95 % interval, AR(1) phi={args.phi}, blocks of {args.block} | {cov:.1%} | 93-97 % |")
    print(f"| the same with blocks of 1 token (i.i.d. bootstrap) | {naive:.1%} | (too low: ignores correlation) |")
    print(f"| max abs difference, t_interval vs scipy | {seed_interval_error(1000, args.seed):.1e} | ~1e-15 |")
    fp = paired_auroc_false_positives(args.reps, args.n, args.block, args.resamples, args.seed)
    print(f"| false positives, paired bootstrap of an AUROC difference, identical systems | {fp:.1%} | <= 5 % |")
    fp_t = paired_seed_false_positives(max(args.reps, 1000), 3, args.seed)
    print(f"| false positives, paired t over 3 seeds, identical systems | {fp_t:.1%} | <= 5 % |")
    plain, with_ci, boot = eval_cost(args.data, args.steps, args.resamples, args.num_samples)
    print(f"\n## Cost of the intervals in `gptv eval` ({args.data}, {args.resamples} resamples)\n")
    print("| eval without | eval with | bootstrap | share of eval |\n|---:|---:|---:|---:|")
    print(f"| {plain:.1f} s | {with_ci:.1f} s | {boot:.2f} s | {boot / with_ci:.1%} |")


if __name__ == "__main__":
    main()
