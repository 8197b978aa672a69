import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from gptvariants.apps.cli.main import main
from gptvariants.common.errors import InputError
from gptvariants.data.dataset import TokenDataset, open_sets, token_dtype
from gptvariants.data.prepare import prepare, write_hf_split
from gptvariants.data.synthetic import SyntheticLanguage
from gptvariants.data.tokenizers import build_tokenizer

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


def test_windows_are_shifted_views_of_the_split(synth_dir):
    ds = TokenDataset(synth_dir)
    offsets = np.array([0, 5, len(ds.split("train")) - 17])
    x, y, s = ds.windows("train", offsets, 16)
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64 and s is None
    data = torch.from_numpy(ds.split("train").astype(np.int64))
    for b, o in enumerate(offsets.tolist()):
        assert torch.equal(x[b], data[o : o + 16]) and torch.equal(y[b], data[o + 1 : o + 17])


def write_sets(dir: Path, data_hash: str, split_len: int, k: int = 3) -> np.ndarray:
    """Candidate sets in the targets-module format; row i holds (i % 7, i + 1) and padding."""
    dir.mkdir(parents=True, exist_ok=True)
    sentinel = np.iinfo(np.uint16).max
    rows = np.full((split_len, k), sentinel, dtype=np.uint16)
    rows[:, 0] = np.arange(split_len) % 7
    rows[:, 1] = (np.arange(split_len) + 1) % 60000
    rows.tofile(dir / "train.bin")
    (dir / "meta.json").write_text(
        json.dumps({"k": k, "dtype": "uint16", "data_hash": data_hash, "rules": {"select": "top"}})
    )
    return rows


def test_sets_alignment_and_hash_check(synth_dir, tmp_path):
    ds = TokenDataset(synth_dir)
    n = len(ds.split("train"))
    write_sets(tmp_path / "sets", ds.meta["hash"], n)
    sets = open_sets(tmp_path / "sets", "train", ds.meta["hash"])  # ids = positions: no vocabulary check
    assert sets.shape == (n, 3)
    offsets = torch.randint(n - 10, (4,), generator=torch.Generator().manual_seed(5))
    x, y, s = ds.windows("train", offsets.numpy(), 10, sets=sets)
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
        ds.windows("train", np.array([0, 1]), 8, sets=open_sets(short, "train", ds.meta["hash"]))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenDataset(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="gptv prepare"):
        TokenDataset(tmp_path / "half")

    src = tmp_path / "t.txt"
    src.write_text("abcdefghij", encoding="utf-8")
    with pytest.raises(InputError, match="gives 0 train token.*at least 2 in each split"):
        prepare(f"text:{src}", tmp_path / "tiny", val_fraction=0.95)  # 10 chars -> empty train split
    assert not (tmp_path / "tiny").exists()  # refused when written, and the folder it made removed
    prepare(f"text:{src}", tmp_path / "tiny", val_fraction=0.5)
    meta = json.loads((tmp_path / "tiny" / "meta.json").read_text())  # a dataset damaged later is still caught
    (tmp_path / "tiny" / "meta.json").write_text(json.dumps({**meta, "train_tokens": 0}))
    (tmp_path / "tiny" / "train.bin").write_bytes(b"")
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
    stats = write_hf_split(
        datasets.Dataset.from_dict({"text": texts}), tok, tmp_path / "train.bin", "train", append_eot=True
    )
    ids = np.fromfile(tmp_path / "train.bin", dtype=token_dtype(tok.vocab_size))
    expected = [i for t in texts for i in tok.encode(t) + [tok.eot_token]]
    assert ids.tolist() == expected
    assert stats == {"train_tokens": len(expected), "train_bytes": len("".join(texts).encode()), "train_words": 300}


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared Tiny Shakespeare not present")
def test_tiny_shakespeare_matches_nanogpt(tmp_path):
    meta = prepare(f"text:{SHAKESPEARE}", tmp_path)
    # the figures nanoGPT's shakespeare_char/prepare.py prints
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1003854, 111540)
    x, y, _ = TokenDataset(tmp_path).windows("train", np.arange(0, 1_000_000, 100_000), 64)
    assert x.shape == (10, 64) and int(x.max()) < 65


