"""``gptv targets``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...common.errors import InputError
from ...targets.build import build_targets


def sets_name(data: Path, out: Path) -> str:
    """The name under which ``gptv train --targets=NAME`` (and ``gptv eval --sets``) find sets built into ``out``:
    its path relative to DATA/targets. ValueError when ``out`` is elsewhere, where neither would find them."""
    root = (Path(data) / "targets").resolve()
    path = Path(out).resolve()
    if root not in path.parents:
        inside = Path(data) / "targets" / Path(out).name
        raise InputError(
            f"--out {out} is outside {Path(data) / 'targets'}, where `gptv train --targets=NAME` and "
            f"`gptv eval --sets NAME` look for sets; use --out {inside} (or leave --out out)"
        )
    return path.relative_to(root).as_posix()


def cmd_targets(args: argparse.Namespace) -> int:
    data = Path(args.data)
    out = Path(args.out) if args.out else None
    if out is not None:
        sets_name(data, out)  # refuse before building what training could not find
    meta = build_targets(
        data,
        args.teacher,
        out,
        k=args.k,
        select=args.select,
        top_p=args.top_p,
        min_prob=args.min_prob,
        ratio=args.ratio,
        ppl_filter=args.ppl_filter,
        ppl_window=args.ppl_window,
        context=args.context,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        store_probs=args.store_probs,
    )
    print(
        f"teacher sets in {meta['dir']}: mean set size {meta['mean_set_size']:.2f} (k={meta['k']}), "
        + (f"{meta['tokens_per_s']:,.0f} tokens/s" if meta["tokens_per_s"] else "nothing left to build")
    )
    print(f"train with: gptv train --variant sig --data {args.data} --targets={sets_name(data, Path(meta['dir']))}")
    return 0
