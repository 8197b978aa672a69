"""``gptv eval``: score a run (or an ensemble of runs) on held-out or external text."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...common.errors import InputError
from ...data.dataset import TokenDataset
from ...data.prepare import resolve_text_files
from ...data.sources import shift_spec
from ...evaluate.evaluation import default_out, evaluate
from ...evaluate.result import format_result
from ...predict.methods import run_folders
from ...predict.prediction import Prediction
from ...store.run import RunFolder
from .prediction import describe_prediction


def check_ood(spec: str) -> None:
    """Refuse an --ood source that cannot be read, before anything is scored: a text that does not
    exist, a folder that is no prepared dataset, a malformed shift (``sources.resolve_source``'s forms)."""
    if spec.startswith("synthetic?") or spec == "synthetic":
        shift_spec(spec)
    elif spec.startswith("text:"):
        resolve_text_files(spec.removeprefix("text:"))
    elif Path(spec).is_dir():
        TokenDataset(Path(spec))
    else:
        hint = f" (for a text file write text:{spec})" if Path(spec).exists() else ""
        raise InputError(f"--ood {spec!r} is neither a prepared data folder, text:PATH nor synthetic?shift=S{hint}")


def _check_inputs(args: argparse.Namespace) -> None:
    """Every input of ``gptv eval`` checked before the first expensive step; --data defaults to the run's own."""
    if args.text is None and args.data is None:
        args.data = str(RunFolder(run_folders(args.ckpt)[0]).data_path())
    if args.text is not None:
        resolve_text_files(args.text.removeprefix("text:"))
    if args.ood is not None:
        check_ood(args.ood)


def cmd_eval(args: argparse.Namespace) -> int:
    _check_inputs(args)
    result = evaluate(
        args.ckpt,
        args.data,
        text=args.text,
        split=args.split,
        ood=args.ood,
        out=args.out,
        stride=args.stride,
        mc_samples=args.mc_samples,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        sets=args.sets,
        tau=args.tau,
        seed=args.seed,
        resamples=args.resamples,
        block=args.bootstrap_block,
        device=args.device,
        method=args.method,
        temperature=not args.no_temperature,
        dtype=args.dtype,
        progress=True,
        log_to_run=True,
    )
    prediction = Prediction(args.method, args.mc_samples, not args.no_temperature)
    print(describe_prediction(prediction, result.get("temperature", []), _run_draws(result)))
    print(format_result(result))
    where = args.split if args.text is None else f"text:{args.text}"
    print(
        f"results in {args.out or default_out(Path(result['run']), where)}"
        + (f"; scalars also in {' and '.join(result['logged_to'])}" if result.get("logged_to") else "")
    )
    return 0


def _run_draws(result: dict) -> int | None:
    """The first run's mc_samples, from its saved config (the draws a prediction takes by default)."""
    try:
        return RunFolder(Path(result["runs"][0])).config().objective.mc_samples
    except (KeyError, IndexError, InputError):
        return None
