"""Feature density (issue 19): fitting cost against one training epoch, and the eval's overhead.

At the experiment's shape (4 layers, 4 heads, 128 wide, block_size 64, batch 12; a character
vocabulary of 65; random weights: speed does not depend on them), side by side in one run:

    fit            ``density.fit_density`` over ``--positions`` training positions (whole windows)
    epoch          training over as many positions: forward, backward and AdamW steps of batch x
                   block_size positions, ``--train-steps`` of them timed and scaled to the epoch
    eval           ``scoring.score`` over ``--eval-tokens`` tokens (stride block_size / 2) without
                   and with the density on the member (Mahalanobis, relative Mahalanobis, kNN),
                   ``--repeats`` times interleaved, the least of each
    memory         the stored density's bytes: K x C means, two C x C precisions, the kNN bank;
                   the same for any number of positions
    whole eval     with ``--run RUN`` (a trained run with a fitted density): the whole ``gptv eval``
                   of RUN (scoring, samples, bootstrap; ``--ood`` as the experiment passes it) with
                   its density and with a copy of RUN that has none, interleaved, the least of each

Targets: fit <= 1x the epoch; eval with density <= 1.2x without (the scoring pass alone is the
stricter measure: the whole eval also generates samples and resamples, which the density leaves alone).

    python benchmarks/bench_density.py [--positions 200000] [--eval-tokens 50000] [--bank 2048] [--k 10]
                                       [--repeats 3] [--threads 1] [--device cpu] [--shape 4,4,128]
    python benchmarks/bench_density.py --run runs/experiment/runs/baseline --ood "synthetic?shift=0.5"
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.evaluate.evaluation import evaluate
from gptvariants.evaluate.scoring import score
from gptvariants.predict.density import FeatureDensity, fit_density
from gptvariants.predict.predictive import Member, Predictor
from gptvariants.store.run import DENSITY_FILE, DENSITY_META, RunFolder

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, batch_size=12)


def epoch_seconds(cfg, positions: int, steps: int, device: str) -> float:
    """Seconds to train over ``positions`` positions, from ``steps`` timed steps (after one warm-up)."""
    model = GPT(cfg.model, cfg.objective).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T, V = cfg.train.batch_size, cfg.model.block_size, cfg.model.vocab_size
    x, y = torch.randint(V, (B, T), device=device), torch.randint(V, (B, T), device=device)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x, y).loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t0) / steps
    return per_step * positions / (B * T)


def eval_seconds(model: GPT, tokens: np.ndarray, density: FeatureDensity | None) -> float:
    t0 = time.perf_counter()
    score(Predictor([Member(model, density=density)], seed=0), tokens, stride=model.config.block_size // 2)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, default=200_000)
    p.add_argument("--eval-tokens", type=int, default=50_000)
    p.add_argument("--bank", type=int, default=2048)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="eval timings, interleaved; the least of each is shown")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="4,4,128", help="n_layer,n_head,n_embd of the random model (default 4,4,128)")
    p.add_argument("--run", help="time the whole gptv eval of this run (its density fitted) instead")
    p.add_argument("--ood", help="with --run: the shifted text gptv eval scores beside the split")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.run:
        return whole_eval(Path(a.run), a.ood, a.repeats)
    torch.manual_seed(0)
    n_layer, n_head, n_embd = (int(x) for x in a.shape.split(","))
    shape = {**SHAPE, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    cfg = load_config("baseline", overrides=shape)
    model = GPT(cfg.model, cfg.objective).to(a.device).eval()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 65, a.positions + 2 * cfg.model.block_size + 2)
    val = rng.integers(0, 65, a.eval_tokens)
    t0 = time.perf_counter()
    density, info = fit_density(model, train, positions=a.positions, bank=a.bank, k=a.k)
    fit = time.perf_counter() - t0
    epoch = epoch_seconds(cfg, info["positions"], a.train_steps, a.device)
    eval_scores(model, val, density)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.repeats):  # interleaved, the least of each: the steadiest figure on a busy machine
        for with_it in (False, True):
            times[with_it].append(eval_seconds(model, val, density if with_it else None))
    plain, with_density = min(times[False]), min(times[True])
    size = sum(t.numel() * t.element_size() for t in (density.means, density.precision, density.precision0,
                                                       density.mean0, density.bank))  # fmt: skip
    print(f"shape {shape}, {info['positions']:,} positions, {info['classes']} classes, bank {a.bank}, k {a.k}, "
          f"device {a.device}, {a.threads} thread(s)\n")  # fmt: skip
    print("| measure | seconds | ratio | target |\n|---|---|---|---|")
    print(f"| fit over {info['positions']:,} positions / one training epoch over them | {fit:.2f} / {epoch:.2f} | "
          f"{fit / epoch:.2f}x | <= 1x |")  # fmt: skip
    print(f"| gptv eval scoring of {len(val):,} tokens, with / without density | {with_density:.2f} / {plain:.2f} | "
          f"{with_density / plain:.2f}x | <= 1.2x |")  # fmt: skip
    print(f"| stored density | {size / 2**20:.2f} MiB | - | independent of positions |")


def whole_eval(run: Path, ood: str | None, repeats: int) -> None:
    """Seconds of ``evaluate`` on ``run`` and on a copy without its density, interleaved, the least of each."""
    if not (run / DENSITY_FILE).is_file():
        raise SystemExit(f"{run} has no fitted density: run `gptv density {run}` first")
    data = RunFolder(run).data_path()  # gptv eval's default: the run's own data
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / run.name
        shutil.copytree(run, plain, ignore=shutil.ignore_patterns(DENSITY_FILE, DENSITY_META, "eval"))
        times: dict[Path, list[float]] = {plain: [], run: []}
        for _ in range(repeats):
            for r in (plain, run):
                t0 = time.perf_counter()
                evaluate(r, data, ood=ood, out=Path(tmp) / f"{r is run}.json", temperature=False)
                times[r].append(time.perf_counter() - t0)
    without, with_density = min(times[plain]), min(times[run])
    print(f"| whole gptv eval of {run} (--ood {ood}), with / without density | {with_density:.2f} / "
          f"{without:.2f} | {with_density / without:.2f}x | <= 1.2x |")  # fmt: skip


def eval_scores(model: GPT, tokens: np.ndarray, density: FeatureDensity) -> None:
    score(Predictor([Member(model, density=density)], seed=0), tokens[:2048], stride=model.config.block_size // 2)


if __name__ == "__main__":
    main()
