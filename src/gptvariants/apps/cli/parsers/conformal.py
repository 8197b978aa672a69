"""The parser of ``gptv conformal RUN --alpha 0.1``: split conformal next-token sets (``predict.conformal``)."""

from __future__ import annotations

from ....common.argtypes import device, non_negative_int, open_unit_interval, positive_int
from ....predict.options import ALPHAS, scoring_methods
from . import Command
from .prediction import add_prediction_arguments


def register_cli(subparsers) -> None:
    """Add `gptv conformal`."""
    p = subparsers.add_parser("conformal", help="fit conformal next-token sets on held-out data (stored with the run)")
    p.add_argument("ckpt", help="run folder")
    p.add_argument("--data", default=None, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument(
        "--alpha",
        type=open_unit_interval,
        action="append",
        default=None,
        help=f"miscoverage: the sets hold the true token with probability >= 1 - alpha; repeatable "
        f"(default {', '.join(map(str, ALPHAS))})",
    )
    add_prediction_arguments(p, scoring_methods())
    p.add_argument(
        "--ood",
        default=None,
        metavar="SOURCE",
        help="shifted text to check the same sets on: a prepared data folder, text:PATH, or synthetic?shift=S...",
    )
    p.add_argument("--tokens", type=positive_int, default=None, help="use the first N val tokens (default all)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device, default="auto")
    p.set_defaults(func=Command("conformal:cmd_conformal"))