def test_offline_downloads_fail_clearly(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(RuntimeError, match="gptv prepare text:PATH --out DATA") as e:
        prepare("shakespeare", tmp_path / "s")
    assert "shared" not in str(e.value) and "../" not in str(e.value)  # no development path
    assert not (tmp_path / "s" / "meta.json").exists()

    datasets = pytest.importorskip("datasets")

    def no_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(RuntimeError, match="'wikitext-2'.*text:"):
        prepare("wikitext-2", tmp_path / "w")


# ----------------------------------------------------------------------------- text folders as users have them


def test_prepare_folder_skips_hidden_binary_and_duplicate_files_and_normalises_text(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_bytes("\ufefffirst line\r\nsecond line\r\n".encode())  # BOM and CRLF (Windows)
    (src / "b.txt").write_bytes(b"old mac\rline ends\r")  # bare CR
    (src / "c.txt").write_bytes(b"first line\nsecond line\n")  # a.txt once normalised
    (src / ".notes.txt").write_text("hidden")
    (src / "._a.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")  # hidden and binary
    (src / "blob.txt").write_bytes(b"GIF89a\x00\x01binary")
    meta = prepare(f"text:{src}", tmp_path / "out", val_fraction=0.5)
    text = "first line\nsecond line\nold mac\nline ends\n"
    ds = TokenDataset(tmp_path / "out")
    assert ds.tokenizer.decode(np.concatenate([ds.split("train"), ds.split("val")])) == text
    assert "\r" not in ds.tokenizer.chars and "\ufeff" not in ds.tokenizer.chars
    assert meta["notes"] == [
        "skipped 2 hidden files: ._a.txt, .notes.txt",
        "skipped 1 binary (NUL bytes) file: blob.txt",
        "skipped 1 duplicate (same text as an earlier file) file: c.txt (= a.txt)",
        "stripped the byte-order mark of 1 file: a.txt",
        "turned \\r\\n and \\r line ends into \\n in 2 files: a.txt, b.txt",
    ]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["notes"] == meta["notes"]


def test_a_named_binary_file_is_refused_and_a_folder_of_nothing_says_why(tmp_path):
    blob = tmp_path / "image.txt"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=re.escape(f"{blob} is not a text file (a NUL byte at byte offset 8)")):
        prepare(f"text:{blob}", tmp_path / "out")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / ".hidden.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no text files .*skipped 1 hidden file: .hidden.txt"):
        prepare(f"text:{tmp_path / 'f'}", tmp_path / "out")


def test_files_follow_the_umask(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world, some text\n" * 20)
    old = os.umask(0o027)
    try:
        prepare(f"text:{src}", tmp_path / "out")
    finally:
        os.umask(old)
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer_meta.json"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o640, name


# ----------------------------------------------------------------------------- damaged datasets


@pytest.fixture
def copy_of(synth_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_dir, out)
    return out


def test_token_ids_outside_the_vocabulary_are_refused_naming_the_file(copy_of):
    TokenDataset(copy_of)
    raw = bytearray((copy_of / "val.bin").read_bytes())
    raw[2 * 1000 : 2 * 1001] = np.array([65000], np.uint16).tobytes()  # a flipped byte: id 65000 at position 1000
    (copy_of / "val.bin").write_bytes(bytes(raw))
    with pytest.raises(
        ValueError,
        match=re.escape(f"{copy_of / 'val.bin'}: token id 65000 at position 1000 is outside the vocabulary of 65"),
    ):
        TokenDataset(copy_of)


def test_a_vocabulary_smaller_than_the_ids_is_refused(copy_of):
    meta = json.loads((copy_of / "meta.json").read_text())
    meta["vocab_size"], meta["eot_token"] = 40, 39
    (copy_of / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError,
        match=r"train.bin: token id 64 at position \d+ is outside the vocabulary of 40 "
        r"\(vocab_size in .*meta.json\)",
    ):
        TokenDataset(copy_of)


def test_the_id_check_runs_once_per_file_version(copy_of, monkeypatch):
    import gptvariants.data.dataset as D

    scans = []
    real = D.np.memmap
    monkeypatch.setattr(D.np, "memmap", lambda path, **kw: scans.append(Path(path).name) or real(path, **kw))
    TokenDataset(copy_of)
    assert scans == ["train.bin", "val.bin"]
    TokenDataset(copy_of)  # the same versions: remembered in memory
    assert scans == ["train.bin", "val.bin"]
    os.utime(copy_of / "val.bin", ns=(1, 1))  # another version of val.bin
    TokenDataset(copy_of)
    assert scans == ["train.bin", "val.bin", "val.bin"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("meta.json", '{"format": 1, "vocab', "meta.json: not valid JSON (Unterminated string"),
        ("meta.json", "[1, 2]", "meta.json: expected a JSON object, found list [1, 2]"),
        ("meta.json", b"\xff\xfe", "meta.json: not UTF-8 text (byte 0xff at byte offset 0)"),
    ],
)
def test_damaged_meta_json_names_the_file(copy_of, name, content, message):
    path = copy_of / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=re.escape(f"{path}: " + message.split(": ", 1)[1])):
        TokenDataset(copy_of)


