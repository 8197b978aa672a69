"""The entmax variant's cost against the baseline's, and conformal sets' cost against one eval pass.

1. The mapping alone on (rows, V) random logits: softmax, ``core.entmax`` (entmax-1.5 and sparsemax,
   partial sort growing k) and, when installed, the ``entmax`` package (exact full sort, and k = 256).
2. The fused loss alone (forward + backward) at V = 50257, at a fresh model's logit scale and a
   trained one's: what the mapping costs once the support is small.
3. A training step (forward + backward + AdamW, ``bench_step.measure``) of baseline, entmax and
   entmax with sparsemax at the experiment's shape (4 x 128, block 64, batch 12, the synthetic
   language's vocabulary) and at V = 50257, rounds interleaved; target: <= 1.3x and <= 1.5x.
4. Conformal sets on a short-trained synthetic run: the scoring pass of ``gptv eval`` against
   ``predict.conformal.fit_and_check`` (RAPS tuning, fitting every score at three alphas, checking)
   over the same held-out tokens; target: at most one pass beyond the scoring itself (<= 2x).

    python benchmarks/bench_entmax.py                      # all three, CPU or CUDA
    python benchmarks/bench_entmax.py --parts map,step --rounds 1 --rows 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_step import Shape, measure

from gptvariants.core.entmax import entmax

VARIANTS = ["baseline", "entmax", "entmax:objective=sparsemax"]


def timed(fn, repeats: int, sync) -> float:
    """Median ms of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def bench_mapping(rows: int, vocab: int, device: torch.device, repeats: int, sync) -> list[str]:
    z = torch.randn(rows, vocab, device=device) * 3
    cases = {
        "softmax": lambda: torch.softmax(z, -1),
        "core.entmax 1.5": lambda: entmax(z, 1.5),
        "core.entmax sparsemax": lambda: entmax(z, 2.0),
    }
    try:
        import entmax as pkg

        cases["package entmax15 (full sort)"] = lambda: pkg.entmax15(z, dim=-1)
        cases["package entmax15 (k=256)"] = lambda: pkg.entmax15(z, dim=-1, k=256)
    except ImportError:
        pass
    ms = {name: timed(fn, repeats, sync) for name, fn in cases.items()}
    lines = [f"### The mapping on {rows} x {vocab} logits", "", "| mapping | ms | x softmax |", "|---|---:|---:|"]
    return lines + [f"| {k} | {v:.1f} | {v / ms['softmax']:.2f} |" for k, v in ms.items()] + [""]


def bench_step(shapes: list[Shape], device: torch.device, rounds: int, steps: int) -> list[str]:
    lines = [
        "### Training step",
        "",
        "| shape | variant | ms/step | x baseline (median over rounds) |",
        "|---|---|---:|---:|",
    ]
    for shape in shapes:
        per_round: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                per_round[v].append(statistics.median(measure(v, shape, device, torch.float32, steps, 1)[0]))
        for v in VARIANTS:
            ratio = statistics.median(a / b for a, b in zip(per_round[v], per_round["baseline"]))
            lines.append(f"| {shape.name} | {v} | {statistics.median(per_round[v]):.1f} | {ratio:.2f} |")
    return lines + [""]


def bench_loss(n: int, c: int, vocab: int, device: torch.device, repeats: int, sync) -> list[str]:
    """Forward + backward of the fused, chunked loss alone at logit scales of a fresh model (std 0.02:
    every token a support candidate, one full sort per chunk) and of a trained one (std 3)."""
    from gptvariants.core.objectives import CrossEntropy, EntmaxLoss, SparsemaxLoss, fused_linear_loss

    lines = [f"### The fused loss alone, {n} positions x V = {vocab}, C = {c} (forward + backward)", ""]
    lines += ["| logit std | objective | ms | x cross-entropy |", "|---|---|---:|---:|"]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, c, generator=g).to(device).requires_grad_()
    y = torch.randint(vocab, (n,), generator=g).to(device)
    for std in (0.02, 3.0):
        W = (torch.randn(vocab, c, generator=g) * std / c**0.5).to(device).requires_grad_()

        def step(obj, W=W):
            return lambda: fused_linear_loss(h, W, None, obj, y).backward()

        ms = {o.name: timed(step(o), repeats, sync) for o in (CrossEntropy(), EntmaxLoss(), SparsemaxLoss())}
        lines += [f"| {std} | {k} | {v:.1f} | {v / ms['ce']:.2f} |" for k, v in ms.items()]
    return lines + [""]


