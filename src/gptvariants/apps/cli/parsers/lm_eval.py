"""The parser of ``gptv lm-eval``: lm-evaluation-harness tasks on a run."""

from __future__ import annotations

from ....predict.options import scoring_methods
from . import Command
from .prediction import add_prediction_arguments


def register_cli(subparsers) -> None:
    """Add `gptv lm-eval`."""
    p = subparsers.add_parser(
        "lm-eval",
        allow_abbrev=False,
        help="evaluate a run with EleutherAI's lm-evaluation-harness (needs the [eval] extra)",
        description="Run lm-evaluation-harness on a run folder through the run's own predictive distribution. "
        "Other options (--num_fewshot, --limit, --batch_size, --output_path, --include_path, "
        "--log_samples, ...) go to lm-eval unchanged; `python -m gptvariants.apps.harness --help` lists them.",
    )
    p.add_argument("run", help="run folder (written by `gptv train`)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated (or a task YAML path)")
    add_prediction_arguments(p, scoring_methods(), temperature=False)
    p.add_argument(
        "--model-args",
        "--model_args",
        default=None,
        help="more gptv model arguments, K=V,...: seed (default 1337), unknown (skip|error), "
        "max_gen_toks (default 256)",
    )
    p.add_argument(
        "--batch-size",
        "--batch_size",
        type=int,
        default=16,
        help="windows (loglikelihood) or prompts (generation) per forward pass (default: %(default)s)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.set_defaults(func=Command("lm_eval:cmd_lm_eval"), takes_extra=True)
