"""nanoGPT's CPU recipe, side by side: `gptv train` against a plain nanoGPT-style loop, one process.

The plain loop is what nanoGPT's train.py does per iteration, written out: random windows
from the np.memmap (get_batch), full (B, T, V) logits and F.cross_entropy, backward, gradient
clipping, AdamW. It uses the same backbone module and the same exact-GELU, bias-free shape
(4 layers, 4 heads, 128 wide, block 64, batch 12), so the difference between the two rows is
the toolkit's own overhead: fused chunked loss, per-step seeding, batch assembly, logging.
Rounds alternate the two so that machine drift hits both; reported is the median ms per
iteration over 10-iteration blocks (evaluation excluded, as in nanoGPT's iter timing).

    python benchmarks/bench_recipe.py --data data/shakespeare_char [--iters 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.core.model import Backbone
from gptvariants.train.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "shakespeare-char-cpu.toml"


def plain_loop(data_dir: Path, iters: int, seed: int = 1337) -> list[float]:
    """ms per iteration, per block of 10 iterations, of a nanoGPT-style loop."""
    cfg = load_config(
        file=RECIPE, overrides={"vocab_size": str(json.loads((data_dir / "meta.json").read_text())["vocab_size"])}
    )
    m, t = cfg.model, cfg.train
    torch.manual_seed(seed)
    backbone = Backbone(m)
    head = torch.nn.Linear(m.n_embd, m.vocab_size, bias=False)
    backbone.wte.weight = head.weight
    params = [p for p in set(backbone.parameters()) | set(head.parameters())]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.learning_rate,
        betas=(t.beta1, t.beta2),
    )
    data = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")

    def get_batch():
        ix = torch.randint(len(data) - m.block_size, (t.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + m.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + m.block_size].astype(np.int64)) for i in ix])
        return x, y

    blocks, t0 = [], time.perf_counter()
    x, y = get_batch()
    for it in range(1, iters + 1):
        logits = head(backbone(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        x, y = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if it % 10 == 0:
            loss.item()
            now = time.perf_counter()
            blocks.append((now - t0) * 100)  # ms per iteration over the block
            t0 = now
    return blocks


def toolkit_loop(data_dir: Path, iters: int) -> list[float]:
    """ms per iteration, per block of 10 iterations, of `gptv train` on the recipe (from metrics.jsonl)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            file=RECIPE,
            overrides={
                "data": str(data_dir),
                "out_dir": tmp + "/run",
                "max_iters": str(iters),
                "lr_decay_iters": str(iters),
                "eval_interval": str(iters),
                "eval_iters": "2",
                "log_interval": "10",
                "progress": "lines",
                "tensorboard": "false",
            },
        )
        train(cfg)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["ms_per_step"] for r in records if r["kind"] == "train"]


def main() -> None:
    keep_freed_memory()  # as `gptv` does; GPTV_MALLOC_TUNING=0 measures without it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="char-level Tiny Shakespeare, from `gptv prepare text:.../input.txt`"
    )
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    plain, ours = [], []
    for _ in range(args.rounds):
        ours += toolkit_loop(args.data, args.iters)[1:]  # the first block includes start-up
        plain += plain_loop(args.data, args.iters)[1:]
    p, o = statistics.median(plain), statistics.median(ours)
    print(
        f"nanoGPT CPU recipe (4L/4H/128, block 64, batch 12), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.iters} iterations"
    )
    print("| loop | median ms/iter | ratio |\n|---|---|---|")
    print(f"| plain nanoGPT-style loop | {p:.1f} | 1.00x |")
    print(f"| gptv train | {o:.1f} | {o / p:.2f}x |")


if __name__ == "__main__":
    main()
