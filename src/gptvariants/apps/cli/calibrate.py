"""``gptv calibrate`` (a temperature per method) and ``gptv laplace`` (a last-layer Laplace posterior)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...common.argtypes import device, non_negative_int, positive_int
from ...common.runtime import resolve_device
from ...data.sources import split_source
from ...predict.calibration import fit_temperature, save_temperature
from ...predict.laplace import fit_laplace
from ...predict.methods import METHODS, load_runs
from ...store.run import CALIBRATION_FILE, RunFolder
from .prediction import add_prediction_arguments


def _data_tokens(run_dir: Path, data: str | None, split: str) -> np.ndarray:
    """The tokens of ``split`` of ``data``, by default the run's own data (data.json)."""
    folder = Path(data) if data is not None else RunFolder(run_dir).data_path()
    return split_source(Path(run_dir), folder, split).tokens


def _cmd_calibrate(args: argparse.Namespace) -> int:

    tokens = _data_tokens(Path(args.ckpt), args.data, "val")  # checked before the model is loaded
    [run] = load_runs(args.ckpt, resolve_device(args.device))
    fit = fit_temperature(
        run,
        tokens,
        method=args.method,
        mc_samples=args.mc_samples,
        seed=args.seed,
        fit=args.fit,
    )
    save_temperature(run.folder, fit)
    b, a = fit["before"], fit["after"]
    print(
        f"{run.folder} [{fit['key']}]: T = {fit['temperature']:.4f} (fitted on {fit['fit_tokens']:,} val tokens); "
        f"on the other {fit['check_tokens']:,}: NLL {b['nll']:.4f} -> {a['nll']:.4f}, ECE {b['ece']:.4f} -> "
        f"{a['ece']:.4f}"
    )
    print(f"stored in {run.folder / CALIBRATION_FILE}; eval, sample and the API use it (--no-temperature to ignore)")
    return 0


def _cmd_laplace(args: argparse.Namespace) -> int:

    [run] = load_runs(args.ckpt, resolve_device(args.device))
    train = _data_tokens(run.folder, args.data, "train")
    val = _data_tokens(run.folder, args.data, "val")
    info = fit_laplace(
        run.folder,
        run.model,
        train,
        val,
        kind=args.kind,
        tokens=args.tokens,
        heldout=args.heldout_tokens,
        samples=args.mc_samples,
    )
    print(
        f"{run.folder}: {info['kind']} Laplace over {info['train_positions']:,} training positions, prior precision "
        f"{info['prior_precision']:.4g}; held-out NLL {info['heldout_nll_map']:.4f} (trained weights) -> "
        f"{info['heldout_nll']:.4f} ({info['samples']} draws); {info['fit_seconds']:.1f} s"
    )
    return 0


def register_cli(subparsers) -> None:
    """Add `gptv calibrate` and `gptv laplace`."""

    p = subparsers.add_parser("calibrate", help="fit a temperature on held-out data (stored with the run)")
    p.add_argument("ckpt", help="run folder")
    p.add_argument("--data", default=None, help="prepared data folder (default: the one the run was trained on)")
    add_prediction_arguments(
        p, [k for k, m in METHODS.items() if not m.generation_only], temperature=False, dtype=False
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--fit",
        choices=["nll", "ece"],
        default="nll",
        help="what T minimises on held-out tokens: the NLL (Guo et al.) or the top-1 ECE",
    )
    p.add_argument("--device", type=device, default="auto")
    p.set_defaults(func=_cmd_calibrate)

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
    p.set_defaults(func=_cmd_laplace)
