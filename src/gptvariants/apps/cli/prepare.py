"""``gptv prepare``: tokenize a corpus into train.bin/val.bin/meta.json (its parser is in main.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...data.prepare import prepare
from .messages import say


def cmd_prepare(args: argparse.Namespace) -> int:

    meta = prepare(
        args.source,
        Path(args.out),
        args.tokenizer,
        seed=args.seed,
        val_fraction=args.val_fraction,
        errors=args.errors,
        num_proc=args.num_proc,
        force=args.force,
    )
    for note in meta.get("notes", []):
        say("prepare", "note", note)
    print(
        f"prepared {args.source} in {args.out}: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train / "
        f"{meta['val_tokens']:,} val tokens ({meta['tokenizer']})"
    )
    if "synthetic" in meta:
        print(f"true entropy rate of the val split: {meta['synthetic']['entropy_rate_val']:.4f} nats/token")
    return 0
