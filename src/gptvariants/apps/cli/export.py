"""``gptv export``: a run as a Hugging Face folder."""

from __future__ import annotations

import argparse
import json
import sys

from ..export import FORMATS, META_KEY, MODELING, export


def _progress(message: str) -> None:
    print(f"gptv export: {message} ...", file=sys.stderr, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    out = export(args.run, args.out, args.format, force=args.force, say=_progress)
    conf = json.loads((out / "config.json").read_text())
    meta, context = conf[META_KEY], conf["n_positions"]
    remote = (out / f"{MODELING}.py").exists()
    print(
        f"exported {args.run} ({meta['variant']}, step {meta['step']}) to {out}: load it with "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r}{', trust_remote_code=True' if remote else ''})"
    )
    past = "" if remote else " with trust_remote_code=True"
    print(f"its context is {context} tokens; loaded{past}, generate slides the window past it (see {out}/README.md)")
    return 0


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
    p.set_defaults(func=cmd_export)
