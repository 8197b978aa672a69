"""The GPU run, in one go (< 10 minutes on one H100): what a lent CUDA device should record.

1. Training step of every registered variant at GPT-2 124M's shape (12 x 768, V = 50257,
   block 1024, batch 12, as nanoGPT's per-GPU micro-batch), as ``gptv train`` runs on a GPU by
   default: bf16 autocast, ``torch.compile`` of the backbone, fused AdamW. Median ms per step,
   tokens/s, MFU (``GPT.estimate_mfu`` against ``trainlog.peak_flops``), ratio to baseline,
   peak memory. nanoGPT reports ~135 ms/iter for this shape on an A100 with compile.
2. Fused output-layer loss against the dense one at V = 50257, N = 12 x 1024 positions,
   C = 768: peak memory and ms of forward + backward (``bench_loss.run_one``).
3. Generation: greedy tok/s at batch 1, 128 new tokens, fp32 and bf16 weights
   (``Prediction.dtype``), baseline and the Bayesian head (S = 8 draws).

    python benchmarks/gpu.py                         # on cuda, the full table (~5-8 min)
    python benchmarks/gpu.py --device cpu --smoke    # tiny shapes, seconds (tests run this)

Stops starting new variants past ``--budget-s`` (default 480 s) and says which it skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_loss import run_one
from bench_step import PeakRSS, release_memory

from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.core.variants import REGISTRY
from gptvariants.decode.generate import generate
from gptvariants.predict.methods import Run
from gptvariants.predict.prediction import Prediction, build_predictor
from gptvariants.train.trainlog import peak_flops

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
SMOKE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=256, block_size=32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(variant: str, shape: dict, batch: int, steps: int, device: torch.device, compile: bool):
    """(ms per timed step, peak bytes, model) of ``steps`` training steps after 3 warm-up steps
    (compilation happens in the first)."""
    release_memory(device)
    cfg = load_config(variant, overrides=shape)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(shape["vocab_size"], (batch, shape["block_size"]), generator=g).to(device) for _ in "xy")
    sets = None
    if cfg.objective.objective == "bce":  # K = 50 positive ids per position, as a teacher's top-50
        sets = torch.randint(shape["vocab_size"], (batch, shape["block_size"], 50), generator=g).to(device)
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective).to(device)
    if compile:
        model.transformer.compile()
    opt = model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), device.type)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else PeakRSS.current()
    times = []
    with PeakRSS() as rss:
        for i in range(steps + 3):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(x, y, sets, n_train_tokens=10**8).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak) - base
    return times, peak, model


def training_table(args, shape: dict, device: torch.device, started: float) -> None:
    flops = peak_flops(device)
    print(
        f"## Training step ({device_name(device)}; batch {args.batch} x {shape['block_size']}, "
        f"{'bf16 autocast, ' if device.type == 'cuda' else ''}{'compiled' if args.compile else 'eager'})\n"
    )
    print("| variant | ms/step | tok/s | MFU | x baseline | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    base_ms = None
    for name in args.variants:
        if time.perf_counter() - started > args.budget_s:
            print(f"| {name} | skipped: past --budget-s {args.budget_s:.0f} | | | | |")
            continue
        times, peak, model = step_times(name, shape, args.batch, args.steps, device, args.compile)
        ms = statistics.median(times)
        base_ms = base_ms or ms
        tok_s = args.batch * shape["block_size"] / (ms / 1000)
        mfu = f"{100 * model.estimate_mfu(tok_s, flops):.1f} %" if flops else "n/a"
        print(f"| {name} | {ms:.1f} | {tok_s:,.0f} | {mfu} | {ms / base_ms:.2f} | {peak / 2**20:,.0f} |")
        del model
    print()


def loss_table(n: int, c: int, device: torch.device) -> None:
    print(f"## Fused loss memory (V = 50257, N = {n}, C = {c}; forward + backward)\n")
    print("| objective | dense MiB | fused MiB | dense ms | fused ms |")
    print("|---|---:|---:|---:|---:|")
    for name in ("ce", "bce", "bayes"):
        _, _, dense_peak, dense_ms = run_one(name, "dense", n, c, 50257, 50, device)
        _, _, fused_peak, fused_ms = run_one(name, "fused", n, c, 50257, 50, device)
        print(f"| {name} | {dense_peak / 2**20:,.0f} | {fused_peak / 2**20:,.0f} | {dense_ms:.1f} | {fused_ms:.1f} |")
    print()


def generation_table(shape: dict, tokens: int, device: torch.device) -> None:
    print(f"## Generation (greedy, batch 1, {tokens} new tokens after 16)\n")
    print("| variant | weights | tok/s |")
    print("|---|---|---:|")
    prompt = [list(range(16))]
    for variant, samples in (("baseline", 0), ("bayes", 8)):
        cfg = load_config(variant, overrides=shape)
        torch.manual_seed(0)
        run = Run(None, GPT(cfg.model, cfg.objective).to(device).eval(), cfg)
        for dtype in ("float32", "bfloat16"):
            predictor = build_predictor([run], Prediction(mc_samples=samples, seed=0, dtype=dtype), generation=True)
            generate(predictor, prompt, 4, temperature=0.0)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            generate(predictor, prompt, tokens, temperature=0.0)
            sync(device)
            print(f"| {variant} (S = {max(samples, 1)}) | {dtype} | {tokens / (time.perf_counter() - t0):,.1f} |")
    print()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and 2 steps: checks the script, in seconds")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--batch", type=int, default=None, help="default 12 (GPT-2 shape), 4 with --smoke")
    p.add_argument("--variants", default=",".join(REGISTRY))
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager backbone (compile: CUDA only)")
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=480.0)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: run with --device cpu --smoke")
    args.variants = args.variants.split(",")
    args.compile = args.compile and device.type == "cuda"  # inductor on a CPU costs minutes per graph
    shape = SMOKE if args.smoke else GPT2
    args.batch = args.batch or (4 if args.smoke else 12)
    if args.smoke:
        args.steps, args.gen_tokens = 2, 8
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    training_table(args, shape, device, started)
    loss_table(64 if args.smoke else 12 * 1024, 32 if args.smoke else 768, device)
    generation_table(shape, args.gen_tokens, device)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
