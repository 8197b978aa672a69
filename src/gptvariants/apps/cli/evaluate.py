"""``gptv eval``: score a run (or an ensemble of runs) on held-out or external text."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...common.argtypes import device, non_negative_int, open_unit_interval, positive_int
from ...common.errors import InputError
from ...data.dataset import TokenDataset
from ...data.prepare import resolve_text_files
from ...data.sources import shift_spec
from ...evaluate.evaluation import default_out, evaluate
from ...evaluate.result import format_result
from ...intervals import BLOCK, RESAMPLES
from ...predict.methods import METHODS, run_folders
from ...predict.prediction import Prediction
from ...store.run import RunFolder
from .prediction import add_prediction_arguments, describe_prediction


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


def _cmd_eval(args: argparse.Namespace) -> int:
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


def register_cli(subparsers) -> None:
    """Add `gptv eval`."""
    p = subparsers.add_parser(
        "eval", help="held-out perplexity, calibration, uncertainty, set quality, diversity and speed of a run"
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="run folder (written by `gptv train`); several (A,B or a folder of runs) are evaluated as their ensemble",
    )
    add_prediction_arguments(p, [k for k, m in METHODS.items() if not m.generation_only])
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--data", default=None, help="prepared data folder with the run's tokenizer (default: the run's own data)"
    )
    what.add_argument(
        "--text", default=None, help="a UTF-8 file, folder (*.txt) or glob, scored with the run's tokenizer"
    )
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of --data")
    p.add_argument(
        "--ood",
        default=None,
        metavar="SOURCE",
        help="out-of-domain text to compare uncertainty scores on: a prepared data folder, text:PATH, "
        "or synthetic?shift=S[&part=transition|emission|both][&seed=N][&tokens=N]",
    )
    p.add_argument(
        "--out", default=None, help="results JSON (default RUN/eval/SPLIT.json); plots and samples go beside it"
    )
    p.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="sliding-window stride (default block_size // 2; block_size = disjoint windows)",
    )
    p.add_argument(
        "--num-samples", type=non_negative_int, default=100, help="samples for the diversity metrics (0 = skip)"
    )
    p.add_argument(
        "--resamples",
        type=non_negative_int,
        default=RESAMPLES,
        help=f"block-bootstrap resamples behind each figure's 95%% interval (default {RESAMPLES}; 0 = no intervals)",
    )
    p.add_argument(
        "--bootstrap-block", type=positive_int, default=BLOCK, help=f"tokens per bootstrap block (default {BLOCK})"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per sample")
    p.add_argument(
        "--sets",
        default=None,
        help="reference sets DATA/targets/NAME for set metrics, or 'none' (synthetic data: exact support by default)",
    )
    p.add_argument(
        "--tau", type=open_unit_interval, default=0.5, help="set threshold on sigmoid (or softmax) probabilities"
    )
    p.add_argument("--seed", type=non_negative_int, default=1337)
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.set_defaults(func=_cmd_eval)
