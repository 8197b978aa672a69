"""`gptv prepare`: tokenize a corpus into a dataset folder that `TokenDataset` reads.

Sources: the synthetic language (its HMM saved alongside), local UTF-8 text (file, folder or
glob), Tiny Shakespeare and Hugging Face corpora (downloaded). The splits are written first and
meta.json last, atomically: its presence marks the folder as complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..common.atomic import atomic_write
from ..common.errors import InputError, UnavailableError
from .dataset import FORMAT, SPLITS, token_dtype
from .synthetic import ARRAYS_FILE, PRESETS, WORDS_FILE, SyntheticLanguage
from .tokenizers import HF_FILE, META_FILE, Tokenizer, build_tokenizer, check_tokenizer_spec

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
HF_SOURCES = {  # source -> (dataset path, config, append EOT after each row)
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1", False),  # rows are lines, not documents
    "wikitext-103": ("wikitext", "wikitext-103-raw-v1", False),
    "openwebtext": ("openwebtext", None, True),  # rows are documents
}
SOURCE_FORMS = "synthetic, synthetic:tiny, synthetic:default, text:PATH, shakespeare, " + ", ".join(HF_SOURCES)
OFFLINE_HINT = (
    "If you are offline, prepare a local UTF-8 file, folder or glob instead: "
    "`gptv prepare text:PATH --out DATA` (PATH: a .txt file, a folder of .txt files, or a glob)"
)
BINARY_PROBE = 8192  # a NUL byte among a file's first bytes marks it as binary (git's rule)
MIN_SPLIT_TOKENS = 2  # one input and one target: a split with fewer cannot train or be evaluated
# what an interrupted prepare leaves (no meta.json): a folder holding only these is taken over
PREPARE_FILES = frozenset({"train.bin", "val.bin", META_FILE, HF_FILE, ARRAYS_FILE, WORDS_FILE, "input.txt"})


def prepare(
    source: str,
    out: Path,
    tokenizer: str | None = None,
    *,
    seed: int = 1337,
    val_fraction: float | None = None,
    errors: str = "strict",
    num_proc: int | None = None,
    force: bool = False,
) -> dict:
    """Tokenize `source` into train.bin/val.bin in `out` and return the meta dict (also meta.json).

    Sources: "synthetic[:tiny|:default]" (word tokenizer, HMM saved alongside), "text:PATH"
    (file, folder of *.txt or glob; default tokenizer char), "shakespeare", "wikitext-2",
    "wikitext-103", "openwebtext" (downloads; default tokenizer gpt2).
    val_fraction defaults to 0.1 (the last 10% of a text is validation), 0.0005 for openwebtext.
    errors="strict" rejects non-UTF-8 text; "replace" substitutes U+FFFD. Text sources skip
    hidden and binary files, strip byte-order marks, turn \r\n and \r into \n and drop files
    whose content repeats another's; meta["notes"] says what was done (one line each).
    Everything is checked before ``out`` is created (``check_source``, ``claim_out``: a non-empty
    ``out`` needs ``force``); a failed prepare removes the ``out`` it created; a split with fewer
    than MIN_SPLIT_TOKENS tokens is refused.
    """
    out = Path(out)
    if errors not in ("strict", "replace"):
        raise InputError(f"errors={errors!r}; expected 'strict' or 'replace'")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    check_source(source, tokenizer)
    created = claim_out(out, force)
    try:
        return _prepare_into(source, out, tokenizer, seed, val_fraction, errors, num_proc)
    except BaseException:
        if created is not None:  # a failed prepare leaves no empty or half-written folder behind
            shutil.rmtree(created, ignore_errors=True)
        raise


def _prepare_into(
    source: str,
    out: Path,
    tokenizer: str | None,
    seed: int,
    val_fraction: float | None,
    errors: str,
    num_proc: int | None,
) -> dict:
    """``prepare``'s work, once its arguments and ``out`` are checked."""
    notes: list[str] = []
    # Remove the completion marker first: if this run dies half-way the folder must not look
    # like a finished dataset whose meta.json describes other .bin files.
    (out / "meta.json").unlink(missing_ok=True)
    tok, stats, extra = _write_splits_of(source, out, tokenizer, seed, val_fraction, errors, num_proc, notes)
    _check_splits(source, stats)
    tok.save(out)
    meta = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size).name,
        "eot_token": tok.eot_token,
        **stats,
        "hash": _hash_files([out / "train.bin", out / "val.bin"]),
        "seed": seed,
        **extra,
        **({"notes": notes} if notes else {}),
    }
    atomic_write(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def check_source(source: str, tokenizer: str | None = None) -> None:
    """Refuse a source or tokenizer ``prepare`` cannot use, before anything is created or read:
    an unknown form (a bare path gets the ``text:`` form suggested), text files that do not exist."""
    kind, _, arg = source.partition(":")
    known = kind in ("synthetic", "text") or (kind in HF_SOURCES or kind == "shakespeare") and not arg
    if not known or (kind == "text" and not arg):
        hint = ""
        if Path(source).expanduser().exists() or glob.glob(source):
            hint = f"; to prepare this local file, folder or glob write text:{source}"
        raise InputError(f"unknown data source {source!r}{hint}; valid forms: {SOURCE_FORMS}")
    if kind == "text":
        resolve_text_files(arg)
    if tokenizer is not None:
        check_tokenizer_spec(tokenizer)


def claim_out(out: Path, force: bool) -> Path | None:
    """Check that ``prepare`` may write into ``out`` and create it; return the topmost folder this
    created (None when ``out`` existed). Refused without ``force``: a file, a folder holding a
    dataset or files ``prepare`` does not write (a folder left by an interrupted prepare is taken over)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: give --out a new or empty folder")
    top = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    entries = sorted(p.name for p in out.iterdir()) if top is None else []
    if entries and not force:
        if (out / "meta.json").exists():
            raise InputError(
                f"{out} already holds a prepared dataset: pass --force to replace it (runs trained on it "
                "then no longer match their data) or prepare into another folder"
            )
        others = [n for n in entries if n not in PREPARE_FILES and not n.startswith(".")]
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise InputError(f"{out} is not empty ({shown}): prepare into a new folder, or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return top


def _check_splits(source: str, stats: dict) -> None:
    """A dataset that cannot train is refused when written, not when a run first reads it."""
    for name in SPLITS:
        n = stats[f"{name}_tokens"]
        if n < MIN_SPLIT_TOKENS:
            raise InputError(
                f"{source} gives {n} {name} token(s): a dataset needs at least {MIN_SPLIT_TOKENS} in each "
                "split; prepare a longer text or choose another --val-fraction"
            )


def _write_splits_of(
    source: str,
    out: Path,
    tokenizer: str | None,
    seed: int,
    val_fraction: float | None,
    errors: str,
    num_proc: int | None,
    notes: list[str],
) -> tuple[Tokenizer, dict, dict]:
    """Tokenize ``source`` into out/train.bin and out/val.bin: (tokenizer, split counts, extra meta)."""
    kind, _, arg = source.partition(":")
    if kind == "synthetic":
        return _prepare_synthetic(arg or "default", out, tokenizer, seed)
    if kind == "text" and arg:
        text = read_corpus(arg, errors, notes)
        return _prepare_text(text, out, tokenizer or "char", val_fraction or 0.1)
    if kind == "shakespeare" and not arg:
        text = _normalise(_download_shakespeare(out).read_text(encoding="utf-8"))[0]
        return _prepare_text(text, out, tokenizer or "char", val_fraction or 0.1)
    if kind in HF_SOURCES and not arg:
        return _prepare_hf(kind, out, tokenizer or "gpt2", val_fraction, seed, num_proc)
    raise InputError(f"unknown data source {source!r}; valid forms: {SOURCE_FORMS}")


def _prepare_synthetic(preset: str, out: Path, tokenizer: str | None, seed: int) -> tuple[Tokenizer, dict, dict]:
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    if tokenizer not in (None, "word"):
        raise InputError(f"the synthetic language uses the word tokenizer, not {tokenizer!r}")
    p = PRESETS[preset]
    # independent, seed-derived streams for the HMM itself and for each split
    lang = SyntheticLanguage.random(p, seed=seed)
    train = lang.sample(p.train_tokens, np.random.default_rng([seed, 1]))
    val = lang.sample(p.val_tokens, np.random.default_rng([seed, 2]))
    tok = build_tokenizer("word", words=lang.words)
    assert tok.eot_token == lang.eot_token
    lang.save(out)
    stats = _write_splits(out, {"train": train, "val": val}, tok.vocab_size)
    train_text, val_text = tok.decode(train), tok.decode(val)
    return (
        tok,
        stats,
        {
            "train_bytes": len(train_text.encode()),
            "val_bytes": len(val_text.encode()),
            "val_words": len(val_text.split()),
            "synthetic": {
                "preset": preset,
                "seed": seed,
                "entropy_rate_val": lang.entropy_rate(val),
                "cross_entropy_val": lang.cross_entropy(val),
            },
        },
    )


def _prepare_text(text: str, out: Path, spec: str, val_fraction: float) -> tuple[Tokenizer, dict, dict]:
    n = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:n], text[n:]
    # Vocabulary tokenizers (char, word) see the whole text, as nanoGPT's shakespeare_char
    # does, so val never holds unknown symbols; BPE merges are learnt on train only.
    tok = build_tokenizer(spec, train_text if spec.startswith("bpe") else text)
    splits = {"train": tok.encode(train_text), "val": tok.encode(val_text)}
    stats = _write_splits(out, splits, tok.vocab_size)
    extra = {
        "train_bytes": len(train_text.encode()),
        "val_bytes": len(val_text.encode()),
        "val_words": len(val_text.split()),
        "val_fraction": val_fraction,
    }
    return tok, stats, extra


def _write_splits(out: Path, splits: Mapping[str, Iterable[int]], vocab_size: int) -> dict:
    dtype = token_dtype(vocab_size)
    stats = {}
    for name in SPLITS:
        ids = np.asarray(splits[name], dtype=np.int64)
        if len(ids) and ids.max() >= vocab_size:
            raise AssertionError(f"token id {ids.max()} >= vocab_size {vocab_size}")
        atomic_write(out / f"{name}.bin", ids.astype(dtype).tobytes())
        stats[f"{name}_tokens"] = len(ids)
    return stats


def resolve_text_files(spec: str) -> tuple[list[Path], bool]:
    """(the files behind a file, folder (its *.txt) or glob, whether they were named one by one)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], True
    if path.is_dir():
        files = sorted(f for f in path.glob("*.txt") if f.is_file())
        if not files:
            raise FileNotFoundError(f"folder {path} has no *.txt files")
        return files, False
    files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"no text file, folder or glob matches {spec!r}")
    return files, False


