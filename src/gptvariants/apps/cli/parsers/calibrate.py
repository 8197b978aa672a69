"""The parser of ``gptv calibrate`` (a temperature per method) and ``gptv laplace`` (a last-layer Laplace posterior)."""

from __future__ import annotations

from ....common.argtypes import device, non_negative_int, positive_int
from ....predict.options import scoring_methods
from . import Command
from .prediction import add_prediction_arguments


def register_cli(subparsers) -> None:
    """Add `gptv calibrate` and `gptv laplace`."""

    p = subparsers.add_parser("calibrate", help="fit a temperature on held-out data (stored with the run)")
    p.add_argument("ckpt", help="run folder")
    p.add_argument("--data", default=None, help="prepared data folder (default: the one the run was trained on)")
    add_prediction_arguments(p, scoring_methods(), temperature=False, dtype=False)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--fit",
        choices=["nll", "ece"],
        default="nll",
        help="what T minimises on held-out tokens: the NLL (Guo et al.) or the top-1 ECE",
    )
    p.add_argument("--device", type=device, default="auto")
    p.set_defaults(func=Command("calibrate:cmd_calibrate"))

    p = subparsers.add_parser("laplace", help="fit a last-layer Laplace posterior to a softmax run (post hoc)")
    p.add_argument("ckpt", help="run folder")
    p.add_argument("--data", default=None, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "kfac", "diag"],
        help="factorisation (auto: kfac up to 4096 tokens of vocabulary, diag above)",
    )
    p.add_argument("--tokens", type=positive_int, default=100_000, help="training positions for the curvature")
    p.add_argument(
        "--heldout-tokens", type=positive_int, default=10_000, help="validation positions for the prior precision"
    )
    p.add_argument(
        "--mc-samples",
        type=positive_int,
        default=16,
        help="draws of the MC predictive reported for the fitted posterior",
    )
    p.add_argument("--device", type=device, default="auto")
    p.set_defaults(func=Command("calibrate:cmd_laplace"))
