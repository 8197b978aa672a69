"""Evaluation cost of the predictive distribution: S draws against one, measured side by side.

For each shape, a random model per system scores the same token stream with ``evaluate.score``
(the whole scoring pass of ``gptv eval``: backbone, readout of every draw, per-token statistics),
rounds interleaved with the order rotating; reported: median seconds and the median over
rounds of the ratio to the reference system of the same round.

    python benchmarks/bench_predictive.py                       # all shapes
    python benchmarks/bench_predictive.py --shapes synthetic --rounds 5
    python benchmarks/bench_predictive.py --shapes gpt2 --tokens 1024 --systems "baseline,bayes S=1,bayes S=8"

Systems: ``bayes S=1`` (one draw of the head) is the reference of ``bayes S=8`` (the target:
<= 1.5x); ``baseline`` the reference of ``ensemble K=4`` (four heads) and ``MC dropout S=8``
(eight backbone passes, for scale).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.evaluate.scoring import score
from gptvariants.predict.predictive import Predictor

SHAPES = {  # name: (n_layer, n_head, n_embd, block, vocab)
    "char": (4, 4, 128, 64, 65),
    "synthetic": (4, 4, 128, 64, 513),
    "gpt2-vocab": (4, 4, 128, 64, 50257),
    "gpt2": (12, 12, 768, 128, 50257),  # GPT-2 124M
}
SYSTEMS = {  # name: (variant, predictor options, reference)
    "baseline": ("baseline", {}, None),
    "bayes S=1": ("bayes", {"samples": 1}, None),
    "bayes S=8": ("bayes", {"samples": 8}, "bayes S=1"),
    "ensemble K=4": ("ensemble", {}, "baseline"),
    "MC dropout S=8": ("baseline-dropout", {"samples": 0, "dropout_samples": 8}, "baseline"),
}


def model(variant: str, shape: tuple[int, ...]) -> GPT:
    n_layer, n_head, n_embd, block, vocab = shape
    cfg = load_config(
        variant, overrides=dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, vocab_size=vocab)
    )
    torch.manual_seed(0)
    return GPT(cfg.model, cfg.objective).eval()


def run(shape_name: str, tokens: int, rounds: int, systems: list[str]) -> list[dict]:
    shape = SHAPES[shape_name]
    stream = np.random.default_rng(0).integers(0, shape[4], tokens)
    predictors = {name: Predictor([model(SYSTEMS[name][0], shape)], seed=0, **SYSTEMS[name][1]) for name in systems}
    times: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(rounds + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            score(predictors[name], stream, stride=shape[3] // 2, point=False)
            if r:
                times[name].append(time.perf_counter() - t0)
    out = []
    for name in systems:
        ref = SYSTEMS[name][2]
        ratios = [a / b for a, b in zip(times[name], times[ref])] if ref else [1.0] * rounds
        out.append(
            {
                "shape": shape_name,
                "system": name,
                "reference": ref or "-",
                "seconds": statistics.median(times[name]),
                "ratio": statistics.median(ratios),
                "ratio_range": (min(ratios), max(ratios)),
                "tokens_per_s": tokens / statistics.median(times[name]),
            }
        )
    return out


def main() -> None:
    keep_freed_memory()  # as `gptv` does: fresh (S, n, V) buffers would otherwise be page-faulted in per call
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="char,synthetic,gpt2-vocab", help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated; a ratio needs its reference too")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    systems = args.systems.split(",")
    for name in systems:
        if name not in SYSTEMS or (SYSTEMS[name][2] and SYSTEMS[name][2] not in systems):
            p.error(f"--systems: {name!r} is not one of {list(SYSTEMS)} or lacks its reference")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| shape | system | vs | seconds | ratio | range over rounds | tokens/s |\n|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for r in run(shape, args.tokens, args.rounds, systems):
            lo, hi = r["ratio_range"]
            print(
                f"| {r['shape']} | {r['system']} | {r['reference']} | {r['seconds']:.2f} | {r['ratio']:.2f}x | "
                f"{lo:.2f}-{hi:.2f} | {r['tokens_per_s']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
