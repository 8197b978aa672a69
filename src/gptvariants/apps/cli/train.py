"""``gptv train``: resolve the run's config, check it against the device, and train (its parser,
and the config check that runs before torch loads, are in main.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...common.checks import device_problem
from ...core.config import Config, ConfigError, load_config, parse_overrides
from ...core.resume import fit_world_size, resume_config
from ...core.sizing import check_fits
from ...data.dataset import TokenDataset
from ...store.run import check_run_files
from ...train.loop import train
from .messages import rank, say


def train_config(args: argparse.Namespace, extra: list[str]) -> Config:
    """The Config ``gptv train`` runs: from --config/--variant/overrides, or with ``--resume --out RUN``
    from the run's saved config.json (``resume.resume_config``); fitted to the processes torchrun
    started and checked against the device and its memory before anything is allocated."""

    overrides = parse_overrides(extra)
    if args.data:
        overrides["data"] = args.data
    if args.out:
        overrides["out_dir"] = args.out
    run = Path(args.out) if args.out else None
    if run is not None and run.is_dir():
        check_run_files(run)
    elif args.resume and run is not None:
        raise ConfigError(f"run folder {run} does not exist: there is nothing to resume")
    if args.resume and run is not None and (run / "config.json").is_file():
        cfg = resume_config(run, args.variant, args.config, overrides)
    else:
        cfg = load_config(args.variant, args.config, overrides)
    note = fit_world_size(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if note:
        say("train", "note", note)
    problem = device_problem(cfg.train.device) if cfg.train.device != "auto" else None
    if problem:
        raise ConfigError(problem)
    if cfg.train.data:
        check_fits(cfg, cfg.model.vocab_size or TokenDataset(Path(cfg.train.data)).vocab_size)
    return cfg


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:

    result = train(train_config(args, extra), resume=args.resume)
    ev = result.last_eval
    tail = f": val ce {ev['val_ce']:.4f}" if ev else ""
    if rank() == 0:
        state = "stopped" if result.interrupted else "finished"
        print(f"{state} at step {result.step}{tail}; run folder {result.run_dir}")
    return 130 if result.interrupted else 0
