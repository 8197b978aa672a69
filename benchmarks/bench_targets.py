"""Teacher-set building throughput against the teacher's plain forward.

For a random-initialised ``ckpt:`` teacher (no training needed: speed does not depend on
the weights) and the ``ngram:`` teacher, on one prepared dataset, it measures
    build        tokens/s of `build_targets` (train split: teacher + selection + memmap IO)
    forward      tokens/s of the teacher alone over the same positions and windows, same
                 batch size (stream_probs: forward + probabilities; no selection, no IO)
    no-overlap   ckpt only: forward over non-overlapping windows (every position predicted
                 once, the least context); build does ~2x that work for >= half-window context
and prints a table (or JSON with --json). Target: build / forward >= 0.8. Build and forward
alternate ``--repeats`` times and each reports its median, because a second of work on a
busy 2-core machine varies by tens of percent.

    python benchmarks/bench_targets.py [--source synthetic:default] [--size nano] [--json]
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

from gptvariants.common.atomic import atomic_write
from gptvariants.common.runtime import resolve_device
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.dataset import TokenDataset
from gptvariants.data.prepare import prepare
from gptvariants.store.checkpoint import save_checkpoint
from gptvariants.targets import build_targets, load_teacher


def random_run(data: TokenDataset, run: Path, size: str, block_size: int) -> None:
    """A gptvariants run folder holding a random-initialised checkpoint for `data`."""
    cfg = load_config("baseline", overrides={"size": size, "block_size": block_size, "vocab_size": data.vocab_size})
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective)
    info = {"tokenizer": data.meta["tokenizer"], "vocab_size": data.vocab_size, "hash": data.meta["hash"]}
    save_checkpoint(run, model, {"step": 0, "config": cfg.to_dict(), "data": info})
    atomic_write(run / "data.json", json.dumps(data.meta) + "\n")


def forward_rate(teacher, tokens: np.ndarray, chunk: int) -> float:
    """Positions/s of teacher.stream_probs over `tokens`, consuming the probabilities (a max per row)."""
    t0 = time.perf_counter()
    for a in range(0, len(tokens), chunk):
        for _, p in teacher.stream_probs(tokens, a, min(len(tokens), a + chunk)):
            p.max(dim=-1)
    _sync(teacher.device)
    return len(tokens) / (time.perf_counter() - t0)


@torch.no_grad()
def no_overlap_rate(teacher, tokens: np.ndarray) -> float:
    L, B = teacher.context, teacher.batch_size
    n = len(tokens) // L * L
    win = torch.from_numpy(np.asarray(tokens[:n], dtype=np.int64).reshape(-1, L))
    t0 = time.perf_counter()
    for i in range(0, len(win), B):
        h = teacher.hidden(win[i : i + B].to(teacher.device))
        h = h.reshape(-1, h.shape[-1])
        rows = teacher.rows_per_chunk()
        for s in range(0, len(h), rows):
            teacher.probs_from_hidden(h[s : s + rows]).max(dim=-1)
    _sync(teacher.device)
    return n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="synthetic:default", help="data source for gptvariants.data.prepare.prepare")
    ap.add_argument("--data", default=None, help="an already prepared data folder (skips prepare)")
    ap.add_argument("--size", default="nano", help="model size of the ckpt teacher")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="build/forward measurements per teacher (median)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = Path(args.data) if args.data else tmp / "data"
        if not args.data:
            prepare(args.source, data_dir)
        data = TokenDataset(data_dir)
        random_run(data, tmp / "run", args.size, args.block_size)
        train = np.asarray(data.split("train"))
        rows = []
        for spec in (f"ckpt:{tmp / 'run'}", f"ngram:{args.ngram}"):
            teacher = load_teacher(spec, data, device)
            build, forward = [], []
            for i in range(args.repeats):
                meta = build_targets(data_dir, spec, tmp / f"sets-{i}", k=args.k, device=args.device, progress=False)
                build.append(meta["splits"]["train"]["tokens_per_s"])
                forward.append(forward_rate(teacher, train, 8192))
            row = {
                "teacher": spec.split(":")[0] + (f":{args.size}" if spec.startswith("ckpt") else f":{args.ngram}"),
                "train_tokens": len(train),
                "vocab": data.vocab_size,
                "k": args.k,
                "mean_set_size": meta["mean_set_size"],
                "build_tok_s": statistics.median(build),
                "forward_tok_s": statistics.median(forward),
            }
            if spec.startswith("ckpt"):
                row["no_overlap_tok_s"] = no_overlap_rate(teacher, train)
            row["build_vs_forward"] = row["build_tok_s"] / row["forward_tok_s"]
            rows.append(row)

    env = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data": args.data or args.source,
    }
    if args.json:
        print(json.dumps({"env": env, "rows": rows}, indent=1))
        return
    print(f"device {env['device']}, torch {env['torch']}, {env['threads']} threads, data {env['data']}")
    print(
        f"{'teacher':<12} {'tokens':>9} {'V':>5} {'k':>3} {'set':>6} {'build tok/s':>12} {'forward tok/s':>14} "
        f"{'no-overlap':>11} {'build/fwd':>9}"
    )
    for r in rows:
        no = f"{r['no_overlap_tok_s']:>11,.0f}" if "no_overlap_tok_s" in r else f"{'-':>11}"
        print(
            f"{r['teacher']:<12} {r['train_tokens']:>9,} {r['vocab']:>5} {r['k']:>3} {r['mean_set_size']:>6.2f} "
            f"{r['build_tok_s']:>12,.0f} {r['forward_tok_s']:>14,.0f} {no} {r['build_vs_forward']:>9.2f}"
        )


if __name__ == "__main__":
    main()
