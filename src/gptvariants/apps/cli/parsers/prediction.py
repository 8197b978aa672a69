"""The prediction options every command that reads a run's predictive shares (``predict.prediction``):
``--method``, ``--mc-samples`` (0 = the point estimate everywhere), ``--no-temperature`` and ``--dtype``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ....common.argtypes import non_negative_int
from ....predict.options import DTYPES, METHOD_SPECS


def add_prediction_arguments(
    p: argparse.ArgumentParser, methods: Sequence[str] | None = None, *, temperature: bool = True, dtype: bool = True
) -> None:
    """Add --method (of ``methods``, default every registered one), --mc-samples, --dtype and, with
    ``temperature``, --no-temperature (and --dtype unless ``dtype`` is False) to ``p``."""
    names = list(methods or METHOD_SPECS)
    p.add_argument(
        "--method",
        default="default",
        choices=names,
        help="uncertainty method: " + "; ".join(f"{k}: {METHOD_SPECS[k].description}" for k in names),
    )
    p.add_argument(
        "--mc-samples",
        type=non_negative_int,
        default=None,
        help="draws of the method (default: the run's mc_samples; 0 = the point estimate, "
        "e.g. a Bayesian head's posterior mean)",
    )
    if dtype:
        p.add_argument(
            "--dtype",
            default="float32",
            choices=DTYPES,
            help="weights to predict in (the readout stays fp32); int8: dynamic quantization of the backbone, CPU only",
        )
    if temperature:
        p.add_argument("--no-temperature", action="store_true", help="ignore a temperature fitted by `gptv calibrate`")
