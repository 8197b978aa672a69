import json

import pytest

from gptvariants.data.tokenizers import EOT_TEXT, CharTokenizer, WordTokenizer, build_tokenizer, load_tokenizer

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


# ---------------------------------------------------------------- Hugging Face form (gptv export)


def _hf_round_trip(tok, texts, id_seqs=()):
    """The `tokenizers` form of `tok` gives the same ids for each text and the same text for each id sequence."""
    hf = tok.to_hf()
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    for ids in id_seqs:
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids), ids
    return hf


def test_char_to_hf_keeps_every_character():
    tok = build_tokenizer("char", TEXT + " \t\r\u00e9\u0301\U0001f600")  # a combining accent and a non-BMP character
    _hf_round_trip(tok, [TEXT, "  \t\n\n é\u0301 \U0001f600 \r\n", ""])


def test_word_to_hf_round_trips_any_id_sequence():
    import random

    tok = WordTokenizer(["ba", "do", "kiru", "a.b", "##x", "x##"])
    rng = random.Random(0)
    seqs = [[rng.randrange(tok.vocab_size) for _ in range(rng.randrange(12))] for _ in range(300)]
    hf = _hf_round_trip(tok, [tok.decode(s) for s in seqs] + ["ba  do\t\n kiru <|endoftext|> do\n"], seqs)
    assert hf.token_to_id(EOT_TEXT) == tok.eot_token
    bad = WordTokenizer(["a<|endoftext|>b"])
    with pytest.raises(ValueError, match="contains"):
        bad.to_hf()


def test_bpe_to_hf_is_its_own_tokenizer():
    tok = build_tokenizer("bpe:300", TEXT)
    _hf_round_trip(tok, [TEXT, "ünïcode ✓\r\n\t" + EOT_TEXT])


def test_tiktoken_vocabulary_converts_exactly():
    """GPT-2's tiktoken files cannot be fetched offline, so a small byte-level BPE trained by tiktoken's
    own reference trainer, with GPT-2's split pattern, stands in for them."""
    tiktoken = pytest.importorskip("tiktoken")
    educational = pytest.importorskip("tiktoken._educational")
    from gptvariants.data.tokenizers import GPT2Tokenizer

    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ranks = educational.bpe_train(TEXT * 3, 300, pat, visualise=None)
    enc = tiktoken.Encoding("test", pat_str=pat, mergeable_ranks=ranks, special_tokens={EOT_TEXT: len(ranks)})
    tok = GPT2Tokenizer(enc)
    assert tok.eot_token == len(ranks)
    _hf_round_trip(tok, [TEXT, "  don't 123456 ünïcode ✓\r\n\t\n  x" + EOT_TEXT + "tail", ""])
