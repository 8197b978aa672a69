"""The parser of ``gptv sample``: print samples of a run (text, coloured text, or JSON lines with per-token details);
``--max-new-tokens`` is bounded by MAX_NEW_TOKENS unless ``--allow-long``."""

from __future__ import annotations

import argparse

from ....common.argtypes import (
    device,
    generation_arg,
    non_negative_float,
    open_unit_interval,
    positive_int,
    utf8_file,
)
from ....decode.options import SIG_MODES
from . import Command
from .prediction import add_prediction_arguments

# the largest --max-new-tokens taken without --allow-long: a typo of a few zeros should not start
# a run of hours (at ~1 ms per token on a small model, 20,000 tokens take seconds to a minute)
MAX_NEW_TOKENS = 20_000


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--prompt",
        default="",
        help="prompt text (default: empty = start from the end-of-text token, or token 0 without one)",
    )
    src.add_argument("--prompt-file", type=utf8_file, default=None, help="a file with one prompt per line")
    p.add_argument(
        "--ckpt",
        required=True,
        help="run folder (made by gptv train); several (A,B or a folder of runs) sample from their ensemble",
    )
    add_prediction_arguments(p)
    p.add_argument("--num-samples", type=generation_arg("num_samples"), default=1, help="samples per prompt")
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=200,
        help=f"tokens to generate per sample (at most {MAX_NEW_TOKENS:,} unless --allow-long)",
    )
    p.add_argument(
        "--allow-long", action="store_true", help=f"allow --max-new-tokens above {MAX_NEW_TOKENS:,} (long runs)"
    )
    p.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 means greedy")
    p.add_argument(
        "--top-k", type=generation_arg("top_k"), default=None, help="sample among the k most probable tokens"
    )
    p.add_argument("--top-p", type=generation_arg("top_p"), default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument(
        "--repetition-penalty",
        type=generation_arg("repetition_penalty"),
        default=1.0,
        help="CTRL penalty (> 1 discourages repeats)",
    )
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument(
        "--stop",
        nargs="+",
        default=[],
        metavar="STR",
        help="stop strings (\\n and \\t understood); cut from the output",
    )
    p.add_argument("--ignore-eot", action="store_true", help="keep generating past the end-of-text token")
    p.add_argument("--seed", type=generation_arg("seed"), default=None, help="seed of the draws (default: random)")
    p.add_argument(
        "--sig-mode",
        choices=SIG_MODES,
        default="normalize",
        help="sigmoid heads: sample sigmoid/sum, or among tokens with sigmoid > tau",
    )
    p.add_argument("--tau", type=generation_arg("tau"), default=0.5, help="threshold of --sig-mode set")
    p.add_argument(
        "--conformal", type=open_unit_interval, default=None, metavar="ALPHA",
        help="sample inside the conformal set at ALPHA fitted by `gptv conformal` (conformal nucleus sampling)",
    )  # fmt: skip
    _add_output_arguments(p)
    p.add_argument("--no-cache", action="store_true", help="recompute the context every step (slow; for checking)")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | cuda:N | mps | auto")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """How ``gptv sample`` prints its samples."""
    p.add_argument(
        "--json", action="store_true", help="one JSON line per sample with per-token id, text, prob, entropy (and mi)"
    )
    p.add_argument("--show-uncertainty", action="store_true", help="colour tokens by entropy, with a legend")
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colours of --show-uncertainty: auto = only when stdout is a terminal",
    )
    p.add_argument(
        "--unknown", choices=["error", "skip"], default="error", help="prompt text the tokenizer cannot encode"
    )


def register_cli(subparsers) -> None:
    """Add ``gptv sample`` to the ``gptv`` subcommands."""
    p = subparsers.add_parser("sample", help="generate text from a trained run")
    add_sample_arguments(p)
    p.set_defaults(func=Command("sample:cmd_sample"))
