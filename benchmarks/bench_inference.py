"""Inference at the hardware's limit, measured side by side in one process (issue 20).

decode   greedy tok/s at batch 1 at GPT-2 124M's shape (random weights, V = 50257, 16-token
         prompt): gptv in fp32, bf16 and int8 weights (``Prediction.dtype``) against Hugging Face
         ``generate`` in fp32 and bf16, rounds interleaved; ratios to HF fp32 and HF bf16.
quality  the effect of the weights' precision on a tiny run trained here on the synthetic
         language: max |log p| difference over every scored position and token, perplexity
         change, greedy-text agreement (100 prompts, first 32 tokens identical), ECE change.
dropout  MC dropout S = 8 (``Predictor`` batched passes, bulk masks) against one deterministic
         pass, and against the explicit passes it replaced (nn.Dropout + SDPA's dropout_p, one
         pass per draw), at GPT-2's shape with T = ``--tokens``.
draws    a Bayesian head's S = 8 draws against one at GPT-2's shape (C = 768, V = 50257) over
         ``--tokens`` positions: the whole scoring pass (backbone + readout + token statistics)
         and a profile of the readout's parts, which shows where the extra draws' time goes.

    python benchmarks/bench_inference.py                          # all sections (~10 min on 2 cores)
    python benchmarks/bench_inference.py --sections decode --rounds 5
    python benchmarks/bench_inference.py --small                  # small shapes: checks the script
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gptvariants import metrics as M
from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.dataset import TokenDataset
from gptvariants.data.prepare import prepare
from gptvariants.decode.generate import generate
from gptvariants.predict.methods import Run, load_runs
from gptvariants.predict.prediction import Prediction, build_predictor
from gptvariants.predict.predictive import Predictor, score_windows
from gptvariants.train.loop import train

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
SMALL = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, block_size=128)


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n## {title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


# ----------------------------------------------------------------------------- decode


def hf_model(shape: dict, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = GPT2Config(
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        vocab_size=shape["vocab_size"],
        n_positions=shape["block_size"],
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(c).to(dtype).eval()


def decode_section(shape: dict, tokens: int, rounds: int) -> None:
    cfg = load_config("baseline", overrides=shape)
    torch.manual_seed(0)
    run = Run(None, GPT(cfg.model, cfg.objective).eval(), cfg)
    prompt = [list(range(1, 17))]
    systems: dict[str, Callable[[], object]] = {}
    for dtype in ("float32", "bfloat16", "int8"):
        p = build_predictor([run], Prediction(dtype=dtype), generation=True)
        systems[f"gptv {dtype}"] = lambda p=p: generate(p, prompt, tokens, temperature=0.0)
    ids = torch.tensor(prompt)
    for dtype in (torch.float32, torch.bfloat16):
        hf = hf_model(shape, dtype)
        kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        systems[f"HF generate {str(dtype)[6:]}"] = lambda hf=hf, kw=kw: hf.generate(ids, **kw)
    times: dict[str, list[float]] = {k: [] for k in systems}
    with torch.no_grad():
        for r in range(rounds):  # interleaved, order rotating: load drift hits every system alike
            names = list(systems)[r % len(systems) :] + list(systems)[: r % len(systems)]
            for name in names:
                times[name].append(median_ms(systems[name], 1) / 1000)
    tok_s = {k: tokens / statistics.median(v) for k, v in times.items()}
    rows = [
        [k, f"{v:.1f}", f"{v / tok_s['HF generate float32']:.2f}", f"{v / tok_s['HF generate bfloat16']:.2f}"]
        for k, v in tok_s.items()
    ]
    title = (
        f"Decoding (greedy, batch 1, {tokens} tokens, {shape['n_layer']}x{shape['n_embd']}, V {shape['vocab_size']})"
    )
    table(title, ["system", "tok/s", "x HF fp32", "x HF bf16"], rows)


# ----------------------------------------------------------------------------- quality


def trained_run(workdir: Path, steps: int) -> tuple[list[Run], np.ndarray]:
    data = workdir / "data"
    prepare("synthetic:tiny", data)
    overrides = dict(
        n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16, max_iters=steps, eval_interval=steps,
        eval_iters=5, learning_rate=3e-3, warmup_iters=20, device="cpu", data=str(data),
        out_dir=str(workdir / "run"), progress="lines", tensorboard=False,
    )  # fmt: skip
    train(load_config("baseline", overrides=overrides))
    return load_runs(workdir / "run"), np.asarray(TokenDataset(data).split("val"))


def scored(runs: list[Run], dtype: str, tokens: np.ndarray) -> dict:
    predictor = build_predictor(runs, Prediction(mc_samples=0, dtype=dtype, seed=0))
    block = predictor.block_size
    log_p, conf, correct, nll = [], [], [], []
    for _, y, d in score_windows(predictor, tokens, M.sliding_windows(len(tokens), block, block // 2)):
        log_p.append(d.log_p)
        nll.append(-d.logprob(y))
        top = d.probs.max(-1)
        conf.append(top.values)
        correct.append(top.indices == y)
    step = (len(tokens) - 8) // 100
    prompts = [tokens[i * step : i * step + 8].tolist() for i in range(100)]
    greedy = generate(predictor, prompts, 32, temperature=0.0)
    return dict(
        log_p=torch.cat(log_p),
        ppl=math.exp(torch.cat(nll).mean().item()),
        ece=M.expected_calibration_error(torch.cat(conf).numpy(), torch.cat(correct).numpy()),
        greedy=greedy,
    )


def quality_section(steps: int, n_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs, val = trained_run(Path(tmp), steps)
        val = val[:n_tokens]
        ref = scored(runs, "float32", val)
        rows = []
        for dtype in ("float32", "bfloat16", "int8"):
            got = ref if dtype == "float32" else scored(runs, dtype, val)
            same = sum(a == b for a, b in zip(got["greedy"], ref["greedy"], strict=True))
            rows.append([
                dtype, f"{(got['log_p'] - ref['log_p']).abs().max().item():.4f}", f"{got['ppl']:.4f}",
                f"{100 * (got['ppl'] / ref['ppl'] - 1):+.3f} %", f"{same} / {len(ref['greedy'])}",
                f"{got['ece']:.4f}", f"{got['ece'] - ref['ece']:+.4f}",
            ])  # fmt: skip
    header = ["weights", "max abs log p diff", "perplexity", "change", "greedy 32 identical", "ECE", "ECE change"]
    table(f"Precision and results (tiny run, {steps} steps, {len(val)} val tokens)", header, rows)


# ----------------------------------------------------------------------------- MC dropout


def explicit_dropout_passes(model: GPT, x: torch.Tensor, y: torch.Tensor, passes: int) -> torch.Tensor:
    """One pass per draw through nn.Dropout and SDPA's dropout_p, as MC dropout ran before batching,
    but each pass read out over all its rows at once (the old ``Predictor`` read 20-row chunks)."""
    log_ps = []
    model.transformer.train()
    try:
        for _ in range(passes):
            h = model.transformer(x)[0]
            log_ps.append(model.logits(h).log_softmax(-1))
    finally:
        model.transformer.eval()
    p = torch.stack(log_ps).exp().mean(0)
    return -p.gather(-1, y[0, :, None]).log()


def dropout_section(shape: dict, n_tokens: int, reps: int) -> None:
    cfg = load_config("baseline-dropout", overrides={**shape, "block_size": max(n_tokens, 8)})
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective).eval()
    x = torch.randint(shape["vocab_size"], (1, n_tokens), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    one = Predictor([model], samples=0)
    mc = Predictor([model], samples=0, dropout_samples=8, seed=0)
    with torch.no_grad():
        ms = {
            "deterministic pass": median_ms(lambda: one.nll(x, y), reps),
            "MC dropout S=8, batched bulk masks": median_ms(lambda: mc.nll(x, y), reps),
            "MC dropout S=8, explicit passes (nn.Dropout, SDPA; one readout)": median_ms(
                lambda: explicit_dropout_passes(model, x, y, 8), reps
            ),
        }
    base = ms["deterministic pass"]
    rows = [[k, f"{v:.0f}", f"{v / base:.2f}"] for k, v in ms.items()]
    title = f"MC dropout (T = {n_tokens}, {shape['n_layer']}x{shape['n_embd']}, V {shape['vocab_size']}; target <= 9x)"
    table(title, ["system", "ms", "x deterministic"], rows)


# ----------------------------------------------------------------------------- head draws


def readout_profile(model: GPT, h: torch.Tensor, samples: int, reps: int) -> dict[str, float]:
    """ms of each part of the readout of S draws at h (n, C), as ``Predictor.draws`` runs them; the
    logit moments also in the chunks of rows that ``score_windows`` reads out at a time (fewer
    rows per chunk for more draws: each chunk's two matmuls re-read the (V, C) weights)."""
    head, g = model.head, torch.Generator().manual_seed(0)
    rows = Predictor([model], samples=samples).rows_per_chunk()

    def chunked_moments() -> None:
        for r in range(0, len(h), rows):
            head.logit_moments(h[r : r + rows])

    with torch.no_grad(), head.kept_variance():
        mean, std = head.logit_moments(h)
        z = torch.empty((samples, *mean.shape)).normal_(generator=g).mul_(std).add_(mean)
        lp = z.log_softmax(-1)
        return {
            "logit moments (2 matmuls), all rows at once": median_ms(lambda: head.logit_moments(h), reps),
            "logit moments in score_windows' chunks": median_ms(chunked_moments, reps),
            "S n V normal draws": median_ms(lambda: torch.empty_like(z).normal_(generator=g), reps),
            "z = mean + std * eps": median_ms(lambda: z.mul(std).add_(mean), reps),
            "log_softmax of the draws": median_ms(lambda: z.log_softmax(-1), reps),
            "mixture: exp, mean, log": median_ms(lambda: lp.exp().mean(0).log(), reps),
        }


def draws_section(shape: dict, n_tokens: int, reps: int) -> None:
    cfg = load_config("bayes", overrides={**shape, "block_size": max(n_tokens, 8), "posterior_sigma_init": 0.01})
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective).eval()
    x = torch.randint(shape["vocab_size"], (1, n_tokens), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)[0]
    ms: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        h = model.transformer(x)[0]
        for s in (1, 8):
            p = Predictor([model], samples=s, seed=0)

            def readout(p=p):
                with p.fixed_weights():
                    return p.draws([h]).token_stats(y)

            ms[f"S={s}"] = {
                "whole pass (backbone + readout)": median_ms(lambda p=p: (p.encode(x), readout(p)), reps),
                "readout + token stats": median_ms(readout, reps),
                **readout_profile(model, h, s, reps),
            }
    rows = [[k, f"{ms['S=1'][k]:.1f}", f"{ms['S=8'][k]:.1f}", f"{ms['S=8'][k] / ms['S=1'][k]:.2f}"] for k in ms["S=1"]]
    where = f"{n_tokens} positions, C {shape['n_embd']}, V {shape['vocab_size']}"
    title = f"Head draws (Bayesian head, {where}; target <= 1.8x)"
    table(title, ["part", "S=1 ms", "S=8 ms", "ratio"], rows)
    normals = ms["S=8"]["S n V normal draws"] / (8 * n_tokens * shape["vocab_size"]) * 1e6
    print(f"\nnormal draws: {normals:.2f} ns each; S n V of them are the floor of S independent draws per position")


def main() -> None:
    keep_freed_memory()  # as `gptv` does: fresh (S, n, V) buffers would otherwise be page-faulted in per call
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="decode,quality,dropout,draws")
    p.add_argument("--small", action="store_true", help="small shapes and few repetitions: checks the script")
    p.add_argument("--new-tokens", type=int, default=64, help="decode: tokens generated per timing")
    p.add_argument("--tokens", type=int, default=256, help="dropout, draws: positions scored")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quality-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SMALL if args.small else GPT2
    if args.small:
        args.new_tokens, args.tokens, args.rounds, args.quality_steps = 8, 32, 1, 30
    sections = args.sections.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "decode" in sections:
        decode_section(shape, args.new_tokens, args.rounds)
    if "quality" in sections:
        quality_section(args.quality_steps, 2000 if args.small else 20000)
    if "dropout" in sections:
        dropout_section(shape, args.tokens, args.rounds)
    if "draws" in sections:
        draws_section(shape, args.tokens, args.rounds)


if __name__ == "__main__":
    main()
