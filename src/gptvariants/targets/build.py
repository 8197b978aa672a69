"""The cached build: a teacher's sets for every position of the train and val splits, written
in resumable chunks (``build_targets``, ``gptv targets``).

Selection rules, per position. With ``select="top"``: the teacher's top-k, restricted to the
nucleus ``top_p`` and to probs >= ``min_prob`` (oracle: 0.01 when 0), kept at a random fraction
``ratio`` of positions; the true next token always; at most k ids. With ``select="sample"``:
the distinct tokens among k - 1 draws from the teacher's distribution plus the true token (k
draws in all, at every position, no other rule), which a sigmoid head can turn back into a
distribution (see ``SigmoidBCE``). ``ppl_filter`` drops candidate c at position i when the
teacher's perplexity of the ``ppl_window`` tokens tokens[j - W//2 : j - W//2 + W] (j = i + 1,
shifted to fit the split) with tokens[j] replaced by c exceeds it; that perplexity is exp of
the mean NLL of the window's last W-1 tokens, each given only the window tokens before it.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..common.atomic import atomic_write, preallocate
from ..common.checks import Float, Int
from ..common.errors import InputError
from ..common.progress import Progress
from ..common.runtime import resolve_device
from ..data.dataset import SPLITS, TokenDataset, set_stats, token_dtype
from .base import Teacher, parse_spec
from .selection import ORACLE_MIN_PROB, _check_rule, _Selector
from .teachers import load_teacher

FORMAT = 1
PROGRESS_FILE = "progress.json"
PROGRESS_SECONDS = 30.0  # without a terminal: one plain progress line at most this often
LARGE_K = 0.25  # warn when top-k sets, cut by no other rule, take more than this fraction of the vocabulary


def build_targets(
    data_dir: Path,
    teacher: str,
    out: Path | None = None,
    *,
    k: int = 50,
    select: str = "top",
    top_p: float | None = None,
    min_prob: float = 0.0,
    ratio: float = 1.0,
    ppl_filter: float | None = None,
    ppl_window: int = 32,
    context: int | None = None,
    batch_size: int = 0,
    device: str = "auto",
    seed: int = 1337,
    store_probs: bool = False,
    progress: bool = True,
    chunk_size: int = 8192,
    on_chunk: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Build teacher sets for the train and val splits of `data_dir`; return the meta dict (also meta.json).

    Output in `out` (default data_dir/targets/<sanitised teacher>): see the package docstring;
    the selection rules (select, k, top_p, min_prob, ratio, ppl_filter, ppl_window): this
    module's. `context` is the window of hf:/ckpt: teachers (default: theirs); `batch_size` the
    windows per teacher forward (0: 16384 tokens' worth).

    Chunks of `chunk_size` positions are written to {split}.bin.partial and recorded in
    progress.json, so rerunning after an interruption resumes and gives the same bytes as an
    uninterrupted build. `on_chunk(split, chunk, n_chunks)` is called after each durable chunk.
    Raises InputError for k > V, bad options, or a teacher whose vocabulary differs from the data's.
    """
    data = TokenDataset(Path(data_dir))
    V = data.vocab_size
    _check_options(V, k, ratio, top_p, min_prob, ppl_filter, ppl_window, context, batch_size, seed, chunk_size)
    _check_rule(select, top_p, min_prob, ratio, ppl_filter)
    if select == "top" and parse_spec(teacher)[0] == "oracle" and min_prob == 0.0:
        min_prob = ORACLE_MIN_PROB
    out = _open_output(Path(out) if out is not None else Path(data_dir) / "targets" / _sanitise(teacher))
    dev = resolve_device(device)
    t = load_teacher(teacher, data, dev, context=context, batch_size=batch_size)
    if select == "top" and top_p is None and min_prob == 0.0:
        _warn_large_k(k, V)
    dtype = token_dtype(V)
    window = ppl_window if ppl_filter is not None else None
    rules = dict(
        select=select, top_p=top_p, min_prob=min_prob, ratio=ratio, ppl_filter=ppl_filter, ppl_window=window, seed=seed
    )
    sel = _Selector(
        t, k, top_p, min_prob, ratio, ppl_filter, ppl_window, batch_size, seed, int(np.iinfo(dtype).max), select
    )
    identity = _identity(t, k, rules, data, chunk_size, store_probs)
    stats = _build_splits(data, out, sel, dtype, identity, chunk_size, store_probs, progress, on_chunk)
    meta = _meta(teacher, t, k, dtype, data.meta["hash"], rules, store_probs, dev, stats)
    atomic_write(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    meta["dir"] = str(out)
    return meta


def _open_output(out: Path) -> Path:
    """The sets' folder, marked incomplete (no meta.json) until the build ends."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    return out


def _identity(t: Teacher, k: int, rules: dict, data: TokenDataset, chunk_size: int, store_probs: bool) -> dict:
    """What progress.json records and a resumed build must match: the same teacher, rules, data and chunks."""
    return {
        "teacher": t.info(),
        "k": k,
        "rules": rules,
        "data_hash": data.meta["hash"],
        "chunk_size": chunk_size,
        "store_probs": store_probs,
    }


def _build_splits(
    data: TokenDataset,
    out: Path,
    sel: _Selector,
    dtype,
    identity: dict,
    chunk_size: int,
    store_probs: bool,
    progress: bool,
    on_chunk: Callable[[str, int, int], None] | None,
) -> dict:
    """Every split's sets, resuming from progress.json when it records the same ``identity``;
    returns each split's statistics."""
    prog_path = out / PROGRESS_FILE
    prog = _read_progress(prog_path, identity)

    def save() -> None:
        atomic_write(prog_path, json.dumps(prog, indent=1) + "\n")

    stats = {}
    for si, split in enumerate(SPLITS):
        st = prog["splits"].setdefault(split, {"done": 0, "set_size_sum": 0, "teacher_rows": 0})
        stats[split] = _build_split(
            data.split(split),
            out,
            split,
            si,
            sel,
            dtype,
            st,
            save,
            chunk_size=chunk_size,
            store_probs=store_probs,
            progress=progress,
            on_chunk=on_chunk,
        )
    return stats


def _check_options(
    V: int,
    k: int,
    ratio: float,
    top_p: float | None,
    min_prob: float,
    ppl_filter: float | None,
    ppl_window: int,
    context: int | None,
    batch_size: int,
    seed: int,
    chunk_size: int,
) -> None:
    """ValueError naming the first option out of its range (NaN and infinities included)."""
    checks: list[tuple[str, Any, Any]] = [
        ("k", k, Int(1, V)),
        ("ratio", ratio, Float(0.0, 1.0)),
        ("min_prob", min_prob, Float(0.0, 1.0)),
        ("batch_size", batch_size, Int(0)),
        ("seed", seed, Int(0)),
        ("chunk_size", chunk_size, Int(1)),
        ("ppl_window", ppl_window, Int(2)),
    ]
    checks += [("top_p", top_p, Float(0.0, 1.0, lo_open=True))] if top_p is not None else []
    checks += [("ppl_filter", ppl_filter, Float(1.0, lo_open=True))] if ppl_filter is not None else []
    checks += [("context", context, Int(1))] if context is not None else []
    for name, value, check in checks:
        try:
            check(value)
        except ValueError as e:
            hint = f" (the vocabulary size is {V})" if name == "k" else ""
            raise InputError(f"{name}: {e}{hint}") from None


def _warn_large_k(k: int, V: int) -> None:
    """Top-k sets cut by no other rule hold k tokens each: warn when that is a large share of the vocabulary."""
    if k > LARGE_K * V:
        warnings.warn(
            f"k={k} is {100 * k / V:.0f}% of the {V}-token vocabulary: every set holds that many tokens, so "
            f"a sigmoid head learns little from them; use a smaller k (e.g. {max(1, V // 10)}), a top-p or "
            "min-prob cut, or the sample rule",
            stacklevel=3,
        )


def _read_progress(path: Path, identity: dict) -> dict:
    """The progress record of an interrupted build of the same identity, or a fresh one."""
    try:
        prog = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # unreadable: rebuild from the start (the partial files are rewritten)
        prog = {}
    if not isinstance(prog, dict) or prog.get("identity") != json.loads(json.dumps(identity)):
        prog = {"identity": identity, "splits": {}}  # another build's leftovers: start over
    return prog


def open_partial(path: Path, dtype: Any, rows: int, k: int, resume: bool, split: str = "") -> np.memmap:
    """The (rows, k) memmap ``path``.partial that a split's chunks are written into (reopened to resume).

    Its blocks are allocated before mapping: a full disk is a one-line WriteError here, not a
    SIGBUS (a silent "Bus error") in the middle of a write."""
    partial = preallocate(
        path.with_name(path.name + ".partial"),
        rows * k * np.dtype(dtype).itemsize,
        fresh=not resume,
        what=f"the {split} teacher sets".replace("the  ", "the "),
        intact="the chunks built so far are kept: rerun to resume",
    )
    return np.memmap(partial, dtype=dtype, mode="r+", shape=(rows, k))


def _build_split(
    tokens: np.ndarray,
    out: Path,
    split: str,
    si: int,
    sel: _Selector,
    dtype: np.dtype,
    st: dict,
    save: Callable[[], None],
    *,
    chunk_size: int,
    store_probs: bool,
    progress: bool,
    on_chunk: Callable[[str, int, int], None] | None,
) -> dict:
    """Write the chunks of one split not yet done (recording each in ``st`` and saving it); return its stats."""
    n, k = len(tokens), sel.k
    n_chunks = -(-n // chunk_size)
    paths = [(out / f"{split}.bin", dtype)] + ([(out / f"{split}.probs.bin", np.float16)] if store_probs else [])
    t0, done0 = time.perf_counter(), st["done"]
    if st["done"] < n_chunks:
        mms = [open_partial(p, d, n, k, resume=st["done"] > 0, split=split) for p, d in paths]
        bar = Progress(progress, n_chunks, st["done"], f"{sel.t.spec} {split}", every=PROGRESS_SECONDS)
        for c in range(st["done"], n_chunks):
            a, b = c * chunk_size, min(n, (c + 1) * chunk_size)
            ids, probs, n_teacher = sel.chunk(tokens, a, b, si, c)
            _check_chunk(ids, sel, split, a)
            mms[0][a:b] = ids
            if store_probs:
                mms[1][a:b] = probs
            for mm in mms:
                mm.flush()
            st["done"] = c + 1
            st["set_size_sum"] += int((ids != sel.sentinel).sum())
            st["teacher_rows"] += n_teacher
            save()
            bar.update()
            if on_chunk is not None:
                on_chunk(split, c, n_chunks)
        bar.close()
        del mms
        if st["set_size_sum"] == 0:
            raise InputError(
                f"teacher {sel.t.spec!r} gave an empty set at every position of the {split} split: "
                "nothing to train on; loosen the selection (min_prob, top_p, ratio, ppl_filter)"
            )
        for p, _ in paths:
            os.replace(p.with_name(p.name + ".partial"), p)
    seconds = time.perf_counter() - t0
    done_tokens = min(n, (st["done"] - done0) * chunk_size)
    return {
        "rows": n,
        "mean_set_size": st["set_size_sum"] / n,
        "teacher_rows_fraction": st["teacher_rows"] / n,
        "seconds": seconds,
        "tokens_per_s": done_tokens / seconds if seconds > 0 and done_tokens else None,
    }


def _check_chunk(ids: np.ndarray, sel: _Selector, split: str, a: int) -> None:
    """Sets are refused when written, not when a run trains on them: ids outside the vocabulary."""
    _, top = set_stats(ids, sel.sentinel)
    if top >= sel.t.vocab_size:
        row = a + int(np.argwhere((ids != sel.sentinel) & (ids >= sel.t.vocab_size))[0][0])
        raise InputError(
            f"teacher {sel.t.spec!r} gave candidate id {top} at position {row} of the {split} split, outside "
            f"the vocabulary of {sel.t.vocab_size}"
        )


def _meta(
    teacher: str,
    t: Teacher,
    k: int,
    dtype: np.dtype,
    data_hash: str,
    rules: dict,
    store_probs: bool,
    dev: Any,
    stats: dict,
) -> dict:
    total_s = sum(s["seconds"] for s in stats.values())
    built = sum(s["tokens_per_s"] * s["seconds"] for s in stats.values() if s["tokens_per_s"])
    rows = sum(s["rows"] for s in stats.values())
    return {
        "format": FORMAT,
        "teacher": teacher,
        "teacher_info": t.info(),
        "teacher_fit_seconds": getattr(t, "fit_seconds", None),
        "k": k,
        "dtype": dtype.name,
        "data_hash": data_hash,
        "rules": rules,
        "store_probs": store_probs,
        "device": str(dev),
        "splits": stats,
        "mean_set_size": sum(s["mean_set_size"] * s["rows"] for s in stats.values()) / rows,
        "tokens_per_s": built / total_s if total_s > 0 and built else None,
    }


def _sanitise(spec: str) -> str:
    kind, arg, _ = parse_spec(spec)
    if kind in ("hf", "ckpt"):
        arg = Path(arg.rstrip("/")).name or arg
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}_{arg}" if arg else kind).strip("_")
