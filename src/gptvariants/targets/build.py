"""The cached build: a teacher's sets for every position of the train and val splits, written
in resumable chunks (``build_targets``, ``gptv targets``)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..data import SPLITS, TokenDataset, token_dtype
from .base import parse_spec, resolve_device
from .selection import ORACLE_MIN_PROB, _check_rule, _Selector
from .teachers import load_teacher

FORMAT = 1
PROGRESS_FILE = "progress.json"


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

    Output in `out` (default data_dir/targets/<sanitised teacher>): see the module docstring.
    Per position, with `select="top"`: the teacher's top-k, restricted to the nucleus `top_p`
    and to probs >= `min_prob` (oracle: 0.01 when 0), kept at a random fraction `ratio` of
    positions; the true next token always; at most k ids. With `select="sample"`: the
    distinct tokens among k - 1 draws from the teacher's distribution plus the true token
    (k draws in all, at every position, no other rule), which a sigmoid head can turn back
    into a distribution (see ``SigmoidBCE``). `ppl_filter` drops candidate c at position i when
    the teacher's perplexity of the `ppl_window` tokens tokens[j - W//2 : j - W//2 + W]
    (j = i + 1, shifted to fit the split) with tokens[j] replaced by c exceeds it; that
    perplexity is exp of the mean NLL of the window's last W-1 tokens, each given only the
    window tokens before it. `context` is the window of hf:/ckpt: teachers (default: theirs);
    `batch_size` the windows per teacher forward (0: 16384 tokens' worth).

    Chunks of `chunk_size` positions are written to {split}.bin.partial and recorded in
    progress.json, so rerunning after an interruption resumes and gives the same bytes as an
    uninterrupted build. `on_chunk(split, chunk, n_chunks)` is called after each durable chunk.
    Raises ValueError for k > V, bad options, or a teacher whose vocabulary differs from the data's.
    """
    data = TokenDataset(Path(data_dir))
    V = data.vocab_size
    if k < 1 or k > V:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {V}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must be in [0, 1], got {min_prob}")
    if ppl_filter is not None and (ppl_filter <= 1.0 or ppl_window < 2):
        raise ValueError("ppl_filter must be > 1 and ppl_window >= 2")
    _check_rule(select, top_p, min_prob, ratio, ppl_filter)
    if select == "top" and parse_spec(teacher)[0] == "oracle" and min_prob == 0.0:
        min_prob = ORACLE_MIN_PROB
    out = Path(out) if out is not None else Path(data_dir) / "targets" / _sanitise(teacher)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until the end

    dev = resolve_device(device)
    t = load_teacher(teacher, data, dev, context=context, batch_size=batch_size)
    dtype = token_dtype(V)
    sentinel = int(np.iinfo(dtype).max)
    rules = {"select": select, "top_p": top_p, "min_prob": min_prob, "ratio": ratio, "ppl_filter": ppl_filter,
             "ppl_window": ppl_window if ppl_filter is not None else None, "seed": seed}
    identity = {"teacher": t.info(), "k": k, "rules": rules, "data_hash": data.meta["hash"], "chunk_size": chunk_size, "store_probs": store_probs}
    prog_path = out / PROGRESS_FILE
    prog = json.loads(prog_path.read_text()) if prog_path.is_file() else {}
    if prog.get("identity") != json.loads(json.dumps(identity)):  # another build's leftovers: start over
        prog = {"identity": identity, "splits": {}}
    sel = _Selector(t, k, top_p, min_prob, ratio, ppl_filter, ppl_window, batch_size, seed, sentinel, select)

    stats = {}
    for si, split in enumerate(SPLITS):
        tokens = data.split(split)
        n = len(tokens)
        n_chunks = -(-n // chunk_size)
        st = prog["splits"].setdefault(split, {"done": 0, "set_size_sum": 0, "teacher_rows": 0})
        final = out / f"{split}.bin"
        paths = [(final, dtype)] + ([(out / f"{split}.probs.bin", np.float16)] if store_probs else [])
        t0, done0 = time.perf_counter(), st["done"]
        if st["done"] < n_chunks:
            mms = [np.memmap(p.with_name(p.name + ".partial"), dtype=d, mode="r+" if st["done"] else "w+", shape=(n, k)) for p, d in paths]
            bar = _bar(progress, n_chunks, st["done"], f"{t.spec} {split}")
            for c in range(st["done"], n_chunks):
                a, b = c * chunk_size, min(n, (c + 1) * chunk_size)
                ids, probs, n_teacher = sel.chunk(tokens, a, b, si, c)
                mms[0][a:b] = ids
                if store_probs:
                    mms[1][a:b] = probs
                for mm in mms:
                    mm.flush()
                st["done"] = c + 1
                st["set_size_sum"] += int((ids != sentinel).sum())
                st["teacher_rows"] += n_teacher
                atomic_write(prog_path, json.dumps(prog, indent=1) + "\n")
                if bar is not None:
                    bar.update(1)
                if on_chunk is not None:
                    on_chunk(split, c, n_chunks)
            if bar is not None:
                bar.close()
            del mms
            for p, _ in paths:
                os.replace(p.with_name(p.name + ".partial"), p)
        seconds = time.perf_counter() - t0
        done_tokens = min(n, (st["done"] - done0) * chunk_size)
        stats[split] = {"rows": n, "mean_set_size": st["set_size_sum"] / n,
                        "teacher_rows_fraction": st["teacher_rows"] / n,
                        "seconds": seconds, "tokens_per_s": done_tokens / seconds if seconds > 0 and done_tokens else None}

    total_s = sum(s["seconds"] for s in stats.values())
    built = sum(s["tokens_per_s"] * s["seconds"] for s in stats.values() if s["tokens_per_s"])
    meta = {
        "format": FORMAT, "teacher": teacher, "teacher_info": t.info(), "teacher_fit_seconds": getattr(t, "fit_seconds", None), "k": k, "dtype": dtype.name,
        "data_hash": data.meta["hash"], "rules": rules, "store_probs": store_probs, "device": str(dev),
        "splits": stats, "mean_set_size": sum(s["mean_set_size"] * s["rows"] for s in stats.values()) / sum(s["rows"] for s in stats.values()),
        "tokens_per_s": built / total_s if total_s > 0 and built else None,
    }
    atomic_write(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    prog_path.unlink(missing_ok=True)
    meta["dir"] = str(out)
    return meta


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="chunk", dynamic_ncols=True)



def _sanitise(spec: str) -> str:
    kind, arg, _ = parse_spec(spec)
    if kind in ("hf", "ckpt"):
        arg = Path(arg.rstrip("/")).name or arg
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}_{arg}" if arg else kind).strip("_")
