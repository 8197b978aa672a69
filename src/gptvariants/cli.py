"""``gptv``: prepare data, train a variant, build teacher sets, sample, evaluate, run an experiment.

Each subcommand lives beside the code it drives; modules that own a subcommand expose
``register_cli(subparsers)`` which adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError
from .config import KEYS, Config, ConfigError, load_config, parse_overrides
from .train import TrainingDiverged
from .variants import REGISTRY

# modules that add their own subcommands
PLUGINS: tuple[str, ...] = ("sample", "targets", "evaluate", "experiment", "export", "harness")

# errors that are the user's input, not our bug: print the message, no traceback
USER_ERRORS = (ConfigError, CheckpointError, TrainingDiverged, FileNotFoundError, ValueError, RuntimeError, OSError)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare

    meta = prepare(args.source, Path(args.out), args.tokenizer, seed=args.seed, val_fraction=args.val_fraction, errors=args.errors, num_proc=args.num_proc)
    print(f"prepared {args.source} in {args.out}: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens ({meta['tokenizer']})")
    if "synthetic" in meta:
        print(f"true entropy rate of the val split: {meta['synthetic']['entropy_rate_val']:.4f} nats/token")
    return 0


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .train import train

    if args.help_config:
        print(config_help())
        return 0
    overrides = parse_overrides(extra)
    if args.data:
        overrides["data"] = args.data
    if args.out:
        overrides["out_dir"] = args.out
    cfg = load_config(args.variant, args.config, overrides)
    result = train(cfg, resume=args.resume)
    ev = result.last_eval
    tail = f": val ce {ev['val_ce']:.4f}" if ev else ""
    print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}{tail}; run folder {result.run_dir}")
    return 130 if result.interrupted else 0


def _cmd_variants(args: argparse.Namespace) -> int:
    width = max(len(n) for n in REGISTRY)
    for v in REGISTRY.values():
        defaults = ", ".join(f"{k}={val}" for k, val in v.defaults.items())
        print(f"{v.name:<{width}}  head={v.head:<8} objective={v.objective:<6} {v.equation}" + (f"  [{defaults}]" if defaults else ""))
    return 0


def config_help() -> str:
    cfg = Config()
    lines = ["config keys (--key=value, or in a TOML file flat or under [model]/[objective]/[train]):"]
    for key, section in KEYS.items():
        lines.append(f"  {key:<28} {section:<10} default {getattr(getattr(cfg, section), key)!r}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize a corpus into train.bin/val.bin/meta.json")
    p.add_argument("source", help="synthetic[:tiny|default], text:PATH (file, folder or glob), shakespeare, wikitext-2, wikitext-103, openwebtext")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default=None, help="char | gpt2 | bpe:N (default: word for synthetic, char for text, gpt2 for Hugging Face corpora)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--val-fraction", type=float, default=None, help="validation share (default 0.1 for text; corpora with their own split keep it)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="non-UTF-8 bytes: fail naming the offset, or replace them")
    p.add_argument("--num-proc", type=int, default=None, help="processes for tokenizing large corpora")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train a variant; extra --key=value pairs override the config")
    p.add_argument("--variant", default=None, help=f"one of {', '.join(REGISTRY)} (default baseline)")
    p.add_argument("--data", default=None, help="prepared data folder")
    p.add_argument("--out", default=None, help="run folder (checkpoints, metrics.jsonl, config.json)")
    p.add_argument("--config", default=None, help="TOML config file")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default")
    p.set_defaults(func=_cmd_train, takes_extra=True)

    p = sub.add_parser("variants", help="list the registered variants")
    p.set_defaults(func=_cmd_variants)

    for name in PLUGINS:
        importlib.import_module(f"gptvariants.{name}").register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("GPTV_DEBUG"):
            traceback.print_exc()
        print(f"gptv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
