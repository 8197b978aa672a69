"""The parser of ``gptv eval``: score a run (or an ensemble of runs) on held-out or external text."""

from __future__ import annotations

from ....common.argtypes import device, non_negative_int, open_unit_interval, positive_int
from ....common.defaults import BLOCK, RESAMPLES
from ....predict.options import scoring_methods
from . import Command
from .prediction import add_prediction_arguments


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
    add_prediction_arguments(p, scoring_methods())
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
    p.set_defaults(func=Command("evaluate:cmd_eval"))
