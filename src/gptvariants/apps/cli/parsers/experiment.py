"""The parser of ``gptv experiment``: every variant trained with one budget and seed, evaluated, and reported."""

from __future__ import annotations

from ....common.argtypes import non_negative_int, positive_int
from ....common.defaults import RESAMPLES
from ....core.variants import REGISTRY, study_variants
from ....evaluate.options import DEFAULT_BUDGET
from . import Command


def register_cli(subparsers) -> None:
    """Add `gptv experiment`."""
    p = subparsers.add_parser("experiment", help="train and evaluate every variant with one budget; write a report")
    p.add_argument(
        "--data",
        default="synthetic:default",
        help="prepared data folder or a `gptv prepare` source (default synthetic:default)",
    )
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {','.join(REGISTRY)} (default: the study's {','.join(study_variants())})",
    )
    p.add_argument(
        "--budget", default=DEFAULT_BUDGET, help="steps per variant (600) or training time per variant (90s, 5m, 1h)"
    )
    p.add_argument("--seed", type=non_negative_int, default=1337, help="training seed (the first of --seeds)")
    p.add_argument(
        "--seeds",
        default=None,
        help="train and evaluate every variant per seed: a count N (--seed, --seed + 1, ...) or a comma list; "
        "the tables then show the mean and 95%% t interval over seeds (default: --seed alone)",
    )
    p.add_argument(
        "--resamples",
        type=non_negative_int,
        default=RESAMPLES,
        help=f"block-bootstrap resamples of each eval's intervals (default {RESAMPLES}; 0 = none)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="TOML file with the model/training shape; replaces the default "
        "(nanoGPT's CPU recipe), keys it leaves out take the `gptv train` defaults",
    )
    p.add_argument(
        "--num-samples", type=non_negative_int, default=100, help="samples per variant for the diversity metrics"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens per sample")
    p.add_argument(
        "--sets",
        choices=("top", "sample"),
        default="top",
        help="teacher sets of the sigmoid variants: the study's top candidates, or sampled sets "
        "(see gptv targets --select)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="uncertainty comparators for the report's Uncertainty section: "
        "comma-separated from temperature, mc_dropout, ensemble, laplace, or all",
    )
    p.add_argument(
        "--ood",
        default=None,
        help="shifted text of the Uncertainty section: text:PATH, a prepared folder, "
        "or synthetic?shift=S (default on the synthetic language: synthetic?shift=0.5)",
    )
    p.add_argument("--out", required=True, help="experiment folder")
    p.set_defaults(func=Command("experiment:cmd_experiment"))
