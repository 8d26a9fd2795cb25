"""Token shards (llm.c's format), the default corpus, the train/val split, seeded batches."""
import os

import numpy as np
import pytest

from scratchgpt.data import (HEADER_INTS, BatchSampler, default_corpus_files, load_split,
                             prepare_data, read_documents, read_shard, split_train_val,
                             write_shard)
from scratchgpt.tokenizer import CharTokenizer


def test_shard_is_llmc_format_uint16(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1001)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens, vocab_size=50257)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_INTS * 4], dtype=np.int32)
    assert header[:3].tolist() == [20240520, 1, 1001] and not header[3:].any()
    assert len(raw) == HEADER_INTS * 4 + 2 * 1001                 # uint16 tokens
    np.testing.assert_array_equal(np.frombuffer(raw[HEADER_INTS * 4:], dtype=np.uint16), tokens)
    back = read_shard(path)
    assert isinstance(back, np.memmap) and back.dtype == np.uint16
    np.testing.assert_array_equal(back, tokens)


def test_large_vocabulary_uses_uint32(tmp_path):
    tokens = np.array([0, 70000, 5])
    write_shard(tmp_path / "a.bin", tokens)
    assert np.fromfile(tmp_path / "a.bin", dtype=np.int32, count=3).tolist() == [20240801, 7, 3]
    back = read_shard(tmp_path / "a.bin")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, tokens)


def test_corrupt_shards_are_rejected(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(10))
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="header says 10 tokens"):
        read_shard(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(np.int32(123).tobytes() + data[4:])
    with pytest.raises(ValueError, match="wrong magic number 123"):
        read_shard(tmp_path / "magic.bin")
    (tmp_path / "version.bin").write_bytes(data[:4] + np.int32(7).tobytes() + data[8:])
    with pytest.raises(ValueError, match="wrong version 7 for magic 20240520"):
        read_shard(tmp_path / "version.bin")
    (tmp_path / "tiny.bin").write_bytes(data[:100])
    with pytest.raises(ValueError, match="truncated: 100 bytes"):
        read_shard(tmp_path / "tiny.bin")
    with pytest.raises(ValueError, match="tokens"):
        write_shard(tmp_path / "neg.bin", np.array([-1, 2]))


def test_default_corpus_is_the_python_stdlib():
    files = default_corpus_files()
    assert any(f.endswith(os.sep + "os.py") for f in files)
    assert any(f.endswith(os.path.join("json", "__init__.py")) for f in files)
    assert all(f.endswith(".py") for f in files)
    assert not any(f"{os.sep}test{os.sep}" in f or "site-packages" in f for f in files)
    docs = read_documents(files, max_bytes=100_000)
    assert sum(map(len, docs)) == 100_000


def test_prepare_data_splits_and_round_trips(tmp_path):
    docs = ["abc abc\n" * 50, "cab bac\n" * 50]
    tok = CharTokenizer.train(docs)
    train, val = prepare_data(docs, tok, tmp_path, val_fraction=0.1)
    stream = np.concatenate([train, val])
    assert tok.decode(stream) == "".join(docs)          # char tokenizer: no separator token
    assert len(val) == int(0.1 * len(stream))
    np.testing.assert_array_equal(load_split(tmp_path, "val"), val)
    assert split_train_val(np.arange(10), 0.3)[1].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(np.arange(10), 1.5)


def test_batches_are_windows_with_next_token_targets_and_resume_exactly():
    tokens = np.arange(1000) % 251
    a = BatchSampler(tokens, batch_size=4, block_size=8, seed=3)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    x, y = a.next_batch()
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    starts = x[:, 0]
    np.testing.assert_array_equal(x, (starts[:, None] + np.arange(8)) % 251)
    b = BatchSampler(tokens, batch_size=4, block_size=8, seed=999)
    b.load_state_dict(state)
    x2, y2 = b.next_batch()
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="block_size"):
        BatchSampler(np.arange(5), 1, 8)


def test_non_utf8_text_names_the_file_and_the_byte(tmp_path):
    from scratchgpt.data import read_text
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte 0xe9 at offset 3 \(.*latin1.txt"):
        read_documents([str(path)])
    assert read_text(str(path), errors="replace") == "caf\ufffd ok"
