"""The names the prediction options accept, without torch: what ``gptv --help`` and its argument
errors need before anything heavy loads.

``METHOD_SPECS`` lists the uncertainty methods of ``methods.METHODS`` with their descriptions;
``methods.register_method`` refuses a method not listed here, and a test checks that both name
the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """An uncertainty method as the command line shows it. ``generation_only``: its draws are made
    per generated sequence, so it cannot score text."""

    name: str
    description: str
    generation_only: bool = False


METHOD_SPECS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("default", "the heads' own draws (Bayesian: mc_samples posterior draws per position; others: one)"),
        MethodSpec("sequence", "a Bayesian head's weights drawn once per generated sequence (generation only)", True),
        MethodSpec("mc_dropout", "mc_samples backbone passes with dropout active (runs trained with dropout > 0)"),
        MethodSpec("laplace", "last-layer Laplace posterior fitted by `gptv laplace` (KFAC or diagonal GGN)"),
        MethodSpec(
            "snapshot", "a snapshot ensemble: the run's kept checkpoints (keep_checkpoints), averaged in probability"
        ),
    ]
}


def scoring_methods() -> list[str]:
    """The methods that score text (all but the generation-only ones), in registry order."""
    return [name for name, m in METHOD_SPECS.items() if not m.generation_only]


# the weight formats a prediction may run in (``Prediction.dtype``)
DTYPES = ("float32", "bfloat16", "float16", "int8")

# the miscoverage levels `gptv conformal` fits by default
ALPHAS = (0.05, 0.1, 0.2)
