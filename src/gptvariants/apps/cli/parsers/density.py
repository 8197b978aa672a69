"""The parser of ``gptv density RUN``: fit the feature density of the final hidden state on the training split."""

from __future__ import annotations

from ....common.argtypes import device, non_negative_int, positive_int
from . import Command


def register_cli(subparsers) -> None:
    """Add `gptv density`."""
    p = subparsers.add_parser("density", help="fit the density of the final hidden state (stored with the run)")
    p.add_argument("ckpt", help="run folder")
    p.add_argument("--data", default=None, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument("--positions", type=positive_int, default=200_000, help="training positions to fit on")
    p.add_argument(
        "--classes", type=positive_int, default=256, help="most frequent next tokens with their own class mean"
    )
    p.add_argument(
        "--bank",
        type=positive_int,
        default=2048,
        help="normalised training features kept for kNN (each costs C multiply-adds per scored token)",
    )
    p.add_argument("--k", type=positive_int, default=10, help="the neighbour whose distance is the kNN score")
    p.add_argument("--seed", type=non_negative_int, default=0, help="which positions the kNN subsample keeps")
    p.add_argument("--device", type=device, default="auto")
    p.set_defaults(func=Command("density:cmd_density"))
