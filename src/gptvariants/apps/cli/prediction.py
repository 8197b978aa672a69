"""The prediction options every command that reads a run's predictive shares (``predict.prediction``):
``--method``, ``--mc-samples`` (0 = the point estimate everywhere), ``--no-temperature`` and ``--dtype``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ...predict.prediction import Prediction


def describe_prediction(prediction: Prediction, temperatures: Sequence[float], run_draws: int | None = None) -> str:
    """One line naming every state that changes the numbers: the method, its draws and the
    temperature applied (``temperatures``: one per run, as applied; ``run_draws``: the run's
    mc_samples, shown when the prediction takes the run's)."""
    n = prediction.mc_samples
    draws = "0 draws (the point estimate)" if n == 0 else f"{n} draws" if n is not None else "the run's draws"
    if n is None and run_draws is not None:
        draws += f" (mc_samples {run_draws})"
    fitted = [t for t in temperatures if t != 1.0]
    if not prediction.temperature:
        temp = "temperature off (--no-temperature)"
    elif not fitted:
        temp = "temperature 1 (none fitted by gptv calibrate)"
    else:
        shown = ", ".join(f"{t:.4g}" for t in temperatures)
        temp = f"temperature T = {shown} (fitted by gptv calibrate; --no-temperature ignores it)"
    return f"prediction: method {prediction.method}, {draws}, {temp}"


def prediction_of(args: argparse.Namespace, seed: int | None = None) -> Prediction:
    """The ``Prediction`` the options of ``add_prediction_arguments`` describe."""
    return Prediction(
        args.method,
        args.mc_samples,
        not getattr(args, "no_temperature", False),
        seed,
        getattr(args, "dtype", "float32"),
    )
