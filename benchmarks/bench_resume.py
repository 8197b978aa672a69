"""Start-up of a resumed run with and without checkpoint and data verification, side by side.

Builds a GPT-2-shape run (n_layer 12, n_head 12, n_embd 768, vocab 50257; 1.5 GB checkpoint:
weights + AdamW state) with one real training step, then times the set-up of ``--resume``
-- data, lock, model construction, optimizer, the checkpoint's choice and load -- in fresh
processes, alternating: "verified" is the shipped path (full XXH3-128 digests of both files in
a background thread while the model is built, the data's sampled fingerprint and check);
"unverified" replaces the checkpoint choice by the bare pointer and skips the data checks,
as before checksums existed. Also times the pieces alone (hashing, fingerprint) and the
hashing added to a save.

    python benchmarks/bench_resume.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from gptvariants.train import startup
from gptvariants.common.allocator import keep_freed_memory
from gptvariants.store.checkpoint import POINTER
from gptvariants.core.config import load_config
from gptvariants.common.runtime import setup_runtime

run, data, verify = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if not verify:  # what resuming did before checksums: follow the pointer, check nothing
    startup.find_checkpoint = lambda d: (Path(d) / json.loads((Path(d) / POINTER).read_text())["dir"], [])
    startup.data_fingerprint = lambda d, splits: {}
    startup.check_data = lambda *a: []
waits = []
real_agree = startup._agree
def timed_agree(rt, pending):  # the time the set-up waits for the background verification
    t = time.perf_counter()
    out = real_agree(rt, pending)
    waits.append(time.perf_counter() - t)
    return out
startup._agree = timed_agree
keep_freed_memory()
cfg = load_config("baseline", overrides=json.loads(sys.argv[4]))
t0, c0 = time.perf_counter(), time.process_time()
rt = setup_runtime(cfg)
data_, batches = startup.open_data(cfg, rt)
with startup.run_lock(run, rt):
    s = startup.start_session(cfg, rt, data_, batches, resume=True)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": wall, "cpu": cpu, "wait": waits[0], "step": s.start}))
"""


def shape(data: Path, run: Path) -> dict:
    return dict(
        size="gpt2",
        vocab_size=50257,
        block_size=64,
        batch_size=1,
        eval_iters=1,
        eval_interval=1,
        log_interval=1,
        max_iters=1,
        warmup_iters=0,
        progress="lines",
        tensorboard=False,
        device="cpu",
        dtype="float32",
        data=str(data),
        out_dir=str(run),
    )


def make_run(work: Path) -> tuple[Path, Path, dict]:
    from gptvariants.core.config import load_config
    from gptvariants.data.prepare import prepare
    from gptvariants.train.loop import train

    data, run = work / "data", work / "run"
    prepare("synthetic:tiny", data)
    overrides = shape(data, run)
    train(load_config("baseline", overrides=overrides))
    return data, run, overrides


def time_startup(run: Path, data: Path, overrides: dict, verify: bool) -> dict[str, float]:
    """{"seconds": set-up wall time, "wait": of which waiting for the checkpoint choice} in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(run), str(data), "1" if verify else "0", json.dumps(overrides)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pieces(run: Path, data: Path) -> dict[str, float]:
    """Milliseconds of each verification piece alone, best of 3, from the page cache."""
    from gptvariants.data.dataset import SPLITS
    from gptvariants.store.checkpoint import FILES, latest_checkpoint
    from gptvariants.store.integrity import data_fingerprint, file_digest

    ckpt = latest_checkpoint(run)
    size = sum((ckpt / f).stat().st_size for f in FILES)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000

    res = {
        "checkpoint_gb": size / 1e9,
        "xxh3_128_ms": best(lambda: [file_digest(ckpt / f, "xxh3_128") for f in FILES]),
        "sha256_ms": best(lambda: [file_digest(ckpt / f, "sha256") for f in FILES]),
        "data_fingerprint_ms": best(lambda: data_fingerprint(data, SPLITS)),
    }
    return res


def save_cost(run: Path) -> dict[str, float]:
    """Seconds to save the checkpoint, and the part of it spent hashing (manifest)."""
    import torch

    from gptvariants.core.config import Config
    from gptvariants.core.model import GPT
    from gptvariants.store import checkpoint as ck

    src = ck.latest_checkpoint(run)
    state = ck.load_state(src)
    cfg = Config.from_dict(state["config"])
    model = GPT(cfg.model, cfg.objective)
    ck.load_weights(src, model)
    hashing = []
    real = ck.describe_files

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        hashing.append(time.perf_counter() - t0)
        return out

    ck.describe_files = timed
    with tempfile.TemporaryDirectory(dir=run.parent) as tmp:
        t0 = time.perf_counter()
        ck.save_checkpoint(Path(tmp), model, state)
        total = time.perf_counter() - t0
    ck.describe_files = real
    del model, state
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"save_s": total, "hash_s": hashing[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="start-ups of each kind (alternating)")
    ap.add_argument("--workdir", default=None, help="where to build the run (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data, run, overrides = make_run(Path(tmp))
        time_startup(run, data, overrides, True)  # warm the page cache and the interpreter's files
        times: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for i in range(2 * args.repeats):
            verify = i % 2 == 0
            times[verify].append(time_startup(run, data, overrides, verify))
        result = summarise(times, args.repeats)
        result.update({**pieces(run, data), **save_cost(run)})
    print(json.dumps(result, indent=1))
    r = result
    print(
        f"resume start-up, median of {args.repeats} fresh processes each: "
        f"wall {r['wall_verified_s']:.3f} s verified vs "
        f"{r['wall_unverified_s']:.3f} s unverified ({r['wall_overhead_pct']:+.1f} %); process CPU time "
        f"{r['cpu_verified_s']:.3f} s vs {r['cpu_unverified_s']:.3f} s ({r['cpu_overhead_pct']:+.1f} %); "
        f"set-up blocked on the verification thread {r['wait_verified_ms']:.1f} ms"
    )
    print(
        f"alone: XXH3-128 of the {r['checkpoint_gb']:.2f} GB checkpoint {r['xxh3_128_ms']:.0f} ms "
        f"({100 * r['xxh3_128_ms'] / 1000 / r['wall_unverified_s']:.1f} % of the unverified start-up), SHA-256 "
        f"{r['sha256_ms']:.0f} ms; data fingerprint {r['data_fingerprint_ms']:.1f} ms; "
        f"save {r['save_s']:.2f} s, of which hashing {r['hash_s']:.3f} s"
    )


def summarise(times: dict[bool, list[dict[str, float]]], repeats: int) -> dict:
    med = {(v, k): statistics.median(t[k] for t in times[v]) for v in (True, False) for k in ("seconds", "cpu", "wait")}
    return {
        "repeats": repeats,
        "wall_verified_s": med[True, "seconds"],
        "wall_unverified_s": med[False, "seconds"],
        "wall_overhead_pct": 100 * (med[True, "seconds"] / med[False, "seconds"] - 1),
        "cpu_verified_s": med[True, "cpu"],
        "cpu_unverified_s": med[False, "cpu"],
        "cpu_overhead_pct": 100 * (med[True, "cpu"] / med[False, "cpu"] - 1),
        "wait_verified_ms": 1000 * med[True, "wait"],
        "wait_unverified_ms": 1000 * med[False, "wait"],
        "runs_verified": times[True],
        "runs_unverified": times[False],
    }


if __name__ == "__main__":
    main()
