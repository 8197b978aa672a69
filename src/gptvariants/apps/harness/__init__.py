"""EleutherAI's lm-evaluation-harness for gptvariants runs: ``gptv lm-eval RUN --tasks ...``.

The model class (``harness.model.GPTVariantsLM``, lm-eval name ``gptv``) imports lm-eval, an
optional dependency (``pip install 'gptvariants[eval]'``); this module does not, so that every
``gptv`` command starts without it. lm-eval (0.4.13) finds models only in its own registry, filled
by its built-in table and by ``register_model`` when a module is imported; it reads no entry
points and has no option to import a module. Hence the two ways in, both running lm-eval's own
command line with the ``gptv`` model registered:

    gptv lm-eval RUN --tasks TASKS [lm-eval options]           # --model gptv --model_args run=RUN
    python -m gptvariants.apps.harness --model gptv --model_args run=RUN --tasks TASKS [...]   # = lm_eval ...

and from Python: ``import gptvariants.apps.harness.model`` then ``lm_eval.simple_evaluate(model="gptv", ...)``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ...common.errors import InputError, UnavailableError

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'gptvariants[eval]' (or: pip install lm_eval)"


def require_lm_eval() -> None:
    """Register the ``gptv`` model with lm-eval; RuntimeError naming the extra when lm-eval is absent."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UnavailableError(INSTALL_HINT) from None
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
    method: str | None = None,
    mc_samples: int | None = None,
    dtype: str = "float32",
    model_args: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    extra: Sequence[str] = (),
) -> list[str]:
    """The lm-eval ``run`` arguments that evaluate the run folder ``run`` on ``tasks``."""
    if "," in run or "=" in run:
        raise InputError(f"lm-eval's --model_args cannot carry a run path with ',' or '=': {run!r}")
    for flag in ("--model", "--model_args", "--model-args", "--batch_size", "--device"):
        if any(a == flag or a.startswith(flag + "=") for a in extra):
            raise InputError(
                f"gptv lm-eval sets {flag} itself: use its own options (--model-args K=V,..., --batch-size, --device)"
            )
    args = [f"run={run}"]
    args += [f"method={method}"] if method else []
    args += [f"mc_samples={mc_samples}"] if mc_samples is not None else []
    args += [f"dtype={dtype}"] if dtype != "float32" else []
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
