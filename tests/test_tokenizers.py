import json

import pytest

from gptvariants.tokenizers import EOT_TEXT, CharTokenizer, WordTokenizer, build_tokenizer, load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def test_char_round_trip_and_save(tmp_path):
    tok = build_tokenizer("char", TEXT)
    assert tok.vocab_size == len(set(TEXT)) and tok.eot_token is None
    assert tok.chars == sorted(tok.chars)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and max(ids) < tok.vocab_size
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(TEXT) == ids


def test_char_unknown_error_and_skip():
    tok = build_tokenizer("char", "abc ")
    with pytest.raises(ValueError) as e:
        tok.encode("ab xz")
    assert "'x'" in str(e.value) and "'z'" in str(e.value)
    assert tok.decode(tok.encode("ab xz", unknown="skip")) == "ab "
    with pytest.raises(ValueError):
        tok.encode("ab", unknown="ignore")


def test_word_round_trip_eot_and_unknown(tmp_path):
    tok = WordTokenizer(["ba", "do", "kiru"])
    assert tok.eot_token == 3 and tok.vocab_size == 4
    ids = [0, 2, 1, 3, 3, 1, 0]
    text = tok.decode(ids)
    assert text == "ba kiru do\n\ndo ba"
    assert tok.encode(text) == ids
    assert tok.encode(f"ba  do {EOT_TEXT} kiru") == [0, 1, 3, 2]
    with pytest.raises(ValueError, match="zz"):
        tok.encode("ba zz")
    assert tok.encode("ba zz do", unknown="skip") == [0, 1]
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_meta.json").read_text())["kind"] == "word"
    assert load_tokenizer(tmp_path).encode(text) == ids
    built = build_tokenizer("word", "b a b c")
    assert built.words == ["a", "b", "c"]


def test_bpe_trains_round_trips_and_reloads(tmp_path):
    tok = build_tokenizer("bpe:300", TEXT)
    assert tok.name == "bpe:300" and tok.vocab_size <= 300 and tok.eot_token is not None
    sample = "Before we speak, hear me: ünïcode ✓ too\n"  # unseen characters still encode (byte level)
    ids = tok.encode(sample + EOT_TEXT)
    assert ids[-1] == tok.eot_token
    assert tok.decode(ids) == sample + EOT_TEXT
    # merges were learnt: common text is shorter than its bytes
    assert len(tok.encode(TEXT)) < 0.6 * len(TEXT.encode())
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = load_tokenizer(tmp_path)
    assert again.name == "bpe:300" and again.encode(sample) == tok.encode(sample)
    with pytest.raises(ValueError, match="at least 257"):
        build_tokenizer("bpe:100", TEXT)


def test_bad_spec_and_missing_text():
    with pytest.raises(ValueError, match="bpe:N"):
        build_tokenizer("sentencepiece", TEXT)
    with pytest.raises(ValueError, match="training text"):
        build_tokenizer("char")
    with pytest.raises(FileNotFoundError):
        load_tokenizer("/nonexistent/dir")


def test_gpt2_works_or_fails_clearly():
    try:
        tok = build_tokenizer("gpt2")
    except RuntimeError as e:
        msg = str(e)
        assert "GPT-2 vocabulary" in msg and "char" in msg and "bpe:N" in msg
        pytest.skip("GPT-2 vocabulary not available offline")
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    ids = tok.encode("hello world" + EOT_TEXT)
    assert ids[-1] == 50256 and tok.decode(ids) == "hello world" + EOT_TEXT
