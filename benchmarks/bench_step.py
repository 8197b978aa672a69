"""Training-step cost of every variant against the baseline, measured side by side in one process.

For each shape, rounds interleave the variants (so drift in machine load hits all of them
alike; the order rotates each round): in each round every variant builds its model (same seed), takes two warm-up steps
and then ``--steps`` timed steps (forward + backward + AdamW). Reported per variant: the
median ms per step over all rounds; the ratio to the baseline as the median over rounds of
(variant / baseline in the same round), with its range; the peak memory of the variant alone (CUDA:
max_memory_allocated; CPU: peak resident set size sampled every millisecond, above the
process's footprint before the model was built), and both as ratios to the baseline.
Sigmoid variants train on K = 50 positive ids at every position (cached sets are read
from disk in real runs; here they are random ids already in memory). The row
``sig+online`` runs a student-sized teacher (a randomly initialised baseline checkpoint of
the same shape) inside every step through ``targets.build_online_teacher`` (top-50 sets).

    python benchmarks/bench_step.py                   # both shapes, table
    python benchmarks/bench_step.py --shape small --json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.core.variants import REGISTRY

WARMUP = 2  # untimed steps per variant and round


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab: int
    block: int
    batch: int


def shapes(device: torch.device) -> dict[str, Shape]:
    gpu = device.type == "cuda"
    return {
        # GPT-2 124M; CPU uses a shorter block and batch so a step takes seconds, not minutes
        "gpt2": Shape("gpt2", 12, 12, 768, 50257, 1024 if gpu else 128, 12 if gpu else 4),
        # the head-dominated shape where the study's scripts were measured on a 2-core CPU
        "small": Shape("small", 4, 4, 128, 50257, 64, 12),
    }


class PeakRSS:
    """Peak resident memory of this process while active, sampled by a thread every ~1 ms."""

    def __init__(self) -> None:
        self.page = 4096
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.001)

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # hand freed heap pages back to the OS so the next variant's RSS starts clean
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


def shape_overrides(shape: Shape) -> dict:
    return dict(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        block_size=shape.block,
        vocab_size=shape.vocab,
        dropout=0.0,
    )


def online_teacher(shape: Shape, device: torch.device, workdir: Path, k: int):
    """build_online_teacher over a student-sized random baseline checkpoint and a random-token dataset."""
    from gptvariants.data.dataset import FORMAT, TokenDataset, token_dtype
    from gptvariants.store.checkpoint import save_checkpoint
    from gptvariants.targets import build_online_teacher

    data = workdir / "data"
    data.mkdir(parents=True)
    dtype = token_dtype(shape.vocab)
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, shape.vocab, 4096).astype(dtype).tofile(data / f"{split}.bin")
    meta = {
        "format": FORMAT,
        "source": "random",
        "tokenizer": "none",
        "vocab_size": shape.vocab,
        "dtype": np.dtype(dtype).name,
        "eot_token": None,
        "train_tokens": 4096,
        "val_tokens": 4096,
        "hash": "random",
    }
    (data / "meta.json").write_text(json.dumps(meta))
    cfg = load_config("baseline", overrides=shape_overrides(shape))
    torch.manual_seed(1)
    save_checkpoint(workdir / "teacher", GPT(cfg.model, cfg.objective), {"step": 0, "config": cfg.to_dict()})
    return build_online_teacher(f"ckpt:{workdir / 'teacher'}?k={k}", TokenDataset(data), device)


def measure(variant: str, shape: Shape, device: torch.device, dtype: torch.dtype, steps: int, k: int, seed: int = 0):
    """(list of ms per timed step, peak bytes) for one variant alone."""
    release_memory(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else PeakRSS.current()
    teacher = None
    if variant == "sig+online":
        variant = "sig"
        tmp = tempfile.TemporaryDirectory()
        teacher = online_teacher(shape, device, Path(tmp.name), k)
    variant, _, keys = variant.partition(":")  # "bayes:reparam=weight;posterior_sigma_init=0.001"
    extra = dict(kv.split("=", 1) for kv in keys.split(";")) if keys else {}
    cfg = load_config(variant, overrides={**shape_overrides(shape), **extra})
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(shape.vocab, (shape.batch, shape.block), generator=g).to(device)
    y = torch.randint(shape.vocab, (shape.batch, shape.block), generator=g).to(device)
    sets = (
        torch.randint(shape.vocab, (shape.batch, shape.block, k), generator=g).to(device)
        if cfg.objective.objective == "bce"
        else None
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else torch.autocast(device.type, enabled=False)
    )
    times = []
    with PeakRSS() as rss:
        torch.manual_seed(seed)
        model = GPT(cfg.model, cfg.objective).to(device)
        opt = model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), device.type)
        for i in range(steps + WARMUP):
            sync()
            t0 = time.perf_counter()
            if teacher is not None:
                sets = teacher(x)
            with autocast:
                loss = model(x, y, sets, n_train_tokens=10**8).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= WARMUP:  # the first steps allocate optimizer state and fault in fresh pages
                times.append((time.perf_counter() - t0) * 1000)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak) - base
    del model, opt, x, y, sets, teacher
    return times, peak


def run(
    shape_names: list[str],
    variants: list[str],
    rounds: int,
    steps: int,
    k: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict]:
    results = []
    for shape in (shapes(device)[s] for s in shape_names):
        times = {v: [] for v in variants}
        round_ms = {v: [] for v in variants}  # per-round medians: ratios within a round cancel slow drift
        peaks = {v: 0 for v in variants}
        for r in range(rounds):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:  # rotate who goes first
                t, p = measure(v, shape, device, dtype, steps, k)
                times[v] += t
                round_ms[v].append(statistics.median(t))
                peaks[v] = max(peaks[v], p)
        for v in variants:
            ms = statistics.median(times[v])
            ratios = [a / b for a, b in zip(round_ms[v], round_ms["baseline"])]
            results.append(
                {
                    "variant": v,
                    "shape": shape.name,
                    "ms_per_step": round(ms, 2),
                    "peak_mem_mb": round(peaks[v] / 2**20, 1),
                    "ratio_to_baseline": round(statistics.median(ratios), 3),
                    "ratio_min": round(min(ratios), 3),
                    "ratio_max": round(max(ratios), 3),
                    "mem_ratio_to_baseline": round(peaks[v] / peaks["baseline"], 3),
                    "tokens_per_s": round(shape.batch * shape.block / ms * 1000, 1),
                    "config": f"{shape.n_layer}L {shape.n_embd}w V={shape.vocab} block {shape.block} batch "
                    "{shape.batch} K={k}",
                }
            )
    return results


def main() -> None:
    keep_freed_memory()  # as `gptv` does; GPTV_MALLOC_TUNING=0 measures without it
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["gpt2", "small", "both"], default="both")
    p.add_argument(
        "--variants",
        default=",".join([*REGISTRY, "sig+online"]),
        help="comma-separated; a variant with config keys is VARIANT:KEY=VALUE[;KEY=VALUE] (e.g. bayes:reparam=weight)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--k", type=int, default=50, help="positive ids per position for sigmoid variants")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--json-out", default=None, help="also write the JSON list to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = getattr(
        torch,
        "bfloat16"
        if args.dtype == "auto" and device.type == "cuda"
        else ("float32" if args.dtype == "auto" else args.dtype),
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    variants = args.variants.split(",")
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    names = ["gpt2", "small"] if args.shape == "both" else [args.shape]
    results = run(names, variants, args.rounds, args.steps, args.k, device, dtype)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")
    if args.json:
        print(json.dumps(results, indent=1))
        return
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; dtype {dtype}; torch {torch.__version__}; {args.rounds} rounds x {args.steps} steps, median")
    print(
        "| shape | variant | ms/step | ratio | ratio range over rounds | peak MiB | mem ratio | tokens/s |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['shape']} | {r['variant']} | {r['ms_per_step']:.1f} | {r['ratio_to_baseline']:.2f}x | "
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} "
            f"| {r['peak_mem_mb']:.0f} | {r['mem_ratio_to_baseline']:.2f}x | {r['tokens_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
