"""``gptv density RUN``: fit the feature density of the final hidden state on the training split
(``predict.density``) and store it with the run; ``gptv eval`` then reports its scores."""

from __future__ import annotations

import argparse

from ...common.argtypes import device, non_negative_int, positive_int
from ...common.runtime import resolve_device
from ...predict.density import fit_density
from ...predict.methods import load_runs
from ...store.run import DENSITY_FILE, RunFolder
from .calibrate import _data_tokens


def _cmd_density(args: argparse.Namespace) -> int:
    [run] = load_runs(args.ckpt, resolve_device(args.device))
    density, info = fit_density(
        run.model,
        _data_tokens(run.folder, args.data, "train"),
        positions=args.positions,
        classes=args.classes,
        bank=args.bank,
        k=args.k,
        seed=args.seed,
        progress=True,
    )
    density.save(run.folder, {**info, "step": RunFolder(run.folder).checkpoint_step(), "seed": args.seed})
    print(
        f"{run.folder}: feature density over {info['positions']:,} training positions ({info['classes']} classes, "
        f"{info['bank']:,} features kept for kNN, k = {args.k}); {info['fit_seconds']:.1f} s"
    )
    print(f"stored in {run.folder / DENSITY_FILE}; gptv eval now reports mahalanobis, rel_mahalanobis and knn")
    return 0


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
    p.set_defaults(func=_cmd_density)