def bench_conformal(data: str, steps: int, tokens: int, device: torch.device) -> list[str]:
    from gptvariants.core.config import load_config
    from gptvariants.data.prepare import prepare
    from gptvariants.data.sources import split_source
    from gptvariants.evaluate.scoring import score
    from gptvariants.predict.conformal import ALPHAS, fit_and_check
    from gptvariants.predict.methods import load_runs
    from gptvariants.predict.prediction import build_predictor
    from gptvariants.train.loop import train

    lines = ["### Conformal sets against one scoring pass", "", "| variant | eval pass s | conformal s | ratio |"]
    lines.append("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(data, root / "data")
        for variant in ("baseline", "sig", "entmax"):
            over = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=steps)
            over.update(data=str(root / "data"), out_dir=str(root / variant), progress="lines", tensorboard=False)
            train(load_config(variant, overrides={**over, "device": str(device), "eval_interval": steps}))
            [run] = load_runs(root / variant, device)
            ids = split_source(run.folder, root / "data", "val").tokens[:tokens]
            predictor = build_predictor([run])
            t0 = time.perf_counter()
            score(predictor, ids, stride=32, point=False)  # gptv eval's pass over the same held-out tokens
            t1 = time.perf_counter()
            fit_and_check(predictor, ids, ALPHAS)  # tunes, fits on the first half, checks on the second
            t2 = time.perf_counter()
            lines.append(f"| {variant} | {t1 - t0:.2f} | {t2 - t1:.2f} | {(t2 - t1) / (t1 - t0):.2f} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="map,loss,step,conformal", help="comma-separated: map, loss, step, conformal")
    p.add_argument("--positions", type=int, default=2048, help="positions of the loss part")
    p.add_argument("--rows", type=int, default=1024, help="rows of the mapping benchmark")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--data", default="synthetic:default", help="the conformal part's data (synthetic:tiny to try)")
    p.add_argument("--train-steps", type=int, default=200, help="training steps of the conformal part's runs")
    p.add_argument("--tokens", type=int, default=40_000, help="held-out tokens of the conformal part")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpt2", action="store_true", help="also time the step at GPT-2 124M's shape (batch 2 x 256)")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    parts = args.parts.split(",")
    print(f"# bench_entmax on {device} (torch {torch.__version__})\n")
    if "map" in parts:
        print("\n".join(bench_mapping(args.rows, args.vocab, device, args.repeats, sync)))
    if "loss" in parts:
        for c in (128, 768):
            print("\n".join(bench_loss(args.positions, c, args.vocab, device, args.repeats, sync)))
    if "step" in parts:
        from gptvariants.data.synthetic import SyntheticLanguage

        v_exp = SyntheticLanguage.random("default").vocab_size
        shapes = [
            Shape(f"experiment (V={v_exp})", 4, 4, 128, v_exp, 64, 12),
            Shape("V=50257", 4, 4, 128, 50257, 64, 12),
        ]
        if args.gpt2:  # the whole step at GPT-2 124M's shape (the loss's share is what a real run pays)
            shapes.append(Shape("GPT-2 124M (12 x 768, V=50257)", 12, 12, 768, 50257, 256, 2))
        print("\n".join(bench_step(shapes, device, args.rounds, args.steps)))
    if "conformal" in parts:
        print("\n".join(bench_conformal(args.data, args.train_steps, args.tokens, device)))


if __name__ == "__main__":
    main()
