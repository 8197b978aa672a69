"""CPU thread settings for training, quiet and beside one competing 2-thread CPU job (issue 21).

For each option, a fresh process (so that OMP_WAIT_POLICY is read before torch loads OpenMP)
builds the experiment's model (``gptv experiment``'s default shape, baseline head), takes two
warm-up steps and times ``--steps`` training steps (forward + backward + AdamW). Each option
runs quiet, then beside a competitor this script spawns: another process running 2-thread
matrix products in a loop with OpenMP's default waiting (the "other CPU job" of the issue),
started ``--settle`` seconds before the timed job. Rounds interleave the options; reported are
the median wall times, the loaded/quiet ratio and the loaded time against torch's default.

Options:
  default      torch's default: one thread per core, spinning OpenMP waits (gptv before issue 21)
  passive      one thread per core, OMP_WAIT_POLICY=PASSIVE
  one          1 thread (spinning waits do not matter with one thread)
  one-passive  1 thread, OMP_WAIT_POLICY=PASSIVE
  gptv         what `gptv` now does (common/threads.py): passive waiting, torch's thread count
  load         passive waiting and the cores the 1-minute load average leaves free (at least 1)

    python benchmarks/bench_threads.py                       # all options, 60 steps, 3 rounds
    python benchmarks/bench_threads.py --steps 20 --rounds 1 --options default,gptv
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
OPTIONS = {  # name -> (threads: a number, None for torch's default, "gptv" or "load"; OMP_WAIT_POLICY or None)
    "default": (None, None),
    "passive": (None, "PASSIVE"),
    "one": (1, None),
    "one-passive": (1, "PASSIVE"),
    "gptv": ("gptv", "PASSIVE"),
    "load": ("load", "PASSIVE"),
}
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    for _ in range(50):
        a = torch.tanh(a @ a * 1e-2)
"""


def worker(steps: int, threads: str | None) -> None:
    """The timed job (run in a child process): prints {"seconds": .., "threads": ..} as JSON."""
    import torch

    from gptvariants.common.threads import apply_threads
    from gptvariants.core.config import load_config
    from gptvariants.core.model import GPT
    from gptvariants.evaluate.experiment import DEFAULT_SHAPE

    if threads == "gptv":
        apply_threads(None)
    elif threads == "load":
        cpus = torch.get_num_threads()
        torch.set_num_threads(max(1, min(cpus, int(cpus - os.getloadavg()[0] + 0.5))))
    elif threads is not None:
        torch.set_num_threads(int(threads))
    shape = {k: DEFAULT_SHAPE[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")}
    cfg = load_config("baseline", overrides={**shape, "vocab_size": 2048, "device": "cpu"})
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective)
    opt = model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), "cpu")
    g = torch.Generator().manual_seed(0)
    B, T = cfg.train.batch_size, cfg.model.block_size

    def step() -> None:
        x, y = (torch.randint(0, 2048, (B, T), generator=g) for _ in range(2))
        model(x, y, None, 10**8).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()}))


def run_option(name: str, steps: int) -> dict:
    threads, policy = OPTIONS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, steps: int, loaded: bool, settle: float) -> dict:
    if not loaded:
        return run_option(name, steps)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
    try:
        time.sleep(settle)
        return run_option(name, steps)
    finally:
        rival.kill()
        rival.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds the competitor runs before the timed job")
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.steps, args.threads)
        return
    names = [n.strip() for n in args.options.split(",")]
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        ap.error(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    times: dict[tuple[str, bool], list[float]] = {}
    threads: dict[tuple[str, bool], int] = {}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for loaded in (False, True):
            for name in order:
                res = measure(name, args.steps, loaded, args.settle)
                times.setdefault((name, loaded), []).append(res["seconds"])
                threads[(name, loaded)] = res["threads"]
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.get(("default", True))
    print(f"\n{args.steps} training steps of the experiment's model, median of {args.rounds} round(s)\n")
    print(
        "| option | threads (quiet / loaded) | quiet s | beside a 2-thread job s | loaded / quiet | loaded vs default |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        q, ld = med[(name, False)], med[(name, True)]
        vs = f"{ld / base:.2f}" if base else "-"
        n = f"{threads[(name, False)]} / {threads[(name, True)]}"
        print(f"| {name} | {n} | {q:.2f} | {ld:.2f} | {ld / q:.2f} | {vs} |")


if __name__ == "__main__":
    main()
