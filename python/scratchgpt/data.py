"""Data: text -> token shards on disk -> random batches.

Shards use llm.c's format: a header of 256 int32 (magic, version, token count, then zeros)
followed by the tokens. Version 1 (magic 20240520) stores uint16 tokens, enough for any
vocabulary up to 65,536 (GPT-2's 50,257 included); a larger vocabulary is written as llm.c's
version 7 (magic 20240801) with uint32 tokens. Shards are read memory-mapped, so a corpus
larger than memory trains without loading it.

`prepare_data` tokenises a text file, a folder of text files, or the default corpus (the
Python standard library's own .py sources on the running machine, present wherever Python
is), splits the token stream into train and val, and writes `train_000000.bin` and
`val_000000.bin`. A `BatchSampler` draws [B, T] windows from a seeded NumPy generator whose
state is saved in checkpoints, so a resumed run sees the same batches as an unbroken one.

Text must be UTF-8; a shard must be whole. Anything else raises BadFileError naming the file
(errors.py), and a path with nothing to read MissingFileError.
"""
import glob
import json
import os
import sys
import sysconfig

import numpy as np

from .errors import BadFileError, MissingFileError, UsageError

SHARD = "an llm.c token shard (magic 20240520 version 1, or 20240801 version 7)"

HEADER_INTS = 256
SHARD_FORMATS = {20240520: (1, np.uint16), 20240801: (7, np.uint32)}   # magic -> version, dtype
TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst", ".text", ".tsv", ".csv", ".json", ".html", ".c",
                 ".h", ".cpp", ".cu", ".js", ".ts", ".java", ".go", ".rs", ".sh", ".tex")


# ---------------------------------------------------------------------------- shard files
def write_shard(path, tokens, vocab_size=None):
    """Write tokens (1-D ints) as an llm.c shard; uint16 when every id (and vocab_size) fits.
    Atomic: written to a temporary file, then renamed."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens: expected a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2 ** 32):
        raise ValueError("tokens: ids must lie in [0, 2^32)")
    top = max(int(tokens.max()) + 1 if tokens.size else 0, vocab_size or 0)
    magic = 20240520 if top <= 2 ** 16 else 20240801
    version, dtype = SHARD_FORMATS[magic]
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (magic, version, tokens.size)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(dtype).tobytes())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if e.filename is None:            # a write() error names no file: name it
            e.filename = path
        raise


def read_shard(path):
    """The tokens of an llm.c shard, memory-mapped (uint16 or uint32)."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header.size != HEADER_INTS:
        raise BadFileError(f"truncated: {os.path.getsize(path)} bytes, shorter than the "
                           f"{HEADER_INTS * 4}-byte header", path, SHARD)
    magic, version, count = (int(v) for v in header[:3])
    if magic not in SHARD_FORMATS:
        raise BadFileError(f"wrong magic number {magic}", path, SHARD)
    if SHARD_FORMATS[magic][0] != version:
        raise BadFileError(f"wrong version {version} for magic {magic}", path, SHARD)
    dtype = SHARD_FORMATS[magic][1]
    expected = HEADER_INTS * 4 + count * np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise BadFileError(f"{what}: the header says {count} tokens ({expected} bytes), "
                           f"the file has {size} bytes", path, SHARD)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(count,))


def is_shard(path):
    if not os.path.isfile(path) or os.path.getsize(path) < HEADER_INTS * 4:
        return False
    magic = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    return magic in SHARD_FORMATS


def shard_paths(path, split):
    """The shards of a split in a folder: files named *{split}*.bin, sorted (read_shard says
    which of them is not a shard)."""
    return sorted(p for p in glob.glob(os.path.join(path, f"*{split}*.bin")) if os.path.isfile(p))


