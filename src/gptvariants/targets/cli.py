"""``gptv targets``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .build import build_targets


def _cmd_targets(args: argparse.Namespace) -> int:
    meta = build_targets(
        Path(args.data), args.teacher, Path(args.out) if args.out else None, k=args.k, select=args.select, top_p=args.top_p,
        min_prob=args.min_prob, ratio=args.ratio, ppl_filter=args.ppl_filter, ppl_window=args.ppl_window,
        context=args.context, batch_size=args.batch_size, device=args.device, seed=args.seed, store_probs=args.store_probs,
    )
    name = Path(meta["dir"]).name
    print(f"teacher sets in {meta['dir']}: mean set size {meta['mean_set_size']:.2f} (k={meta['k']}), "
          + (f"{meta['tokens_per_s']:,.0f} tokens/s" if meta["tokens_per_s"] else "nothing left to build"))
    print(f"train with: gptv train --variant sig --data {args.data} --targets={name}")
    return 0


def register_cli(subparsers) -> None:
    """Add `gptv targets`."""
    p = subparsers.add_parser("targets", help="build teacher next-token sets for the sigmoid variants")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--teacher", required=True, help="hf:NAME_OR_PATH | ckpt:RUN | ngram:N | oracle")
    p.add_argument("--out", default=None, help="output folder (default DATA/targets/<teacher>)")
    p.add_argument("--k", type=int, default=50, help="most ids per position, the true next token included")
    p.add_argument("--select", choices=("top", "sample"), default="top",
                   help="top: the teacher's most probable tokens (the study); sample: the distinct tokens among k-1 draws from the teacher")
    p.add_argument("--top-p", type=float, default=None, help="keep only the nucleus of mass P")
    p.add_argument("--min-prob", type=float, default=0.0, help="keep candidates with probability >= P (oracle default 0.01)")
    p.add_argument("--ratio", type=float, default=1.0, help="fraction of positions given teacher candidates (study: 0.5)")
    p.add_argument("--ppl-filter", type=float, default=None, help="drop candidates that raise the window perplexity above X (study: 100)")
    p.add_argument("--ppl-window", type=int, default=32, help="tokens in the perplexity-filter window")
    p.add_argument("--context", type=int, default=None, help="window of hf:/ckpt: teachers (default: their context)")
    p.add_argument("--batch-size", type=int, default=0, help="teacher windows per forward (0: 16384 tokens' worth)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--store-probs", action="store_true", help="also save the teacher probabilities (float16)")
    p.set_defaults(func=_cmd_targets)
