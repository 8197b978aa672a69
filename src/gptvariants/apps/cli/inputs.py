"""The files a command reads first, checked before it starts (``parsers.Command``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...store.run import check_run_files


def check_inputs(args: argparse.Namespace) -> None:
    """A run folder named by --ckpt: its files are complete and readable."""

    if isinstance(getattr(args, "ckpt", None), str) and Path(args.ckpt).is_dir():
        check_run_files(Path(args.ckpt))
