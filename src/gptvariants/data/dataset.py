"""The on-disk token dataset (`TokenDataset`) that `gptv prepare` (data/prepare.py) writes.

A prepared dataset is a folder holding
    train.bin, val.bin   raw token ids (numpy memmap, uint16 if vocab_size < 65536 else uint32)
    tokenizer files      whatever `Tokenizer.save` writes
    synthetic.*          the ground-truth HMM, for the synthetic language only
    meta.json            written last: its presence marks the folder as complete

Files are written with the mode the umask gives (collaborators can read a shared dataset).
Reading checks meta.json's fields and, once per file version, that every token id in the
splits is inside the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..common.checks import Choice, Int, Text
from ..common.errors import InputError
from ..common.inputs import read_json, require
from .synthetic import SyntheticLanguage
from .tokenizers import Tokenizer, load_tokenizer

FORMAT = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


# ---------------------------------------------------------------------------- reading


class TokenDataset:
    """A prepared dataset folder: meta, tokenizer, ground-truth HMM (synthetic only) and splits."""

    def __init__(self, dir: Path):
        self.dir = Path(dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"dataset folder {self.dir} does not exist; run `gptv prepare SOURCE --out {self.dir}` first"
            )
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.dir} has no meta.json (never prepared, or preparation was interrupted); "
                f"run `gptv prepare SOURCE --out {self.dir}` first"
            )
        self._meta = _read_meta(meta_path)
        self.dtype = np.dtype(self._meta["dtype"])
        for name in SPLITS:
            path, expect = self.dir / f"{name}.bin", self._meta[f"{name}_tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expect:
                raise InputError(
                    f"{path} is missing or does not match meta.json ({expect} bytes expected); re-run `gptv prepare`"
                )
        self._check_ids()
        self._tokenizer: Tokenizer | None = None
        self._synthetic: SyntheticLanguage | None = None

    @property
    def meta(self) -> dict:
        return self._meta

    @property
    def vocab_size(self) -> int:
        return int(self._meta["vocab_size"])

    @property
    def eot_token(self) -> int | None:
        return self._meta["eot_token"]

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.dir)
        return self._tokenizer

    @property
    def synthetic(self) -> SyntheticLanguage | None:
        """The ground-truth HMM when the data is the synthetic language, else None."""
        if self._synthetic is None and "synthetic" in self._meta:
            self._synthetic = SyntheticLanguage.load(self.dir)
        return self._synthetic

    def _check_ids(self) -> None:
        """Every token id of both splits < vocab_size: a flipped byte or a wrong meta.json fails here,
        naming the file, not as an index error deep inside the model. np.max runs over each file in
        chunks (a few ms per 100 M tokens once cached by the OS), once per file version and process
        (``_MAX_IDS``): nothing is written into the user's data folder."""
        V = self.vocab_size
        for name in SPLITS:
            path = self.dir / f"{name}.bin"
            top = _max_id(path, self.dtype)
            if top >= V:
                bad = _first_at_least(path, self.dtype, V)
                raise InputError(
                    f"{path}: token id {top} at position {bad} is outside the vocabulary of {V} "
                    f"(vocab_size in {self.dir / 'meta.json'}); the file is damaged or meta.json belongs "
                    "to other data: re-run `gptv prepare`"
                )

    def split(self, name: str) -> np.memmap:
        """Read-only memmap of a split's token ids."""
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; expected one of {SPLITS}")
        if self._meta[f"{name}_tokens"] == 0:
            raise InputError(
                f"the {name} split of {self.dir} is empty (0 tokens); prepare more data or change val_fraction"
            )
        # A fresh memmap per call, as nanoGPT does: a long-lived one keeps every page it ever
        # touched mapped, which shows up as ever-growing memory on big corpora.
        return np.memmap(self.dir / f"{name}.bin", dtype=self.dtype, mode="r")

    def windows(
        self, split: str, offsets: np.ndarray, block_size: int, sets: np.memmap | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x, y int64 (B, T) and sets int64 (B, T, K) or None for the windows starting at ``offsets``.

        y[:, i] = x[:, i] + one position. With ``sets`` (rows aligned with the split, row i =
        candidates for token i+1, padded with the dtype max), s[b, i] = sets[offset_b + i] with
        padding as -1."""
        data = self.split(split)
        n = len(data)
        idx = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(block_size + 1)
        window = torch.from_numpy(data[idx].astype(np.int64))
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        if sets is None:
            return x, y, None
        if len(sets) != n:
            raise InputError(f"sets have {len(sets)} rows but the {split} split has {n} tokens")
        s = sets[idx[:, :-1]].astype(np.int64)
        s[sets[idx[:, :-1]] == np.iinfo(sets.dtype).max] = -1
        return x, y, torch.from_numpy(s)

    def open_sets(self, dir: Path, split: str) -> np.memmap:
        """`open_sets` checked against this dataset's hash and vocabulary (``check_sets``)."""
        sets = open_sets(dir, split, self._meta["hash"])
        check_sets(sets, self.vocab_size, Path(dir) / f"{split}.bin")
        return sets


def open_sets(dir: Path, split: str, data_hash: str) -> np.memmap:
    """Open `dir/{split}.bin` as an (n_tokens, K) memmap of next-token candidate sets.

    `dir/meta.json` gives "k", "dtype", "rules" and "data_hash"; the last must equal `data_hash`
    (the dataset's meta["hash"]), otherwise the sets belong to other data.
    """
    dir = Path(dir)
    meta_path = dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{dir} has no meta.json; build the candidate sets first")
    meta = read_json(meta_path)
    if meta.get("data_hash") != data_hash:
        raise InputError(
            f"the candidate sets in {dir} were built for other data (hash mismatch); rebuild them for this dataset"
        )
    k = require(meta, "k", Int(1, text=False), meta_path)
    dtype = np.dtype(require(meta, "dtype", Choice(("uint16", "uint32")), meta_path))
    require(meta, "rules", _json_object, meta_path)  # training reads the selection rule from it
    path = dir / f"{split}.bin"
    size = path.stat().st_size if path.is_file() else -1
    if size <= 0 or size % (k * dtype.itemsize):
        raise InputError(f"{path} is missing, empty or not a whole number of rows of {k} x {dtype.name}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(size // (k * dtype.itemsize), k))


# ---------------------------------------------------------------------------- checks on reading


def _read_meta(path: Path) -> dict:
    """meta.json with the fields every reader relies on checked, each error naming the file."""
    meta = read_json(path)
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise InputError(f"{path}: unsupported format {fmt!r} (expected {FORMAT}); re-run `gptv prepare`")
    vocab = require(meta, "vocab_size", Int(1, 2**32 - 1, text=False), path)
    require(meta, "dtype", Choice(("uint16", "uint32")), path)
    for key in ("train_tokens", "val_tokens"):
        require(meta, key, Int(0, text=False), path)
    for key in ("hash", "tokenizer", "source"):
        require(meta, key, Text(), path)
    require(meta, "eot_token", lambda v: v if v is None else Int(0, vocab - 1, text=False)(v), path)
    return meta


def _json_object(value: object) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


# (device, inode, size, mtime_ns) of a split file -> its largest id: the range check of each file
# version runs once per process
_MAX_IDS: dict[tuple[int, int, int, int], int] = {}
_SET_SCANS: dict[tuple[int, int, int, int], tuple[int, int]] = {}  # the same for candidate-set files


def set_stats(sets: np.ndarray, pad: int | None = None, rows: int = 1 << 16) -> tuple[int, int]:
    """(candidates that are not padding, the largest candidate id or -1) of an (n, K) set array
    padded with ``pad`` (default: its dtype's maximum, as stored), read ``rows`` rows at a time."""
    pad = np.iinfo(sets.dtype).max if pad is None else pad
    real, top = 0, -1
    for a in range(0, len(sets), rows):
        block = np.asarray(sets[a : a + rows])
        ids = block[block != pad]
        real += len(ids)
        top = max(top, int(ids.max()) if len(ids) else -1)
    return real, top


def check_sets(sets: np.ndarray, vocab_size: int, where: Path | str) -> None:
    """Refuse candidate sets that cannot train: every row padding, or ids outside [0, vocab_size)
    (which would fail deep in the loss as an index error). A memmap's file is scanned once per version."""
    path = Path(where)
    version = None
    if isinstance(sets, np.memmap) and path.is_file():
        st = path.stat()
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    stats = _SET_SCANS.get(version) if version else None
    if stats is None:
        stats = set_stats(sets)
        if version:
            _SET_SCANS[version] = stats
    real, top = stats
    if real == 0:
        raise InputError(f"{where}: every candidate set is empty (all padding): nothing to train on; rebuild the sets")
    if top >= vocab_size:
        raise InputError(
            f"{where}: candidate id {top} is outside the vocabulary of {vocab_size}: the sets belong to another "
            "tokenizer or are damaged; rebuild them (gptv targets)"
        )


def _max_id(path: Path, dtype: np.dtype, chunk: int = 1 << 24) -> int:
    """The largest token id in ``path`` (-1 when empty), remembered per file version."""
    st = path.stat()
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if version not in _MAX_IDS:
        data = np.memmap(path, dtype=dtype, mode="r") if st.st_size else np.zeros(0, dtype)
        _MAX_IDS[version] = max((int(data[s : s + chunk].max()) for s in range(0, len(data), chunk)), default=-1)
    return _MAX_IDS[version]


def _first_at_least(path: Path, dtype: np.dtype, bound: int, chunk: int = 1 << 24) -> int:
    data = np.memmap(path, dtype=dtype, mode="r")
    for s in range(0, len(data), chunk):
        hits = np.flatnonzero(data[s : s + chunk] >= bound)
        if len(hits):
            return s + int(hits[0])
    return -1
