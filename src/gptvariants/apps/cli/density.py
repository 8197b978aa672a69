"""``gptv density RUN``: fit the feature density of the final hidden state on the training split
(``predict.density``) and store it with the run; ``gptv eval`` then reports its scores."""

from __future__ import annotations

import argparse

from ...common.runtime import resolve_device
from ...predict.density import fit_density
from ...predict.methods import load_runs
from ...store.run import DENSITY_FILE, RunFolder
from .calibrate import _data_tokens


def cmd_density(args: argparse.Namespace) -> int:
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
