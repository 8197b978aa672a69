"""``gptv experiment``: every variant trained with one budget and seed, evaluated, and reported."""

from __future__ import annotations

import argparse
import sys

from ...evaluate.comparators import parse_methods
from ...evaluate.experiment import parse_variants, run_experiment
from ...evaluate.verdicts import parse_seeds


def cmd_experiment(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds, args.seed)
    try:
        run_experiment(
            args.out,
            args.data,
            parse_variants(args.variants),
            args.budget,
            seeds[0],
            args.config,
            args.num_samples,
            args.max_new_tokens,
            sets=args.sets,
            methods=parse_methods(args.methods),
            ood=args.ood,
            seeds=seeds,
            resamples=args.resamples,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again (same --out {args.out}) to resume; finished runs and "
            "evaluations are reused, an unfinished run continues from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0