# ---------------------------------------------------------------------------- text sources
def default_corpus_files():
    """The Python standard library's .py sources on this machine (without its test suites and
    installed packages): about 15 MB of code and English docstrings, always present."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    if not files:
        raise MissingFileError("no .py files for the default corpus", root,
                               f"the standard library of {sys.executable}; or give --data")
    return files


def text_files(path):
    """The text files a --data path names: a file, or the text files under a folder."""
    what = "a text file, a folder of text files, or a folder of .bin shards"
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingFileError("no such file or folder", path, what)
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.lower().endswith(TEXT_SUFFIXES))
    if not files:
        raise MissingFileError("no text files in this folder", path,
                               f"files named *{', *'.join(TEXT_SUFFIXES[:4])}, ... ({what})")
    return files


def read_text(path, errors="strict"):
    """The text of a UTF-8 file; BadFileError naming the file and the first bad byte."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise BadFileError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}",
                           path, "UTF-8 text (convert it, e.g. iconv -f latin1 -t utf-8)") from None


def read_documents(files, max_bytes=None, errors="strict"):
    """The text of each file, up to max_bytes in all. Text must be UTF-8 (errors="replace":
    undecodable bytes become U+FFFD)."""
    docs, total = [], 0
    for f in files:
        text = read_text(f, errors)
        if max_bytes is not None and total + len(text) > max_bytes:
            text = text[:max_bytes - total]
        if text:
            docs.append(text)
            total += len(text)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


def tokenize_documents(tokenizer, docs):
    """One token stream: each document followed by <|endoftext|> where the tokenizer has it."""
    out = []
    eot = tokenizer.eot_id
    for ids in tokenizer.encode_batch(docs):
        out.extend(ids)
        if eot is not None:
            out.append(eot)
    return np.asarray(out, dtype=np.int64)


def split_train_val(tokens, val_fraction):
    """The last val_fraction of the stream is the validation split (as nanoGPT does)."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction {val_fraction} is outside (0, 1)", "--val-fraction",
                         "a number between 0 and 1 (exclusive)")
    n_val = max(1, int(len(tokens) * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


def prepare_data(docs, tokenizer, out_dir, val_fraction=0.1):
    """Tokenise documents, split, and write train/val shards under out_dir. Returns the
    (train, val) memory-mapped token arrays."""
    os.makedirs(out_dir, exist_ok=True)
    tokens = tokenize_documents(tokenizer, docs)
    train, val = split_train_val(tokens, val_fraction)
    write_shard(os.path.join(out_dir, "train_000000.bin"), train, tokenizer.vocab_size)
    write_shard(os.path.join(out_dir, "val_000000.bin"), val, tokenizer.vocab_size)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"train_tokens": int(len(train)), "val_tokens": int(len(val)),
                   "vocab_size": tokenizer.vocab_size, "documents": len(docs)}, f)
    return load_split(out_dir, "train"), load_split(out_dir, "val")


def load_split(folder, split):
    """All shards of one split, concatenated (memory-mapped when there is one shard)."""
    paths = shard_paths(folder, split)
    if not paths:
        raise MissingFileError(f"no {split} shards (*{split}*.bin)", folder,
                               "a folder of llm.c shards named *train*.bin and *val*.bin")
    arrays = [read_shard(p) for p in paths]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


# ---------------------------------------------------------------------------- batches
class BatchSampler:
    """Random [B, T] windows of a token array, and their next-token targets.

    The generator (PCG64) is seeded once; its state is part of the training checkpoint.
    """

    def __init__(self, tokens, batch_size, block_size, seed=0):
        if len(tokens) < block_size + 1:
            raise UsageError(f"the data has {len(tokens)} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}", "--data / --block-size",
                             "more text, a smaller --val-fraction or a smaller --block-size")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self):
        T = self.block_size
        starts = self.rng.integers(0, len(self.tokens) - T, size=self.batch_size)
        window = np.stack([np.asarray(self.tokens[s:s + T + 1], dtype=np.int64) for s in starts])
        return window[:, :-1], window[:, 1:]

    def state_dict(self):
        return self.rng.bit_generator.state          # JSON-safe: ints and strings

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state
