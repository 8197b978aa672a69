"""``gptv calibrate`` (a temperature per method) and ``gptv laplace`` (a last-layer Laplace posterior)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...common.runtime import resolve_device
from ...data.sources import split_source
from ...predict.calibration import fit_temperature, save_temperature
from ...predict.laplace import fit_laplace
from ...predict.methods import load_runs
from ...store.run import CALIBRATION_FILE, RunFolder


def _data_tokens(run_dir: Path, data: str | None, split: str) -> np.ndarray:
    """The tokens of ``split`` of ``data``, by default the run's own data (data.json)."""
    folder = Path(data) if data is not None else RunFolder(run_dir).data_path()
    return split_source(Path(run_dir), folder, split).tokens


def cmd_calibrate(args: argparse.Namespace) -> int:

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


def cmd_laplace(args: argparse.Namespace) -> int:

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