def read_corpus(spec: str, errors: str, notes: list[str] | None = None) -> str:
    """Concatenate the UTF-8 files behind `spec`, inserting a newline where a file lacks one.

    From a folder or glob, hidden files (.DS_Store, macOS's ._NAME resource forks) and binary
    files (a NUL byte among the first 8 KiB) are skipped and files whose text repeats an
    earlier one are dropped, so no document lands in both splits. Every file loses its
    byte-order mark and has \r\n and \r line ends turned into \n. What was done is appended
    to `notes`, one line per kind.
    """
    files, explicit = resolve_text_files(spec)
    skipped: dict[str, list[str]] = {"hidden": [], "binary": [], "duplicate": []}
    normalised: dict[str, list[str]] = {"bom": [], "newlines": []}
    seen: dict[bytes, Path] = {}
    parts: list[str] = []
    for f in files:
        if not explicit and f.name.startswith("."):
            skipped["hidden"].append(f.name)
            continue
        raw = f.read_bytes()
        nul = raw.find(b"\0", 0, BINARY_PROBE)
        if nul >= 0:
            if explicit:
                raise InputError(f"{f} is not a text file (a NUL byte at byte offset {nul}); prepare UTF-8 text")
            skipped["binary"].append(f.name)
            continue
        text, changes = _normalise(_decode(f, raw, errors))
        for change in changes:
            normalised[change].append(f.name)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest in seen:
            skipped["duplicate"].append(f"{f.name} (= {seen[digest].name})")
            continue
        seen[digest] = f
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")
        parts.append(text)
    if not parts:
        raise FileNotFoundError(f"no text files in {spec!r}: " + "; ".join(_describe_skipped(skipped)))
    if notes is not None:
        notes.extend(_describe_skipped(skipped))
        if normalised["bom"]:
            notes.append(f"stripped the byte-order mark of {_files(normalised['bom'])}")
        if normalised["newlines"]:
            notes.append(f"turned \\r\\n and \\r line ends into \\n in {_files(normalised['newlines'])}")
    return "".join(parts)


