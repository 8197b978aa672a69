"""Checksums of checkpoint and data files: hash once at write, verify on load.

Checkpoint files are hashed in full with XXH3-128 (the ``xxhash`` package; SHA-256 where it
is missing), reading the file through a memory map: about 30 GB/s from the page cache, so
the GPT-2-shape checkpoint (1.5 GB) verifies in about 50 ms (benchmarks/README.md). These
are integrity checks against damage (flipped bytes, truncation, a foreign file), not
signatures against an attacker -- checkpoints load with ``weights_only=True`` for that.

Data splits (train.bin, val.bin) can be far larger than a checkpoint, so a resume checks
their size and a hash of 256 evenly spaced 4 KiB blocks, and re-hashes the whole split
against meta.json's SHA-256 only when the file's modification time changed.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

xxhash: ModuleType | None
try:
    import xxhash
except ImportError:  # pragma: no cover - xxhash is a dependency; keep working without it
    xxhash = None

CHUNK = 1 << 24
SAMPLE_BLOCKS, SAMPLE_BLOCK = 256, 4096

ALGORITHMS: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256}
if xxhash is not None:
    ALGORITHMS["xxh3_128"] = xxhash.xxh3_128
DEFAULT_ALGORITHM = "xxh3_128" if xxhash is not None else "sha256"


def _update_from_file(h: Any, path: Path) -> Any:
    """Feed the whole file to hash object ``h`` through a read-only memory map (no copy into Python)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return h
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mm)
            try:
                for i in range(0, size, CHUNK):
                    h.update(view[i : i + CHUNK])
            finally:
                view.release()
    return h


def file_digest(path: Path, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Hex digest of a whole file."""
    return _update_from_file(ALGORITHMS[algorithm](), Path(path)).hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """SHA-256 of the files' bytes one after the other (the data's meta.json "hash")."""
    h = hashlib.sha256()
    for p in paths:
        _update_from_file(h, Path(p))
    return h.hexdigest()


def describe_files(folder: Path, names: Iterable[str], algorithm: str = DEFAULT_ALGORITHM) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "digest"}} for files in ``folder``: the manifest entries written with a checkpoint."""
    return {
        n: {"bytes": (Path(folder) / n).stat().st_size, "digest": file_digest(Path(folder) / n, algorithm)}
        for n in names
    }


def check_files(
    folder: Path, entries: dict[str, dict[str, Any]], algorithm: str, names: Iterable[str] | None = None
) -> list[str]:
    """What is wrong with the files of ``folder`` against their manifest ``entries`` ([] when all match).

    Sizes first (a truncated file costs nothing to spot), then full digests.
    """
    if algorithm not in ALGORITHMS:
        return [f"its checksums use {algorithm}, which needs `pip install xxhash` to verify"]
    problems = []
    for name in names if names is not None else entries:
        path, want = Path(folder) / name, entries.get(name)
        if want is None:
            problems.append(f"{name} has no checksum in the manifest")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written")
        elif file_digest(path, algorithm) != want["digest"]:
            problems.append(f"{name} does not match its checksum (damaged after it was written)")
    return problems


def sample_digest(path: Path) -> str:
    """XXH3/SHA-256 of ``SAMPLE_BLOCKS`` evenly spaced blocks of a file and its size: a cheap content fingerprint."""
    size = Path(path).stat().st_size
    h = ALGORITHMS[DEFAULT_ALGORITHM]()
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        step = max(SAMPLE_BLOCK, size // SAMPLE_BLOCKS)
        for offset in range(0, size, step):
            f.seek(offset)
            h.update(f.read(SAMPLE_BLOCK))
    return f"{DEFAULT_ALGORITHM}:{h.hexdigest()}"


def data_fingerprint(data_dir: Path, splits: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{"train.bin": {"bytes", "mtime_ns", "sample"}, ...}: stored with each checkpoint, checked on resume."""
    out = {}
    for split in splits:
        path = Path(data_dir) / f"{split}.bin"
        st = path.stat()
        out[path.name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": sample_digest(path)}
    return out


def check_data(data_dir: Path, saved: dict[str, dict[str, Any]], meta_hash: str, splits: Iterable[str]) -> list[str]:
    """What changed in the data splits since ``saved`` was taken ([] when nothing did).

    Size and sampled hash always; when a file's modification time moved, the whole data is
    re-hashed against ``meta_hash`` (meta.json's SHA-256 of the splits), since a rewrite can
    leave the sampled blocks alone.
    """
    now = data_fingerprint(data_dir, splits)
    problems = [
        f"{name}: {_data_change(saved[name], info)}"
        for name, info in now.items()
        if name in saved and _data_change(saved[name], info)
    ]
    touched = any(name in saved and saved[name].get("mtime_ns") != info["mtime_ns"] for name, info in now.items())
    if not problems and touched:
        size = sum(info["bytes"] for info in now.values()) / 1e6
        print(
            f"the data splits in {data_dir} were modified since the checkpoint; checking all {size:,.0f} MB "
            "against meta.json's hash",
            file=sys.stderr,
            flush=True,
        )
        if files_digest(Path(data_dir) / f"{s}.bin" for s in splits) != meta_hash:
            problems.append("the splits were modified (modification time moved) and no longer match meta.json's hash")
    return problems


def _data_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("bytes") != new["bytes"]:
        return f"{new['bytes']} bytes now, {old.get('bytes')} when the checkpoint was saved"
    if old.get("sample", "").split(":")[0] == new["sample"].split(":")[0] and old.get("sample") != new["sample"]:
        return "its content changed (sampled blocks differ)"
    return ""
