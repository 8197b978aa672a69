"""Generation speed: uncached vs KV-cached decoding, and the cost of Bayesian MC averaging.

One model throughout: 6 layers, 6 heads, 384 wide, block_size 256 (nanoGPT's shakespeare_char
shape) with a character vocabulary (65) by default, a Bayesian output head (the ``bayes``
variant), random initialisation (speed does not depend on the weights). Batch 1, greedy, 500
new tokens from a 1-token prompt, so the window slides (block_size 256) and the cached path
pays its re-prefills. With ``--vocab 50257`` the output layer's (V, C) matrix-vector product,
which caching cannot shorten, dominates each cached step on a CPU; the table shows how much.

Modes: ``uncached`` and ``cached`` use the posterior mean weights; ``bayes-1`` and ``bayes-mc8``
are the default method with 1 and 8 draws per step (cached). Checks: cached output identical
to uncached (asserted), cached >= 5x uncached tokens/s, MC-8 <= 2x the time of a single draw.

    python benchmarks/bench_generate.py [--new-tokens 500] [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.decode.generate import generate
from gptvariants.predict.prediction import Prediction


def timed(model, n: int, **kw) -> tuple[list[int], float]:
    generate(model, [[0]], 8, greedy=True, **kw)  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    tokens = generate(model, [[0]], n, greedy=True, **kw)[0]
    return tokens, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # as `gptv` does; GPTV_MALLOC_TUNING=0 measures without it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument(
        "--vocab", type=int, default=65, help="vocabulary size (65: Tiny Shakespeare characters; 50257: GPT-2)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = load_config("bayes", overrides=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=args.vocab))
    model = GPT(cfg.model, cfg.objective).eval()
    n = args.new_tokens
    modes = {
        "uncached": dict(use_cache=False, prediction=Prediction(mc_samples=0)),
        "cached": dict(use_cache=True, prediction=Prediction(mc_samples=0)),
        "bayes-1": dict(prediction=Prediction(mc_samples=1), seed=0),
        "bayes-mc8": dict(prediction=Prediction(mc_samples=8), seed=0),
    }
    outputs, seconds = {}, {}
    for name, kw in modes.items():
        outputs[name], seconds[name] = timed(model, n, **kw)
    assert outputs["cached"] == outputs["uncached"], "cached greedy output differs from uncached"

    rows = [
        {
            "mode": name,
            "new_tokens": n,
            "seconds": round(s, 3),
            "tokens_per_s": round(n / s, 1),
            "speedup_vs_uncached": round(seconds["uncached"] / s, 2),
        }
        for name, s in seconds.items()
    ]
    speedup = seconds["uncached"] / seconds["cached"]
    mc_cost = seconds["bayes-mc8"] / seconds["bayes-1"]
    if args.json:
        print(json.dumps(rows))
    else:
        print(
            f"model 6 layers, 384 wide, block 256, V = {args.vocab}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"{'mode':<10} {'new_tokens':>10} {'seconds':>8} {'tokens/s':>9} {'vs uncached':>12}")
        for r in rows:
            print(
                f"{r['mode']:<10} {r['new_tokens']:>10} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} "
                f"{r['speedup_vs_uncached']:>11.2f}x"
            )
        print(
            f"cached output identical to uncached: yes; cached speedup {speedup:.1f}x (target >= 5x); "
            f"MC-8 step costs {mc_cost:.2f}x a single draw (target <= 2x)"
        )
    return 0 if speedup >= 5 and mc_cost <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
