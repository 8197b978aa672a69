import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptvariants.data import TokenDataset, open_sets, prepare, token_dtype, write_hf_split
from gptvariants.synthetic import SyntheticLanguage
from gptvariants.tokenizers import build_tokenizer

SHAKESPEARE = Path(__file__).parents[2] / "shared/data/tinyshakespeare/input.txt"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    prepare("synthetic:tiny", out, seed=3)
    return out


def file_hash(*paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_prepare_synthetic(synth_dir):
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert meta["format"] == 1 and meta["tokenizer"] == "word" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 65 and meta["eot_token"] == 64
    assert meta["hash"] == file_hash(synth_dir / "train.bin", synth_dir / "val.bin")
    assert 40_000 <= meta["train_tokens"] < 42_000 and 8_000 <= meta["val_tokens"] < 10_000
    ds = TokenDataset(synth_dir)
    val = ds.split("val")
    assert len(val) == meta["val_tokens"] and val[-1] == 64
    assert meta["val_words"] == int((val != 64).sum())
    lang = ds.synthetic
    assert isinstance(lang, SyntheticLanguage) and lang.words == ds.tokenizer.words
    assert meta["synthetic"]["entropy_rate_val"] == pytest.approx(lang.entropy_rate(np.asarray(val)), rel=1e-6)
    assert meta["synthetic"]["preset"] == "tiny" and meta["synthetic"]["seed"] == 3
    # deterministic from the seed
    again = prepare("synthetic:tiny", synth_dir.parent / "synth_again", seed=3)
    assert again["hash"] == meta["hash"]
    with pytest.raises(ValueError, match="word tokenizer"):
        prepare("synthetic:tiny", synth_dir.parent / "x", tokenizer="char")


def test_prepare_text_file(tmp_path):
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
    src = tmp_path / "corpus.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "data"
    meta = prepare(f"text:{src}", out)
    n = int(len(text) * 0.9)
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(set(text)) and meta["eot_token"] is None
    assert meta["train_tokens"] == n and meta["val_tokens"] == len(text) - n
    assert meta["train_bytes"] == len(text[:n].encode()) and meta["val_words"] == len(text[n:].split())
    ds = TokenDataset(out)
    assert ds.tokenizer.decode(ds.split("train")) == text[:n]
    assert ds.tokenizer.decode(ds.split("val")) == text[n:]
    assert ds.synthetic is None and ds.split("train").dtype == np.uint16
    assert meta["hash"] == file_hash(out / "train.bin", out / "val.bin")
    assert not list(out.glob("*.tmp"))

    bpe = prepare(f"text:{src}", tmp_path / "bpe", tokenizer="bpe:300")
    ds = TokenDataset(tmp_path / "bpe")
    assert bpe["tokenizer"] == "bpe:300" and ds.tokenizer.decode(ds.split("val")) == text[n:]


def test_prepare_folder_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("second file", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    m1 = prepare(f"text:{tmp_path}", tmp_path / "o1", val_fraction=0.5)
    m2 = prepare(f"text:{tmp_path}/*.txt", tmp_path / "o2", val_fraction=0.5)
    assert m1["hash"] == m2["hash"]
    ds = TokenDataset(tmp_path / "o1")
    full = ds.tokenizer.decode(np.concatenate([ds.split("train"), ds.split("val")]))
    assert full == "first file\nsecond file"  # sorted, newline-joined, .md ignored
    with pytest.raises(FileNotFoundError):
        prepare(f"text:{tmp_path}/nothing*.txt", tmp_path / "o3")


def test_non_utf8_error_and_replace(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"caf\xc3\xa9 ok\n" + b"na\xefve\n" * 20)
    with pytest.raises(ValueError) as e:
        prepare(f"text:{src}", tmp_path / "out")
    msg = str(e.value)
    assert str(src) in msg and "byte offset 11" in msg and "--errors replace" in msg
    assert not (tmp_path / "out" / "meta.json").exists()
    meta = prepare(f"text:{src}", tmp_path / "out", errors="replace")
    assert "\ufffd" in TokenDataset(tmp_path / "out").tokenizer.chars and meta["train_tokens"] > 0


def test_unknown_source_lists_forms(tmp_path):
    with pytest.raises(ValueError, match="text:PATH.*shakespeare"):
        prepare("enwik8", tmp_path)


def test_sample_batch_reproducible_and_shifted(synth_dir):
    ds = TokenDataset(synth_dir)
    g = torch.Generator().manual_seed(123)
    state = g.get_state()
    x, y, s = ds.sample_batch("train", 8, 16, g)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64 and s is None
    assert torch.equal(x[:, 1:], y[:, :-1])
    g2 = torch.Generator()
    g2.set_state(state)
    x2, y2, _ = ds.sample_batch("train", 8, 16, g2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # offsets come from exactly this randint call, so the windows can be located in the data
    offsets = torch.randint(len(ds.split("train")) - 16, (8,), generator=torch.Generator().manual_seed(123))
    data = torch.from_numpy(ds.split("train").astype(np.int64))
    for b, o in enumerate(offsets.tolist()):
        assert torch.equal(x[b], data[o : o + 16]) and torch.equal(y[b], data[o + 1 : o + 17])
    assert not torch.equal(x, ds.sample_batch("train", 8, 16, g)[0])


def write_sets(dir: Path, data_hash: str, split_len: int, k: int = 3) -> np.ndarray:
    """Candidate sets in the targets-module format; row i holds (i % 7, i + 1) and padding."""
    dir.mkdir(parents=True, exist_ok=True)
    sentinel = np.iinfo(np.uint16).max
    rows = np.full((split_len, k), sentinel, dtype=np.uint16)
    rows[:, 0] = np.arange(split_len) % 7
    rows[:, 1] = (np.arange(split_len) + 1) % 60000
    rows.tofile(dir / "train.bin")
    (dir / "meta.json").write_text(json.dumps({"k": k, "dtype": "uint16", "data_hash": data_hash}))
    return rows


def test_sets_alignment_and_hash_check(synth_dir, tmp_path):
    ds = TokenDataset(synth_dir)
    n = len(ds.split("train"))
    write_sets(tmp_path / "sets", ds.meta["hash"], n)
    sets = ds.open_sets(tmp_path / "sets", "train")
    assert sets.shape == (n, 3)
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(n - 10, (4,), generator=torch.Generator().manual_seed(5))
    x, y, s = ds.sample_batch("train", 4, 10, g, sets=sets)
    assert s.shape == (4, 10, 3) and s.dtype == torch.int64
    pos = offsets[:, None] + torch.arange(10)  # position of x[b, i] in the split
    assert torch.equal(s[..., 0], pos % 7) and torch.equal(s[..., 1], pos + 1)
    assert (s[..., 2] == -1).all()

    write_sets(tmp_path / "other", "0" * 64, n)
    with pytest.raises(ValueError, match="other data"):
        open_sets(tmp_path / "other", "train", ds.meta["hash"])
    short = tmp_path / "short"
    write_sets(short, ds.meta["hash"], n - 5)
    with pytest.raises(ValueError, match="rows"):
        ds.sample_batch("train", 2, 8, g, sets=ds.open_sets(short, "train"))


def test_clear_errors(tmp_path, synth_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenDataset(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="gptv prepare"):
        TokenDataset(tmp_path / "half")
    ds = TokenDataset(synth_dir)
    n_val = len(ds.split("val"))
    with pytest.raises(ValueError, match=f"block_size {n_val} is larger than the val split \\({n_val} tokens\\)"):
        ds.sample_batch("val", 2, n_val, torch.Generator())
    ds.sample_batch("val", 2, n_val - 1, torch.Generator())  # the largest block that fits

    src = tmp_path / "t.txt"
    src.write_text("abcdefghij", encoding="utf-8")
    prepare(f"text:{src}", tmp_path / "tiny", val_fraction=0.95)  # 10 chars -> empty train split
    with pytest.raises(ValueError, match="train split .* is empty"):
        TokenDataset(tmp_path / "tiny").split("train")
    # a .bin that does not match meta.json (e.g. an interrupted re-prepare) is refused
    (tmp_path / "tiny" / "train.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="does not match meta.json"):
        TokenDataset(tmp_path / "tiny")


def test_hf_split_writer_streams_to_memmap(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = ["the cat sat\n", "on the mat\n", ""] * 50
    tok = build_tokenizer("bpe:280", "".join(texts))
    stats = write_hf_split(datasets.Dataset.from_dict({"text": texts}), tok, tmp_path / "train.bin", "train", append_eot=True)
    ids = np.fromfile(tmp_path / "train.bin", dtype=token_dtype(tok.vocab_size))
    expected = [i for t in texts for i in tok.encode(t) + [tok.eot_token]]
    assert ids.tolist() == expected
    assert stats == {"train_tokens": len(expected), "train_bytes": len("".join(texts).encode()), "train_words": 300}


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared Tiny Shakespeare not present")
def test_tiny_shakespeare_matches_nanogpt(tmp_path):
    meta = prepare(f"text:{SHAKESPEARE}", tmp_path)
    # the figures nanoGPT's shakespeare_char/prepare.py prints
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1003854, 111540)
    x, y, _ = TokenDataset(tmp_path).sample_batch("train", 12, 64, torch.Generator().manual_seed(0))
    assert x.shape == (12, 64) and int(x.max()) < 65


def test_offline_downloads_fail_clearly(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(RuntimeError, match="text:.*tinyshakespeare/input.txt"):
        prepare("shakespeare", tmp_path / "s")
    assert not (tmp_path / "s" / "meta.json").exists()

    datasets = pytest.importorskip("datasets")

    def no_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(RuntimeError, match="'wikitext-2'.*text:"):
        prepare("wikitext-2", tmp_path / "w")
