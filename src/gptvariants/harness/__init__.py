"""EleutherAI's lm-evaluation-harness for gptvariants runs: ``gptv lm-eval RUN --tasks ...``.

The model class (``harness.model.GPTVariantsLM``, lm-eval name ``gptv``) imports lm-eval, an
optional dependency (``pip install 'gptvariants[eval]'``); this module does not, so that every
``gptv`` command starts without it. lm-eval (0.4.13) finds models only in its own registry, filled
by its built-in table and by ``register_model`` when a module is imported; it reads no entry
points and has no option to import a module. Hence the two ways in, both running lm-eval's own
command line with the ``gptv`` model registered:

    gptv lm-eval RUN --tasks TASKS [lm-eval options]           # --model gptv --model_args run=RUN
    python -m gptvariants.harness --model gptv --model_args run=RUN --tasks TASKS [...]   # = lm_eval ...

and from Python: ``import gptvariants.harness.model`` then ``lm_eval.simple_evaluate(model="gptv", ...)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'gptvariants[eval]' (or: pip install lm_eval)"


def require_lm_eval() -> None:
    """Register the ``gptv`` model with lm-eval; RuntimeError naming the extra when lm-eval is absent."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    from . import model  # noqa: F401  (registers "gptv")


def run_lm_eval(argv: Sequence[str]) -> None:
    """lm-eval's command line (``lm_eval`` / ``lm-eval``) on ``argv``, with ``gptv`` registered."""
    require_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


def lm_eval_argv(
    run: str,
    tasks: str,
    *,
    bayes_mode: str | None = None,
    mc_samples: int | None = None,
    model_args: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    extra: Sequence[str] = (),
) -> list[str]:
    """The lm-eval ``run`` arguments that evaluate the run folder ``run`` on ``tasks``."""
    if "," in run or "=" in run:
        raise ValueError(f"lm-eval's --model_args cannot carry a run path with ',' or '=': {run!r}")
    for flag in ("--model", "--model_args", "--model-args", "--batch_size", "--device"):
        if any(a == flag or a.startswith(flag + "=") for a in extra):
            raise ValueError(
                f"gptv lm-eval sets {flag} itself: use its own options (--model-args K=V,..., --batch-size, --device)"
            )
    args = [f"run={run}"]
    args += [f"bayes_mode={bayes_mode}"] if bayes_mode else []
    args += [f"mc_samples={mc_samples}"] if mc_samples is not None else []
    args += [model_args] if model_args else []
    return [
        "run",
        "--model",
        "gptv",
        "--model_args",
        ",".join(args),
        "--tasks",
        tasks,
        "--device",
        device,
        "--batch_size",
        str(batch_size),
        *extra,
    ]


def _cmd_lm_eval(args: argparse.Namespace, extra: list[str]) -> int:
    run_lm_eval(
        lm_eval_argv(
            args.run,
            args.tasks,
            bayes_mode=args.bayes_mode,
            mc_samples=args.mc_samples,
            model_args=args.model_args,
            device=args.device,
            batch_size=args.batch_size,
            extra=extra,
        )
    )
    return 0


def register_cli(subparsers) -> None:
    """Add `gptv lm-eval`."""
    p = subparsers.add_parser(
        "lm-eval",
        allow_abbrev=False,
        help="evaluate a run with EleutherAI's lm-evaluation-harness (needs the [eval] extra)",
        description="Run lm-evaluation-harness on a run folder through the run's own predictive distribution. "
        "Other options (--num_fewshot, --limit, --batch_size, --output_path, --include_path, "
        "--log_samples, ...) go to lm-eval unchanged; `python -m gptvariants.harness --help` lists them.",
    )
    p.add_argument("run", help="run folder (written by `gptv train`)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated (or a task YAML path)")
    p.add_argument(
        "--bayes-mode",
        "--bayes_mode",
        choices=["step", "mean"],
        default=None,
        help="Bayesian heads: MC mixture of head draws, or the posterior mean (default: step)",
    )
    p.add_argument(
        "--mc-samples",
        "--mc_samples",
        type=int,
        default=None,
        help="head draws in step mode (default: the run's mc_samples)",
    )
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
    p.set_defaults(func=_cmd_lm_eval, takes_extra=True)