def test_meta_json_fields_are_checked(copy_of):
    meta = json.loads((copy_of / "meta.json").read_text())
    for key, value, message in [
        ("vocab_size", "65", "'vocab_size' expected an integer"),
        ("train_tokens", None, "'train_tokens'"),
        ("dtype", "int8", "'dtype' expected one of uint16, uint32"),
    ]:
        (copy_of / "meta.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ValueError, match=re.escape(f"{copy_of / 'meta.json'}: {message}")):
            TokenDataset(copy_of)
    del meta["hash"]
    (copy_of / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the key 'hash' is missing"):
        TokenDataset(copy_of)


def test_damaged_tokenizer_and_language_files_name_the_file(copy_of):
    (copy_of / "tokenizer_meta.json").write_text('{"kind": "word", "wor')
    with pytest.raises(ValueError, match=re.escape(f"{copy_of / 'tokenizer_meta.json'}: not valid JSON")):
        _ = TokenDataset(copy_of).tokenizer
    (copy_of / "tokenizer_meta.json").write_text('{"kind": "word"}')
    with pytest.raises(ValueError, match=re.escape(f"{copy_of / 'tokenizer_meta.json'}: the key 'words' is missing")):
        _ = TokenDataset(copy_of).tokenizer
    arrays = copy_of / "synthetic.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:500])  # cut short
    with pytest.raises(ValueError, match=re.escape(f"{arrays}: cannot be read")):
        _ = TokenDataset(copy_of).synthetic


def test_damaged_sets_meta_names_the_file(synth_dir, tmp_path):
    ds = TokenDataset(synth_dir)
    sets = tmp_path / "sets"
    write_sets(sets, ds.meta["hash"], len(ds.split("train")))
    meta_path = sets / "meta.json"
    meta = json.loads(meta_path.read_text())
    for content, message in [
        ('{"k": 3, "dtype', "not valid JSON"),
        (json.dumps({**meta, "k": "3"}), "'k' expected an integer >= 1, got '3'"),
        (json.dumps({k: v for k, v in meta.items() if k != "rules"}), "the key 'rules' is missing"),
        (json.dumps({**meta, "rules": [1]}), "'rules' expected a JSON object, got list"),
    ]:
        meta_path.write_text(content)
        with pytest.raises(ValueError, match=re.escape(f"{meta_path}: {message}")):
            ds.open_sets(sets, "train")


def test_a_data_folder_holds_only_the_documented_files(tmp_path):
    """prepare + train + eval leave the data folder as `gptv prepare` documented it: no hidden files."""
    data = tmp_path / "synthetic-tiny"
    assert main(["prepare", "synthetic:tiny", "--out", str(data)]) == 0
    run = tmp_path / "run"
    overrides = [f"--{k}={v}" for k, v in tiny_overrides(data, run, max_iters=2, eval_interval=2).items()]
    assert main(["train", "--data", str(data), "--out", str(run), *overrides]) == 0
    assert main(["eval", "--ckpt", str(run), "--data", str(data), "--num-samples", "0"]) == 0
    documented = {"train.bin", "val.bin", "meta.json", "tokenizer_meta.json", "synthetic.json", "synthetic.safetensors"}
    assert {p.name for p in data.iterdir()} == documented
