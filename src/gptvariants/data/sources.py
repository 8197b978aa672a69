"""What ``gptv eval`` scores: a prepared split, an external text, or a shifted sibling of the
synthetic language, each as a token stream in the run's own vocabulary.

Sources (``--data`` + ``--split``, ``--text PATH``, and ``--ood SOURCE``):
    DATA folder          its split, prepared with the run's tokenizer (checked)
    text:PATH            a UTF-8 file, folder (its *.txt files) or glob, encoded with the run's
                         tokenizer; characters (words) it cannot encode are dropped, counted and
                         reported, not fatal
    synthetic?shift=S    a sibling of the in-domain synthetic language (``SyntheticLanguage.shifted``):
                         same vocabulary, exact distribution known; options &part=transition|
                         emission|both (default both), &seed=N (default 1), &tokens=N (default:
                         as many as the in-domain source)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from ..common.errors import InputError
from ..common.inputs import read_json
from .dataset import TokenDataset
from .prepare import read_corpus
from .synthetic import SHIFT_PARTS, SyntheticLanguage
from .tokenizers import META_FILE, Tokenizer

UNKNOWN_EXAMPLES = 10


@dataclass
class Source:
    """A token stream to score and what is known about it."""

    name: str
    tokens: np.ndarray
    n_bytes: int | None = None  # for bits per byte
    n_words: int | None = None  # for word perplexity
    truth: SyntheticLanguage | None = None  # the exact distribution (synthetic language)
    data: TokenDataset | None = None  # the prepared folder (reference sets live there)
    split: str | None = None
    unknown: dict[str, Any] | None = None  # text: what the tokenizer could not encode
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "tokens": int(len(self.tokens)), **self.info}
        if self.unknown is not None:
            out["unknown"] = self.unknown
        return out


def check_same_tokenizer(run_dir: Path, data: TokenDataset) -> None:
    """Raise InputError unless the run was trained with the tokenizer of ``data``.

    Compares the tokenizer name and vocabulary size in the run's data.json with the data's
    meta.json, then the saved tokenizer files themselves (two word or char vocabularies can
    share a name and a size).
    """
    run_dir = Path(run_dir)
    info = run_dir / "data.json"
    if not info.is_file():
        raise FileNotFoundError(f"{info} is missing: {run_dir} is not a run folder written by `gptv train`")
    trained = read_json(info)
    problems = [
        f"{key} {trained.get(key)!r} (this data: {data.meta.get(key)!r})"
        for key in ("tokenizer", "vocab_size")
        if trained.get(key) != data.meta.get(key)
    ]
    if not problems:
        ours, theirs = (read_json(d / META_FILE) for d in (run_dir, data.dir))
        same = ours == theirs
        if same and "file" in ours:  # BPE: the merges live in a separate file
            same = (run_dir / ours["file"]).read_bytes() == (data.dir / theirs["file"]).read_bytes()
        if not same:
            problems.append(f"a different {trained.get('tokenizer')!r} vocabulary")
    if problems:
        raise InputError(
            f"the checkpoint in {run_dir} was trained with another tokenizer than the data in {data.dir}: "
            + "; ".join(problems)
            + f". Evaluate on data prepared like the training data (source {trained.get('source')!r}),"
            " or pass the text itself with --text PATH (it is encoded with the run's tokenizer)."
        )


def split_source(run_dir: Path, data_dir: Path, split: str) -> Source:
    """A split of a prepared folder made with the run's tokenizer."""
    data = TokenDataset(Path(data_dir))
    check_same_tokenizer(run_dir, data)
    return Source(
        f"{split} split of {data.dir}",
        np.asarray(data.split(split)),
        data.meta.get(f"{split}_bytes"),
        data.meta.get(f"{split}_words"),
        data.synthetic,
        data,
        split,
    )


def text_source(spec: str, tokenizer: Tokenizer, errors: str = "strict") -> Source:
    """``spec`` (a file, folder or glob; ``text:`` optional) encoded with ``tokenizer``; unknown
    characters are dropped and counted (``Source.unknown``)."""

    path = spec[len("text:") :] if spec.startswith("text:") else spec
    text = read_corpus(path, errors)
    if not text.strip():
        raise InputError(f"{path} holds no text to score")
    missing = tokenizer.unknown(text)
    ids = tokenizer.encode(text, unknown="skip")
    if tokenizer.eot_token is not None:
        ids = [tokenizer.eot_token] + ids  # every token of the text then has a context
    unknown = {
        "count": sum(missing.values()),
        "distinct": len(missing),
        "examples": dict(missing.most_common(UNKNOWN_EXAMPLES)),
    }
    return Source(
        f"text:{path}", np.asarray(ids, dtype=np.int64), len(text.encode("utf-8")), len(text.split()), unknown=unknown
    )


def shift_spec(spec: str) -> dict[str, Any]:
    """Parse ``synthetic?shift=S&part=P&seed=N&tokens=N`` into its options."""
    _, _, query = spec.partition("?")
    raw = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(raw) - {"shift", "part", "seed", "tokens"}
    if unknown or "shift" not in raw:
        raise InputError(
            f"{spec!r}: write synthetic?shift=S[&part={'|'.join(SHIFT_PARTS)}][&seed=N][&tokens=N]"
            + (f"; unknown option(s) {', '.join(sorted(unknown))}" if unknown else "")
        )
    try:
        opts: dict[str, Any] = {
            "shift": float(raw["shift"]),
            "part": raw.get("part", "both"),
            "seed": int(raw.get("seed", 1)),
            "tokens": int(raw["tokens"]) if "tokens" in raw else None,
        }
    except ValueError:
        raise InputError(f"{spec!r}: shift is a number in [0, 1], seed and tokens integers") from None
    if opts["tokens"] is not None and opts["tokens"] < 2:
        raise InputError(f"{spec!r}: tokens must be >= 2")
    return opts


def shifted_source(spec: str, base: SyntheticLanguage | None, n_tokens: int) -> Source:
    """Tokens sampled from a shifted sibling of ``base`` (the in-domain synthetic language)."""
    if base is None:
        raise InputError(
            f"{spec!r} shifts the synthetic language, and the in-domain data is not synthetic: "
            "pass a prepared folder or text:PATH as --ood instead"
        )
    opts = shift_spec(spec)
    language = base.shifted(opts["shift"], opts["part"], opts["seed"])
    n = opts["tokens"] or n_tokens
    tokens = language.sample(n, np.random.default_rng(opts["seed"] + 7919))[:n]
    return Source(
        f"synthetic?shift={opts['shift']}&part={opts['part']}&seed={opts['seed']}",
        tokens,
        truth=language,
        info={"shift": opts["shift"], "part": opts["part"], "seed": opts["seed"]},
    )


def resolve_source(spec: str, run_dir: Path, tokenizer: Tokenizer, in_domain: Source, split: str = "val") -> Source:
    """An out-of-domain ``--ood`` source: a prepared folder (its ``split``), text:PATH or synthetic?shift=..."""
    if spec.startswith("synthetic?") or spec == "synthetic":
        return shifted_source(spec, in_domain.truth, len(in_domain.tokens))
    if spec.startswith("text:"):
        return text_source(spec, tokenizer)
    if Path(spec).is_dir():
        return split_source(run_dir, Path(spec), split)
    raise InputError(f"--ood {spec!r} is neither a prepared data folder, text:PATH nor synthetic?shift=S")
