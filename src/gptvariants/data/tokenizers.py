"""Tokenizers: character, whitespace-word, GPT-2 (tiktoken) and trainable byte-level BPE.

Every tokenizer has the same small interface (`Tokenizer`) and saves itself as JSON
(`tokenizer_meta.json`, plus the Hugging Face `tokenizer.json` for BPE) so that
`load_tokenizer(dir)` can rebuild it without pickle. `to_hf()` expresses each one as a
Hugging Face `tokenizers.Tokenizer` with the same ids and the same decoded text (used by
`gptv export`).

Specs accepted by `build_tokenizer`: "char", "word", "gpt2", "bpe:N".
"""

from __future__ import annotations

import codecs
import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

from ..common.errors import InputError, UnavailableError, UnknownSymbols
from ..common.inputs import read_json

EOT_TEXT = "<|endoftext|>"
META_FILE = "tokenizer_meta.json"
HF_FILE = "tokenizer.json"
_UNKNOWN_MODES = ("error", "skip")


def _check_unknown(unknown: str) -> None:
    if unknown not in _UNKNOWN_MODES:
        raise InputError(f"unknown={unknown!r}; expected one of {_UNKNOWN_MODES}")


def _iter_texts(text: str | Iterable[str]) -> Iterable[str]:
    return [text] if isinstance(text, str) else text


class Tokenizer(ABC):
    """Maps text to token ids in [0, vocab_size) and back.

    `encode(text, unknown="error")` raises ValueError on text the vocabulary cannot
    represent; `unknown="skip"` drops it instead (byte-level tokenizers never hit this).
    """

    kind: str  # the "kind" key in tokenizer_meta.json
    name: str
    vocab_size: int
    eot_token: int | None

    @abstractmethod
    def encode(self, text: str, unknown: str = "error") -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def _config(self) -> dict:
        """JSON-serialisable fields that `load_tokenizer` needs to rebuild this tokenizer."""

    @abstractmethod
    def to_hf(self) -> HFTokenizer:
        """This tokenizer as a Hugging Face ``tokenizers.Tokenizer``: same ids for every text this one
        encodes, same text for every id sequence it decodes (``skip_special_tokens=False``); adds no
        special tokens of its own. End-of-text, when there is one, is a special token."""

    def save(self, dir: Path) -> None:
        """Write the tokenizer's files into `dir` (created if needed)."""
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        _write_json(dir / META_FILE, {"kind": type(self).kind, "name": self.name, **self._config()})

    def unknown(self, text: str) -> Counter:
        """The pieces of ``text`` the vocabulary cannot represent, with their counts (what
        ``encode(text, unknown="skip")`` drops). Byte-level tokenizers represent everything."""
        return Counter()

    def pieces(self, context: Sequence[int] = ()) -> Pieces:
        """An incremental decoder: ``next(id)`` returns the text that token adds after
        ``context`` and the tokens fed so far, so the pieces join to exactly
        ``decode(context + ids)[len(decode(context)):]``. This default decodes the growing
        prefix (quadratic); the tokenizers below do it in constant time per token."""
        return _PrefixPieces(self, context)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_token={self.eot_token})"


class CharTokenizer(Tokenizer):
    """One token per Unicode character of a fixed alphabet (nanoGPT's shakespeare_char). No EOT."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise InputError("char vocabulary must be distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.name = "char"
        self.vocab_size = len(self.chars)
        self.eot_token = None

    @classmethod
    def train(cls, text: str | Iterable[str]) -> CharTokenizer:
        alphabet: set[str] = set()
        for t in _iter_texts(text):
            alphabet.update(t)
        if not alphabet:
            raise InputError("cannot build a char tokenizer from empty text")
        return cls(sorted(alphabet))

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        _check_unknown(unknown)
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - stoi.keys())
            if unknown == "skip":
                return [stoi[c] for c in text if c in stoi]
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise UnknownSymbols(f"{len(missing)} character(s) not in the char vocabulary: {shown}") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def unknown(self, text: str) -> Counter:
        return Counter(c for c in text if c not in self.stoi)

    def pieces(self, context: Sequence[int] = ()) -> Pieces:
        return _MapPieces(lambda i, prev: self.chars[i])

    def _config(self) -> dict:
        return {"chars": self.chars}

    def to_hf(self) -> HFTokenizer:
        """One token per character: a word-level model over the alphabet, a pre-tokenizer that
        isolates every character (whitespace included) and a decoder that joins without spaces."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer(models.WordLevel(dict(self.stoi), unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        return hf


