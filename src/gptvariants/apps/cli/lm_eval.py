"""``gptv lm-eval``: lm-evaluation-harness tasks on a run."""

from __future__ import annotations

import argparse

from ..harness import lm_eval_argv, run_lm_eval


def cmd_lm_eval(args: argparse.Namespace, extra: list[str]) -> int:
    run_lm_eval(
        lm_eval_argv(
            args.run,
            args.tasks,
            method=args.method,
            mc_samples=args.mc_samples,
            dtype=args.dtype,
            model_args=args.model_args,
            device=args.device,
            batch_size=args.batch_size,
            extra=extra,
        )
    )
    return 0
