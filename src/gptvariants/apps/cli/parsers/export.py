"""The parser of ``gptv export``: a run as a Hugging Face folder."""

from __future__ import annotations

import argparse

from ...options import FORMATS
from . import Command


def register_cli(subparsers) -> None:
    """Add ``gptv export`` to the ``gptv`` subcommands."""
    p = subparsers.add_parser(
        "export",
        help="write a run as a Hugging Face transformers folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder (made by gptv train)")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--format", default="hf", help=f"export format: {', '.join(FORMATS)}")
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT, replacing the files of an earlier export"
    )
    p.set_defaults(func=Command("export:cmd_export"))
