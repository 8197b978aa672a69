"""``LanguageModel.score()`` on 1 M characters against one batched forward pass over the same windows.

A character model (nanoGPT's CPU shape for Tiny Shakespeare: 4 layers, 4 heads, 128 wide,
block_size 64; trained a few steps, since speed does not depend on the weights) scores the first
``--chars`` characters of ../shared/data/tinyshakespeare/input.txt (generated text when absent).
score() feeds generation's windows (``window.generation_windows``: once the text outgrows the
context, windows of block_size tokens advanced by block_size // 4), so every token is fed about
four times; the reference is what those windows cost at the least:

    reference   the same windows, ``--batch`` at a time through the backbone, the head's logits
                at the scored rows only, log_softmax and the target's log-probability.
    score()     ``lm.score(text)``: token records with log-probability, entropy and text. It feeds
                ``predictive.score_windows`` ``api.SCORE_BATCH`` (16) windows per forward pass.
    score(), --batch windows   the same call with ``score_windows`` patched to take ``--batch``
                windows per forward pass (one window per pass was api.score's first version).

``--overhead`` times the three again with the transformer blocks removed (embeddings and final
layer norm only): what is left is the work around the blocks, per window and per token.
The log-probabilities of score() and of the reference agree (asserted, 1e-4). Target (issue 13):
score() within 1.1x the reference. Times are wall and CPU seconds of this process, one thread by
default: on a shared machine the CPU time of a single-threaded process is the steadier measure.
``--profile`` prints the top functions of score() by cumulative
time (cProfile) on the first ``--profile-chars`` characters.

    python benchmarks/bench_score.py [--text FILE] [--chars 1000000] [--batch 64] [--threads 1] [--overhead]
                                     [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from gptvariants.apps import api
from gptvariants.apps.api import LanguageModel, load
from gptvariants.common.allocator import keep_freed_memory
from gptvariants.core.config import load_config
from gptvariants.data.prepare import prepare
from gptvariants.decode.window import generation_windows
from gptvariants.predict.predictive import score_windows
from gptvariants.train.loop import train

SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False)


def corpus(path: str, chars: int) -> tuple[str, str]:
    """(text, where it came from): the file's first ``chars`` characters, or seeded generated words
    when it is absent."""
    if Path(path).is_file():
        return Path(path).read_text(encoding="utf-8")[:chars], path
    words = "the king said that a lord of the north would ride to the sea and never come home again".split()
    g = torch.Generator().manual_seed(0)
    text = ""
    while len(text) < chars:
        text += " ".join(words[i] for i in torch.randint(len(words), (4096,), generator=g).tolist()) + "\n"
    return text[:chars], "generated words"


def tiny_run(text: str, root: Path, steps: int) -> Path:
    (root / "text.txt").write_text(text, encoding="utf-8")
    prepare(f"text:{root / 'text.txt'}", root / "data")
    cfg = load_config(
        "baseline",
        None,
        {
            **SHAPE,
            "data": str(root / "data"),
            "out_dir": str(root / "run"),
            "max_iters": steps,
            "batch_size": 12,
            "eval_interval": 10**6,
            "eval_iters": 1,
            "progress": "lines",
            "tensorboard": False,
            "device": "cpu",
            "log_interval": 10**6,
        },
    )
    train(cfg)
    return root / "run"


def stream(lm: LanguageModel, text: str) -> list[int]:
    """The tokens score() scores: end-of-text first when the tokenizer has one."""
    ids = lm.tokenizer.encode(text)
    return ([lm.tokenizer.eot_token] if lm.tokenizer.eot_token is not None else []) + ids


@torch.no_grad()
def reference(lm: LanguageModel, ids: list[int], batch: int) -> torch.Tensor:
    """log p(token) of every scored token: score()'s windows, ``batch`` windows of equal length per
    forward pass, head logits at the scored rows only."""
    model, tokens = lm.model, torch.tensor(ids)
    windows = generation_windows(len(ids), model.config.block_size)
    out = torch.empty(len(ids) - 1)
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < batch and windows[j][1] - windows[j][0] == windows[i][1] - windows[i][0]:
            j += 1
        group = windows[i:j]
        x = torch.stack([tokens[b : e - 1] for b, e, _ in group])
        h = model.transformer(x)
        rows = torch.cat([h[k, s - b - 1 :] for k, (b, e, s) in enumerate(group)])
        logp = torch.log_softmax(model.logits(rows), dim=-1)
        first = group[0][2]
        y = tokens[first : first + len(rows)]
        out[first - 1 : first - 1 + len(rows)] = logp.gather(1, y[:, None]).squeeze(1)
        i = j
    return out


@contextmanager
def batched_score_windows(batch: int) -> Iterator[None]:
    """``api.score`` with ``batch`` windows per forward pass instead of its batch=1."""

    def windows(*args, **kwargs):
        kwargs["batch"] = batch
        return score_windows(*args, **kwargs)

    with mock.patch.object(api, "score_windows", windows):
        yield


def timed(fn, *args) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w0, time.process_time() - c0


def profile(lm: LanguageModel, text: str, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    lm.score(text)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def measure(
    lm: LanguageModel, text: str, ids: list[int], batch: int, check: bool = True
) -> tuple[dict[str, tuple[float, float]], float]:
    """(wall, CPU) seconds of the reference, score() and score() with batched windows, side by side;
    and the largest difference between their log-probabilities (asserted < 1e-4)."""
    ref, *t_ref = timed(reference, lm, ids, batch)
    records, *t_score = timed(lm.score, text)
    with batched_score_windows(batch):
        batched, *t_batched = timed(lm.score, text)
    diff = 0.0
    for got in ([r.logprob for r in records], [r.logprob for r in batched]):
        assert len(got) == len(ref), (len(got), len(ref))
        diff = max(diff, float((torch.tensor(got) - ref).abs().max()))
    assert diff < 1e-4 or not check, f"score() and the reference disagree by {diff}"
    return {
        "reference (batched forward)": tuple(t_ref),
        "score()": tuple(t_score),
        "score(), --batch windows per pass": tuple(t_batched),
    }, diff


def row(name: str, n: int, t: tuple[float, float], ref: tuple[float, float]) -> dict:
    return {
        "what": name,
        "wall_s": round(t[0], 2),
        "cpu_s": round(t[1], 2),
        "tokens_per_cpu_s": round(n / t[1]),
        "wall_vs_reference": round(t[0] / ref[0], 2),
        "cpu_vs_reference": round(t[1] / ref[1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # as `gptv` does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=SHAKESPEARE, help="text file to score (default: %(default)s)")
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=64, help="windows per forward pass of the reference")
    ap.add_argument("--steps", type=int, default=20, help="training steps of the tiny model")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine, idle OpenMP threads spin)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="also time the three without the transformer blocks")
    ap.add_argument("--profile", action="store_true", help="also profile score() (cProfile)")
    ap.add_argument("--profile-chars", type=int, default=100_000)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text, source = corpus(args.text, args.chars)
    with tempfile.TemporaryDirectory() as tmp:
        lm = load(tiny_run(text, Path(tmp), args.steps))
    ids = stream(lm, text)
    lm.score(text[:5000]), reference(lm, ids[:5000], args.batch)  # warm-up: allocator, kernels

    times, diff = measure(lm, text, ids, args.batch)
    n, ref = len(ids) - 1, times["reference (batched forward)"]
    rows = [row(name, n, t, ref) for name, t in times.items()]
    prof = profile(lm, text[: args.profile_chars]) if args.profile else ""
    if args.overhead:
        lm.model.transformer.h = torch.nn.ModuleList()  # embeddings and ln_f only
        bare, _ = measure(lm, text, ids, args.batch, check=False)
        rows += [row(f"{name}, no blocks", n, t, ref) for name, t in bare.items()]
    if args.json:
        print(
            json.dumps({"chars": len(text), "tokens_scored": n, "source": source, "max_abs_diff": diff, "rows": rows})
        )
        return 0
    print(
        f"{len(text):,} characters of {source}, {n:,} tokens scored; model {SHAPE}, V = {lm.tokenizer.vocab_size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; max |score - reference| = {diff:.1e}"
    )
    print(table(rows))
    score = times["score()"]
    print(f"score() / reference = {score[1] / ref[1]:.2f}x in CPU time, {score[0] / ref[0]:.2f}x wall (target <= 1.1x)")
    print(prof)
    return 0


def table(rows: list[dict]) -> str:
    lines = [f"{'what':<48} {'wall s':>8} {'CPU s':>8} {'tokens/CPU s':>13} {'wall vs ref':>12} {'CPU vs ref':>11}"]
    lines += [
        f"{r['what']:<48} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['tokens_per_cpu_s']:>13,} "
        f"{r['wall_vs_reference']:>11.2f}x {r['cpu_vs_reference']:>10.2f}x"
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
