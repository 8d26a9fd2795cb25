"""Tokenizers: byte-level BPE (trained, saved, loaded; GPT-2's file formats) and characters."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scratchgpt.tokenizer import (EOT, BPETokenizer, CharTokenizer, bytes_to_unicode,
                                  load_tokenizer)

CORPUS = ["def add(a, b):\n    return a + b\n", "The café served crème brûlée. 東京 🙂🙃",
          "for i in range(10):\n    print(i * i)\n"] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300)


@settings(max_examples=60)
@given(text=st.text(max_size=60))
def test_bpe_round_trip_on_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")


def test_tokens_that_split_a_character_decode_to_its_bytes(bpe):
    text = "東京🙂 ünïcödé"
    ids = bpe.encode(text)
    pieces = [bpe.decode_bytes([i]) for i in ids]
    # some token holds only part of a multi-byte character ...
    assert any(_not_utf8(p) for p in pieces)
    # ... and the pieces' bytes still concatenate to the exact text
    assert b"".join(pieces) == text.encode("utf-8")
    assert "\ufffd" in bpe.decode(ids[:1]) or not _not_utf8(pieces[0])


def _not_utf8(b):
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_bpe_learns_merges_and_reserves_eot(bpe):
    assert bpe.vocab_size <= 300
    assert bpe.eot_id is not None and bpe.decode([bpe.eot_id]) == EOT
    assert bpe.encode(EOT) == [bpe.eot_id]
    # merges shorten frequent text well below one token per byte
    text = CORPUS[0]
    assert len(bpe.encode(text)) <= 0.6 * len(text.encode())


def test_bpe_save_load_gives_the_same_ids(bpe, tmp_path):
    bpe.save(tmp_path)
    back = load_tokenizer(tmp_path)
    text = "".join(CORPUS[:3]) + " unseen wörds"
    assert back.encode(text) == bpe.encode(text)
    assert back.vocab_size == bpe.vocab_size


def gpt2_style_files(tmp_path, vocab_name, merges_name):
    """A miniature GPT-2 vocabulary in GPT-2's file formats: the 256 byte symbols, two merges
    and <|endoftext|> last (as GPT-2's id 50256 is)."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab["Ġt"] = 256
    vocab["Ġth"] = 257
    vocab[EOT] = 258
    (tmp_path / vocab_name).write_text(json.dumps(vocab))
    (tmp_path / merges_name).write_text("#version: 0.2\nĠ t\nĠt h\n")
    return tmp_path


@pytest.mark.parametrize("names", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
def test_gpt2_files_load_from_disk(tmp_path, names):
    tok = load_tokenizer(gpt2_style_files(tmp_path, *names))
    assert tok.vocab_size == 259 and tok.eot_id == 258
    ids = tok.encode("a thin " + EOT)
    # " th" is one merged token (257); other bytes are their own symbols (here id = byte value)
    assert ids == [ord("a"), 257, ord("i"), ord("n"), ord(" "), 258]
    assert tok.decode(ids) == "a thin " + EOT


def test_char_tokenizer_round_trip_and_unknown_character(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.vocab_size == len(set("hello world"))
    assert tok.decode(tok.encode("world hello")) == "world hello"
    assert tok.encode("de") == [tok.chars.index("d"), tok.chars.index("e")]
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).chars == tok.chars
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("z")


def test_bad_arguments():
    with pytest.raises(ValueError, match="--vocab-size, an integer >= 257"):
        BPETokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer("/nonexistent/tokenizer")
    with pytest.raises(ValueError, match="ids"):
        CharTokenizer.train("ab").decode(np.array([5]))
    with pytest.raises(ValueError, match="vocab_size"):
        CharTokenizer.train("abcdef", vocab_size=3)
