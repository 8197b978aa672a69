"""The parser of ``gptv targets``."""

from __future__ import annotations

from ....common.argtypes import (
    above_one,
    at_least_two,
    device,
    non_negative_int,
    positive_int,
    probability_open_closed,
    unit_interval,
)
from . import Command


def register_cli(subparsers) -> None:
    """Add `gptv targets`."""
    p = subparsers.add_parser("targets", help="build teacher next-token sets for the sigmoid variants")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--teacher", required=True, help="hf:NAME_OR_PATH | ckpt:RUN | ngram:N | oracle")
    p.add_argument("--out", default=None, help="output folder inside DATA/targets (default DATA/targets/<teacher>)")
    p.add_argument("--k", type=positive_int, default=50, help="most ids per position, the true next token included")
    p.add_argument(
        "--select",
        choices=("top", "sample"),
        default="top",
        help="top: the teacher's most probable tokens (the study); "
        "sample: the distinct tokens among k-1 draws from the teacher",
    )
    p.add_argument("--top-p", type=probability_open_closed, default=None, help="keep only the nucleus of mass P")
    p.add_argument(
        "--min-prob",
        type=unit_interval,
        default=0.0,
        help="keep candidates with probability >= P (oracle default 0.01)",
    )
    p.add_argument(
        "--ratio", type=unit_interval, default=1.0, help="fraction of positions given teacher candidates (study: 0.5)"
    )
    p.add_argument(
        "--ppl-filter",
        type=above_one,
        default=None,
        help="drop candidates that raise the window perplexity above X (study: 100)",
    )
    p.add_argument("--ppl-window", type=at_least_two, default=32, help="tokens in the perplexity-filter window")
    p.add_argument(
        "--context", type=positive_int, default=None, help="window of hf:/ckpt: teachers (default: their context)"
    )
    p.add_argument(
        "--batch-size", type=non_negative_int, default=0, help="teacher windows per forward (0: 16384 tokens' worth)"
    )
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--seed", type=non_negative_int, default=1337, help="seed of the ratio and sample draws")
    p.add_argument("--store-probs", action="store_true", help="also save the teacher probabilities (float16)")
    p.set_defaults(func=Command("targets:cmd_targets"))