def _decode(f: Path, raw: bytes, errors: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{f} is not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start} cannot be decoded; "
            "re-encode the file as UTF-8 or pass --errors replace (errors='replace') to substitute U+FFFD"
        ) from None


def _normalise(text: str) -> tuple[str, list[str]]:
    """(text without a leading byte-order mark and with \n line ends, the changes made: 'bom', 'newlines')."""
    changes = []
    if text.startswith("\ufeff"):
        text, changes = text[1:], ["bom"]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        changes.append("newlines")
    return text, changes


def _describe_skipped(skipped: dict[str, list[str]]) -> list[str]:
    why = {"hidden": "hidden", "binary": "binary (NUL bytes)", "duplicate": "duplicate (same text as an earlier file)"}
    return [f"skipped {_files(names, why[kind])}" for kind, names in skipped.items() if names]


def _files(names: list[str], adjective: str = "") -> str:
    """'3 hidden files: a, b, c' (at most five names)."""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} {adjective + ' ' if adjective else ''}file{'s' if len(names) > 1 else ''}: {shown}"


def _download_shakespeare(out: Path) -> Path:
    path = out / "input.txt"
    if not path.exists():
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
                data = r.read()
        except OSError as e:  # URLError, timeouts and DNS failures are all OSErrors
            raise UnavailableError(
                f"could not download Tiny Shakespeare from {SHAKESPEARE_URL} ({e}). {OFFLINE_HINT}"
            ) from e
        atomic_write(path, data)
    return path


