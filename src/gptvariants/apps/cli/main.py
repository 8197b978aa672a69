"""``gptv``: prepare data, train a variant, build teacher sets, sample, evaluate, run an experiment.

Each command group's parser is a module of ``parsers/`` whose ``register_cli(subparsers)`` adds
it and names its handler (``parsers.Command("module:function")``), a module beside this one that
is imported only when the command runs: building the parser imports no torch, so ``--help`` and
argument errors (a bad flag or value, an unknown ``gptv train --key``) answer at once.
``build_parser`` gives every parser the same habits: options in both ``--snake_case`` and
``--kebab-case``, defaults in ``--help``, and one-line errors.

A user's mistake (a bad value, a missing or damaged file) ends with one line naming what is
wrong and exit code 2; anything else is our bug and keeps its traceback. ``GPTV_DEBUG=1``
prints the traceback of user errors too. Under torchrun only rank 0 prints them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import NoReturn

from ...common.allocator import keep_freed_memory
from ...common.argtypes import non_negative_int, open_unit_interval, positive_int
from ...common.errors import GptvError
from ...common.threads import apply_threads
from ...core.config import config_help, load_config, parse_overrides
from ...core.variants import REGISTRY
from .messages import rank, say
from .parsers import Command

# modules of parsers/ that add their own subcommands
PLUGINS: tuple[str, ...] = (
    "sample", "targets", "evaluate", "calibrate", "density", "conformal", "experiment", "export", "serve", "lm_eval"
)  # fmt: skip

THREADS_HELP = "CPU threads (default: torch's, one per core or OMP_NUM_THREADS; idle threads sleep, not spin)"

# the user's mistakes (our own error types; the OS refusing a file the user named): one line, no
# traceback. A ValueError or RuntimeError raised anywhere else is our bug and keeps its traceback.
USER_ERRORS = (GptvError, OSError)


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    if args.help_config:
        print(config_help(args.variant))
        return 0
    _check_config_early(args, extra)
    return Command("train:cmd_train")(args, extra)


def _check_config_early(args: argparse.Namespace, extra: list[str]) -> None:
    """The first config error ``gptv train`` would meet (an unknown key, a bad value, a bad file),
    raised before torch loads. A new run resolves its config first (``train.train_config``); a run
    folder that exists has its files checked before its config, so that is left to the command."""
    overrides = parse_overrides(extra)
    if args.resume or (args.out and Path(args.out).is_dir()):
        return
    given = {"data": args.data, "out_dir": args.out}
    load_config(args.variant, args.config, overrides | {k: v for k, v in given.items() if v})


def _cmd_variants(args: argparse.Namespace) -> int:
    width = max(len(n) for n in REGISTRY)
    for v in REGISTRY.values():
        defaults = ", ".join(f"{k}={val}" for k, val in v.defaults.items())
        print(
            f"{v.name:<{width}}  head={v.head:<8} objective={v.objective:<6} {v.equation}"
            + (f"  [{defaults}]" if defaults else "")
        )
    return 0


# ----------------------------------------------------------------------------- parser habits


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with where to look), printed by rank 0 only."""

    def error(self, message: str) -> NoReturn:
        if rank() == 0:
            self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        self.exit(2)


def _shows_default(action: argparse.Action) -> bool:
    """Whether --help should add the default: an option whose default says something (not None, False, '' or [])
    and whose help does not already give it."""
    quiet = action.default in (None, False, "", [], argparse.SUPPRESS)
    return bool(action.option_strings) and not quiet and "default" not in (action.help or "").lower()


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return f"{text} (default: %(default)s)".lstrip() if _shows_default(action) else text


def apply_habits(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its subparsers both spellings of every multi-word option
    (``--max_new_tokens`` and ``--max-new-tokens``; the help shows the registered one) and
    defaults in --help. Applied once to the whole tree, so plugin parsers need nothing."""
    parser.formatter_class = HelpFormatter
    for action in list(parser._actions):
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                apply_habits(sub)
            continue
        if action.help is None and _shows_default(action):
            action.help = "(default: %(default)s)"  # argparse prints nothing for an option without help
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            for other in ("--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")):
                if other not in parser._option_string_actions:
                    parser._option_string_actions[other] = action


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptvariants")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:

    parser = Parser(prog="gptv", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"gptv {_version()}")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize a corpus into train.bin/val.bin/meta.json")
    p.add_argument(
        "source",
        help="synthetic[:tiny|default], text:PATH (file, folder or glob), shakespeare, "
        "wikitext-2, wikitext-103, openwebtext",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="char | gpt2 | bpe:N (default: word for synthetic, char for text, gpt2 for Hugging Face corpora)",
    )
    p.add_argument("--seed", type=non_negative_int, default=1337, help="seed of the synthetic language and splits")
    p.add_argument(
        "--val-fraction",
        type=open_unit_interval,
        default=None,
        help="validation share (default 0.1 for text; corpora with their own split keep it)",
    )
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="non-UTF-8 bytes: fail naming the offset, or replace them",
    )
    p.add_argument("--num-proc", type=positive_int, default=None, help="processes for tokenizing large corpora")
    p.add_argument("--force", action="store_true", help="replace the dataset or files already in --out")
    p.set_defaults(func=Command("prepare:cmd_prepare"))

    p = sub.add_parser("train", help="train a variant; extra --key=value pairs override the config")
    p.add_argument("--variant", default=None, help=f"one of {', '.join(REGISTRY)} (default baseline)")
    p.add_argument("--data", default=None, help="prepared data folder (with --resume: the run's, by default)")
    p.add_argument("--out", default=None, help="run folder (checkpoints, metrics.jsonl, config.json)")
    p.add_argument("--config", default=None, help="TOML config file, or a run's saved config.json")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint with its saved config (safe overrides allowed)",
    )
    p.add_argument("--help-config", action="store_true", help="list every config key with its default")
    p.set_defaults(func=_cmd_train, takes_extra=True)

    p = sub.add_parser("variants", help="list the registered variants")
    p.set_defaults(func=_cmd_variants)

    for name in PLUGINS:
        importlib.import_module(f"{__package__}.parsers.{name}").register_cli(sub)
    for p in dict.fromkeys(sub.choices.values()):  # `gptv train --threads 2` as well as `gptv --threads 2 train`
        p.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS, metavar="N", help=THREADS_HELP)
    apply_habits(parser)
    return parser


# ----------------------------------------------------------------------------- running a command


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    def one_line(message, category, filename, lineno, file=None, line=None):
        say(args.command, "warning", str(message))

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        apply_threads(args.threads)
        code = args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    sys.stdout.flush()  # a closed pipe shows here, inside main's handler
    return code


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse: --help, --version, or its one-line error (already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return _run(args, extra)
    except BrokenPipeError:  # `gptv sample ... | head`: the reader left; stop quietly (Python's recipe)
        _discard_stdout()
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("GPTV_DEBUG"):
            traceback.print_exc()
        say(args.command, "error", str(e))
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file (tests capture it)
        pass


if __name__ == "__main__":
    sys.exit(main())
