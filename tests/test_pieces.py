"""Incremental decoding (Tokenizer.pieces): each token's share of the text, in constant time per token."""

import pytest
from conftest import SHARED_DATA

from gptvariants.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n héllo wörld — ✓ 日本語 <|endoftext|> end\n"


def _check(tok: Tokenizer, ids: list[int], byte_level: bool = False) -> None:
    full = tok.decode(ids)
    for cut in sorted({0, 1, len(ids) // 3, len(ids) - 1}):
        ctx, new = ids[:cut], ids[cut:]
        pieces = tok.pieces(ctx).all(new)
        assert len(pieces) == len(new)
        assert "".join(pieces) == full[len(tok.decode(ctx)) :]
        if not byte_level:  # the generic prefix decoder gives the same pieces, token by token (byte-level
            # prefixes can end inside a character, which decodes to a replacement character there)
            assert pieces == Tokenizer.pieces(tok, ctx).all(new)


def test_char_pieces():
    tok = CharTokenizer.train(TEXT)
    _check(tok, tok.encode(TEXT))


def test_word_pieces_keep_spaces_and_line_breaks():
    tok = WordTokenizer(["the", "cat", "sat"])
    ids = [0, 1, tok.eot_token, tok.eot_token, 2, 0, tok.eot_token, 1]
    assert tok.pieces([]).all(ids) == ["the", " cat", "\n", "\n", "sat", " the", "\n", "cat"]
    _check(tok, ids)


def test_byte_level_bpe_pieces_split_characters_across_tokens():
    text = TEXT * 3
    tok = BPETokenizer.train(text, 280)  # few merges: multi-byte characters span several tokens
    ids = tok.encode(text)
    pieces = tok.pieces([]).all(ids)
    assert "" in pieces  # a token that ends inside a UTF-8 character adds no text yet
    _check(tok, ids, byte_level=True)


@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare/input.txt").is_file(), reason="needs ../shared/data")
def test_bpe_pieces_on_shakespeare():
    text = (SHARED_DATA / "tinyshakespeare/input.txt").read_text(encoding="utf-8")[:50_000]
    tok = BPETokenizer.train(text, 512)
    _check(tok, tok.encode(text[:5000]), byte_level=True)
