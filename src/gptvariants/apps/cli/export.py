"""``gptv export``: a run as a Hugging Face folder."""

from __future__ import annotations

import argparse
import json
import sys

from ..export import META_KEY, MODELING, export


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