def _prepare_hf(
    name: str, out: Path, spec: str, val_fraction: float | None, seed: int, num_proc: int | None
) -> tuple[Tokenizer, dict, dict]:
    try:
        import datasets
    except ImportError:
        raise UnavailableError(
            f"{name} needs the Hugging Face datasets library: pip install 'gptvariants[hf]', "
            "or prepare a local copy with text:PATH"
        ) from None

    path, config, append_eot = HF_SOURCES[name]
    try:
        ds = datasets.load_dataset(path, config, num_proc=num_proc)
    except Exception as e:  # the hub raises many types (ConnectionError, OSError, HfHubHTTPError, ...)
        raise UnavailableError(
            f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). {OFFLINE_HINT}"
        ) from e
    if name == "openwebtext":  # train only: hold out a random slice, as nanoGPT does
        ds = ds["train"].train_test_split(test_size=val_fraction or 0.0005, seed=seed, shuffle=True)
        train, val = ds["train"], ds["test"]
    else:
        if val_fraction is not None:
            raise InputError(f"{name} has its own validation split; do not pass --val-fraction (val_fraction)")
        train, val = ds["train"], ds["validation"]

    if spec == "gpt2":
        tok = build_tokenizer(spec)
    else:  # learn the vocabulary from (a bounded prefix of) the training split
        tok = build_tokenizer(spec, _text_prefix(train, 100_000_000))
    stats = {}
    for split, data in (("train", train), ("val", val)):
        stats.update(write_hf_split(data, tok, out / f"{split}.bin", split, append_eot=append_eot, num_proc=num_proc))
    return tok, stats, {}


def _text_prefix(data, max_chars: int) -> Iterable[str]:
    n = 0
    for row in data:
        if n >= max_chars:
            return
        n += len(row["text"])
        yield row["text"]


def write_hf_split(
    data, tok: Tokenizer, path: Path, split: str, *, append_eot: bool, num_proc: int | None = None
) -> dict:
    """Tokenize a Hugging Face dataset with a "text" column into the memmap `path` without
    holding the corpus in memory; return {split_tokens, split_bytes, split_words}."""
    from tqdm import tqdm

    if append_eot and tok.eot_token is None:
        raise InputError(f"tokenizer {tok.name!r} has no end-of-text token to separate documents")
    suffix = [tok.eot_token] if tok.eot_token is not None and append_eot else []

    def process(batch: dict) -> dict:
        ids = [tok.encode(t) + suffix for t in batch["text"]]
        return {
            "ids": ids,
            "len": [len(i) for i in ids],
            "bytes": [len(t.encode()) for t in batch["text"]],
            "words": [len(t.split()) for t in batch["text"]],
        }

    tokenized = data.map(
        process, batched=True, remove_columns=data.column_names, num_proc=num_proc, desc=f"tokenizing {split}"
    )
    total = int(np.sum(tokenized["len"], dtype=np.int64))
    tmp = path.with_name(path.name + ".tmp")
    arr = np.memmap(tmp, dtype=token_dtype(tok.vocab_size), mode="w+", shape=(max(total, 1),))
    n_shards = max(1, min(1024, len(tokenized) // 64))
    idx = 0
    # a bar in a terminal only: redirected to a log, its carriage returns would fill it
    for i in tqdm(range(n_shards), desc=f"writing {path.name}", disable=not sys.stderr.isatty()):
        shard = tokenized.shard(num_shards=n_shards, index=i, contiguous=True).with_format("numpy")
        if len(shard) == 0:
            continue
        ids = np.concatenate([np.asarray(x) for x in shard["ids"]])
        arr[idx : idx + len(ids)] = ids
        idx += len(ids)
    arr.flush()
    del arr
    if total == 0:  # np.memmap cannot create an empty file; keep the format (0 bytes)
        tmp.write_bytes(b"")
    os.replace(tmp, path)
    return {
        f"{split}_tokens": total,
        f"{split}_bytes": int(np.sum(tokenized["bytes"], dtype=np.int64)),
        f"{split}_words": int(np.sum(tokenized["words"], dtype=np.int64)),
    }


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