class WordTokenizer(Tokenizer):
    """Whitespace words from a fixed list, plus `<|endoftext|>` as the last id.

    A line break encodes to EOT and EOT decodes to a line break, so one document per
    line round-trips: `encode(decode(ids)) == ids` for every id sequence.
    """

    kind = "word"
    _pattern = re.compile(r"\n|[^\s]+")

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words):
            raise InputError("word list has duplicates")
        if any(EOT_TEXT == w or not w or any(c.isspace() for c in w) for w in words):
            raise InputError(f"words must be non-empty, contain no whitespace and not be {EOT_TEXT!r}")
        self.words = words
        self.eot_token = len(words)
        self.itos = words + [EOT_TEXT]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.stoi["\n"] = self.eot_token
        self.name = "word"
        self.vocab_size = len(self.itos)

    @classmethod
    def train(cls, text: str | Iterable[str]) -> WordTokenizer:
        vocab: set[str] = set()
        for t in _iter_texts(text):
            vocab.update(t.split())
        vocab.discard(EOT_TEXT)
        if not vocab:
            raise InputError("cannot build a word tokenizer from text without words")
        return cls(sorted(vocab))

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        _check_unknown(unknown)
        stoi = self.stoi
        pieces = self._pattern.findall(text)
        try:
            return [stoi[p] for p in pieces]
        except KeyError:
            if unknown == "skip":
                return [stoi[p] for p in pieces if p in stoi]
            missing = sorted({p for p in pieces if p not in stoi})
            shown = ", ".join(repr(w) for w in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise UnknownSymbols(f"{len(missing)} word(s) not in the word vocabulary: {shown}") from None

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        line: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eot_token:
                out.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.itos[i])
        out.append(" ".join(line))
        return "".join(out)

    def unknown(self, text: str) -> Counter:
        return Counter(p for p in self._pattern.findall(text) if p not in self.stoi)

    def pieces(self, context: Sequence[int] = ()) -> Pieces:
        # decode joins the words of a line with spaces and ends a line at EOT
        eot = self.eot_token

        def piece(i: int, prev: int | None) -> str:
            if i == eot:
                return "\n"
            return (" " if prev is not None and prev != eot else "") + self.itos[i]

        return _MapPieces(piece, context[-1] if len(context) else None)

    def _config(self) -> dict:
        return {"words": self.words}

    def to_hf(self) -> HFTokenizer:
        """Words split at whitespace, a line break read as end-of-text. Decoding joins words with one
        space and end-of-text becomes a bare line break: the decoder maps EOT to "\\n", puts a space
        before every token but the first (WordPiece's rule, with a prefix no token has), fuses, and
        removes the spaces around each line break (no word contains whitespace)."""
        from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        if any(EOT_TEXT in w for w in self.words):
            raise InputError(f"a word contains {EOT_TEXT!r}: the exported tokenizer could not tell it from end-of-text")
        hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(self.itos)}, unk_token=None))
        hf.normalizer = normalizers.Replace("\n", f" {EOT_TEXT} ")
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.decoder = decoders.Sequence(
            [
                decoders.Replace(EOT_TEXT, "\n"),
                decoders.WordPiece(prefix=" ", cleanup=False),
                decoders.Fuse(),
                decoders.Replace(" \n", "\n"),
                decoders.Replace("\n ", "\n"),
            ]
        )
        hf.add_special_tokens([AddedToken(EOT_TEXT, special=True, normalized=False)])
        return hf


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE via tiktoken (vocab 50257, EOT 50256). The literal `<|endoftext|>` encodes to EOT."""

    kind = "gpt2"

    def __init__(self, enc=None):
        """``enc``: a tiktoken Encoding to use instead of GPT-2's (tests build small ones offline)."""
        import tiktoken

        try:
            self.enc = enc or tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken fetches its vocabulary files on first use
            raise UnavailableError(
                "could not fetch the GPT-2 vocabulary (tiktoken downloads it once from the internet, "
                f"and that failed: {type(e).__name__}). Use the offline tokenizers instead: "
                "--tokenizer char, or --tokenizer bpe:N (e.g. bpe:4096) trained on your data"
            ) from e
        self.name = "gpt2"
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        _check_unknown(unknown)  # byte-level: every string is representable
        return self.enc.encode(text, allowed_special={EOT_TEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    def pieces(self, context: Sequence[int] = ()) -> Pieces:
        return _BytePieces(self.enc.decode_single_token_bytes, context)

    def _config(self) -> dict:
        return {}

    def to_hf(self) -> HFTokenizer:
        return tiktoken_to_hf(self.enc)


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with Hugging Face `tokenizers` (GPT-2 style, works offline).

    Saved as the library's own `tokenizer.json`. The literal `<|endoftext|>` encodes to EOT.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer, name: str):
        self.hf = hf_tokenizer
        self.name = name
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eot_token = hf_tokenizer.token_to_id(EOT_TEXT)

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        # 256 byte symbols + the EOT special token are the minimum vocabulary
        if vocab_size < 257:
            raise InputError(f"bpe vocabulary size must be at least 257 (256 bytes + EOT), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(_chunks(_iter_texts(text)), trainer)
        return cls(hf, f"bpe:{vocab_size}")

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        _check_unknown(unknown)  # byte-level: every string is representable
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def pieces(self, context: Sequence[int] = ()) -> Pieces:
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        special = {self.eot_token}

        def token_bytes(i: int) -> bytes:
            text = self.hf.id_to_token(i)
            return text.encode("utf-8") if i in special else bytes(byte_of[c] for c in text)

        return _BytePieces(token_bytes, context)

    def _config(self) -> dict:
        return {"file": HF_FILE}

    def to_hf(self) -> HFTokenizer:
        return self.hf

    def save(self, dir: Path) -> None:
        super().save(dir)
        self.hf.save(str(Path(dir) / HF_FILE))


class Pieces:
    """Incremental decoding: ``next(id)`` -> the text the token adds (``Tokenizer.pieces``)."""

    def next(self, token: int) -> str:
        raise NotImplementedError

    def all(self, ids: Iterable[int]) -> list[str]:
        return [self.next(int(i)) for i in ids]


class _PrefixPieces(Pieces):
    def __init__(self, tokenizer: Tokenizer, context: Sequence[int]) -> None:
        self.tokenizer, self.ids = tokenizer, list(context)
        self.length = len(tokenizer.decode(self.ids))

    def next(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        piece, self.length = text[self.length :], len(text)
        return piece


class _MapPieces(Pieces):
    """Pieces that depend on the token and the token before it only."""

    def __init__(self, piece, prev: int | None = None) -> None:
        self.piece, self.prev = piece, prev

    def next(self, token: int) -> str:
        out = self.piece(int(token), self.prev)
        self.prev = int(token)
        return out


class _BytePieces(Pieces):
    """Byte-level tokens: a UTF-8 character split across tokens belongs to the token that completes it."""

    def __init__(self, token_bytes, context: Sequence[int]) -> None:
        self.token_bytes = token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in context:
            self.decoder.decode(token_bytes(int(i)))

    def next(self, token: int) -> str:
        return self.decoder.decode(self.token_bytes(int(token)))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the
    other 68 bytes to characters from U+0100 on (what the `tokenizers` ByteLevel steps expect)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in table)
    table.update((b, chr(256 + i)) for i, b in enumerate(extra))
    return table


def _merge_of(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The pair whose merge made ``token``: byte-pair encode it with the merges ranked before it."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= limit:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is not the merge of two earlier tokens; not a byte-pair vocabulary")
    return parts[0], parts[1]


def tiktoken_to_hf(enc) -> HFTokenizer:
    """A tiktoken byte-level BPE Encoding (GPT-2's) as a `tokenizers` Tokenizer with the same ids.

    tiktoken stores only ranks (token bytes -> id); the merge list `tokenizers` needs is recovered
    by replaying BPE on each token with the merges ranked before it. The split regex is tiktoken's
    own; special tokens keep their ids.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    ranks: dict[bytes, int] = enc._mergeable_ranks  # tiktoken exposes no public accessor
    char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(char[x] for x in b)

    in_order = sorted(ranks, key=ranks.__getitem__)
    merges = [(text(a), text(b)) for a, b in (_merge_of(ranks, t) for t in in_order if len(t) > 1)]
    hf = HFTokenizer(models.BPE({text(t): r for t, r in ranks.items()}, merges, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    for name, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        if hf.token_to_id(name) != i:
            raise ValueError(f"special token {name!r} has id {i} in tiktoken but {hf.token_to_id(name)} once converted")
    return hf


def _chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterable[str]:
    """Cut long strings into ~64 KiB pieces at line breaks so the BPE trainer can parallelise."""
    for text in texts:
        start = 0
        while start < len(text):
            end = text.find("\n", start + size)
            end = len(text) if end == -1 else end + 1
            yield text[start:end]
            start = end


TOKENIZER_SPECS = "'char', 'word', 'gpt2' or 'bpe:N' (e.g. bpe:4096)"


def check_tokenizer_spec(spec: str) -> None:
    """InputError unless ``spec`` has one of the forms ``build_tokenizer`` reads (nothing is built)."""
    if not isinstance(spec, str) or not re.fullmatch(r"char|word|gpt2|bpe:\d+", spec):
        raise InputError(f"unknown tokenizer spec {spec!r}; expected {TOKENIZER_SPECS}")


def build_tokenizer(
    spec: str, train_text: str | Iterable[str] | None = None, *, words: Sequence[str] | None = None
) -> Tokenizer:
    """Build a tokenizer from a spec: "char", "word", "gpt2" or "bpe:N".

    char/word/bpe learn their vocabulary from `train_text` (a string or an iterable of
    strings); "word" may instead be given the explicit `words` list. gpt2 needs neither.
    """
    kind, _, arg = spec.partition(":")
    if kind == "gpt2" and not arg:
        return GPT2Tokenizer()
    if kind == "word" and not arg and words is not None:
        return WordTokenizer(words)
    if train_text is None:
        if kind in ("char", "word", "bpe"):
            raise InputError(f"tokenizer {spec!r} needs training text")
        raise InputError(f"unknown tokenizer spec {spec!r}; expected {TOKENIZER_SPECS}")
    if kind == "char" and not arg:
        return CharTokenizer.train(train_text)
    if kind == "word" and not arg:
        return WordTokenizer.train(train_text)
    if kind == "bpe" and arg.isdigit():
        return BPETokenizer.train(train_text, int(arg))
    raise InputError(f"unknown tokenizer spec {spec!r}; expected {TOKENIZER_SPECS}")


def load_tokenizer(dir: Path) -> Tokenizer:
    """Rebuild the tokenizer that `Tokenizer.save(dir)` wrote."""
    dir = Path(dir)
    path = dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer in {dir} (missing {META_FILE})")
    cfg = read_json(path)  # InputError naming the file when it is damaged or not an object
    kind = cfg.get("kind")
    try:
        return _tokenizer_of(kind, cfg, dir)
    except KeyError as e:
        raise InputError(f"{path}: the key {e} is missing; the file is damaged or not ours") from None
    except (TypeError, AttributeError) as e:
        raise InputError(f"{path}: malformed ({e})") from None


def _tokenizer_of(kind: Any, cfg: dict, dir: Path) -> Tokenizer:
    if kind == "char":
        return CharTokenizer(cfg["chars"])
    if kind == "word":
        return WordTokenizer(cfg["words"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        file = dir / cfg["file"]
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises a bare Exception for a missing or damaged file
            raise InputError(f"{file}: cannot be read as a tokenizer ({e}); re-run `gptv prepare`") from None
        return BPETokenizer(hf, cfg["name"])
    raise InputError(f"{dir / META_FILE}: unknown tokenizer kind {kind!r}")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
