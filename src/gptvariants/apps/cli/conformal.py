"""``gptv conformal RUN --alpha 0.1``: split conformal next-token sets (``predict.conformal``), fitted
on the first half of the run's held-out tokens, checked on the other half (and on ``--ood`` text),
and stored in RUN/conformal.json for ``gptv sample --conformal`` and the API."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ...common.errors import InputError
from ...common.runtime import resolve_device
from ...data.sources import Source, resolve_source, split_source
from ...data.tokenizers import load_tokenizer
from ...predict.conformal import ALPHAS, fit_conformal, save_conformal
from ...predict.methods import load_runs
from .prediction import prediction_of


def val_source(run_dir: Path, data: str | None) -> Source:
    """The validation split of ``data``, or of the data folder the run was trained on (its data.json)."""
    if data is None:
        info = Path(run_dir) / "data.json"
        data = json.loads(info.read_text(encoding="utf-8")).get("path") if info.is_file() else None
        if not data:
            raise InputError(f"{run_dir}/data.json names no data folder: pass --data DIR")
    return split_source(Path(run_dir), Path(data), "val")


def _table(record: dict, part: str) -> list[str]:
    """One markdown row per rule of ``record[part]`` (the check or the ood summaries)."""
    rules = record.get("rules", {})
    lines = [
        "| set | q | coverage | mean size | median size | worst size-stratum coverage |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in record[part].items():
        q = rules.get(name, {}).get("q")
        q_text = "-" if name not in rules else ("inf" if q is None else f"{q:.4f}")
        worst = s["worst_size_stratum_coverage"]
        lines.append(
            f"| {name} | {q_text} | {s['coverage']:.4f} | {s['mean_size']:.2f} | {s['median_size']:.0f} | "
            + ("-" if math.isnan(worst) else f"{worst:.4f}")
            + " |"
        )
    return lines


def cmd_conformal(args: argparse.Namespace) -> int:
    [run] = load_runs(args.ckpt, resolve_device(args.device))
    in_domain = val_source(run.folder, args.data)
    tokens = in_domain.tokens[: args.tokens] if args.tokens else in_domain.tokens
    ood = None
    if args.ood:
        ood = resolve_source(args.ood, run.folder, load_tokenizer(run.folder), in_domain, "val").tokens
        ood = ood[: len(tokens) - len(tokens) // 2]  # as many tokens as the in-domain check
    record = fit_conformal(
        [run], tokens, alphas=args.alpha or ALPHAS, prediction=prediction_of(args, args.seed), ood=ood, seed=args.seed
    )
    path = save_conformal(run.folder, record)
    print(
        f"{run.folder} [{record['key']}]: fitted on {record['calibration_tokens']:,} val tokens, "
        f"checked on the other {record['check_tokens']:,}:"
    )
    print("\n".join(_table(record, "check")))
    if "ood" in record:
        print(f"\nunder shift ({args.ood}; the guarantee does not hold there):")
        print("\n".join(_table(record, "ood")))
    print(f"\nstored in {path}; `gptv sample --conformal ALPHA` samples inside the lac set")
    return 0
