"""Tokenizers: text <-> token ids.

    BPETokenizer    byte-level BPE (GPT-2's scheme) through the `tokenizers` library: trained on
                    a corpus with a chosen vocabulary size, or read from GPT-2's own files
                    (vocab.json + merges.txt, or the original encoder.json + vocab.bpe)
    CharTokenizer   one id per character seen in a text, for the tiniest demos

Byte-level BPE maps every byte to one of 256 printable characters before merging, so any
string (any Unicode, any byte sequence) encodes and decodes back exactly. A single token can
hold part of a multi-byte character; `decode_bytes` returns the raw bytes for such pieces, and
`decode` of a whole sequence is the original text.

`load_tokenizer(path)` reads any of these from a folder or file; `save(folder)` writes one.
A file that is missing, truncated or not a tokenizer raises MissingFileError / BadFileError
naming it (errors.py).
"""
import json
import os

from .errors import BadFileError, MissingFileError, UsageError

BPE_MIN_VOCAB = 257            # 256 byte tokens + <|endoftext|>
TOKENIZER_FILES = ("tokenizer.json, chars.json, vocab.json + merges.txt or "
                   "encoder.json + vocab.bpe")

EOT = "<|endoftext|>"          # document separator, as in GPT-2
TOKENIZER_JSON = "tokenizer.json"
CHARS_JSON = "chars.json"


def bytes_to_unicode():
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves,
    the rest to code points from 256 up, so that no byte becomes whitespace or a control."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


class BPETokenizer:
    """Byte-level BPE. Construct with `train`, `from_gpt2_files` or `load`."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tk = tokenizer                       # a tokenizers.Tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = tokenizer.token_to_id(EOT)
        # id -> bytes, once: decoding is a table lookup per token
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._bytes = [b""] * self.vocab_size
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        for token, i in vocab.items():
            if token in specials:
                self._bytes[i] = token.encode("utf-8")
            else:
                self._bytes[i] = bytes(_UNICODE_TO_BYTE[c] for c in token)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _empty(model):
        from tokenizers import Tokenizer, decoders, pre_tokenizers
        tk = Tokenizer(model)
        # GPT-2's split (letters, digits, punctuation, spaces) then bytes -> printable chars
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        return tk

    @classmethod
    def train(cls, texts, vocab_size, show_progress=False):
        """Learn merges on an iterable of strings until the vocabulary holds vocab_size ids:
        256 bytes, <|endoftext|>, then merges."""
        from tokenizers import models, pre_tokenizers, trainers
        if not isinstance(vocab_size, int) or vocab_size < BPE_MIN_VOCAB:
            raise UsageError(f"the byte-level BPE cannot have {vocab_size!r} tokens",
                             "--vocab-size", f"an integer >= {BPE_MIN_VOCAB} "
                             f"(256 bytes + {EOT}), or --tokenizer char")
        tk = cls._empty(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=show_progress,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk)

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path):
        """GPT-2's vocab.json + merges.txt (or encoder.json + vocab.bpe: the same formats),
        read from disk; nothing is downloaded."""
        from tokenizers import AddedToken, models
        for name, p in (("vocab_path", vocab_path), ("merges_path", merges_path)):
            if not os.path.isfile(p):
                raise MissingFileError("no such file", p, f"GPT-2's {os.path.basename(p)}")
        try:
            tk = cls._empty(models.BPE.from_file(str(vocab_path), str(merges_path)))
        except Exception as e:      # the tokenizers library raises a bare Exception
            raise BadFileError(f"not a GPT-2 vocabulary and merges pair: {_first_line(e)}",
                               f"{vocab_path} + {merges_path}",
                               "GPT-2's vocab.json (or encoder.json) and merges.txt "
                               "(or vocab.bpe)") from None
        if tk.token_to_id(EOT) is not None:
            tk.add_special_tokens([AddedToken(EOT, special=True)])
        return cls(tk)

    @classmethod
    def load(cls, path):
        from tokenizers import Tokenizer
        try:
            tk = Tokenizer.from_file(str(path))
        except Exception as e:      # the tokenizers library raises a bare Exception
            raise BadFileError(f"not a tokenizer file: {_first_line(e)}", path,
                               "a tokenizer.json written by scratchgpt or Hugging Face "
                               "tokenizers") from None
        try:
            return cls(tk)
        except KeyError as e:       # a token outside the byte-level alphabet
            raise BadFileError(f"not a byte-level BPE: token character {e} is not one of the "
                               "256 byte characters", path, "a byte-level BPE tokenizer.json "
                               "(GPT-2's scheme)") from None

    def save(self, folder):
        import re
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, TOKENIZER_JSON)
        try:
            self.tk.save(path + ".tmp")
        except Exception as e:      # the Rust writer's I/O error, as the OSError it is
            m = re.search(r"os error (\d+)\)", str(e))
            if m is None:
                raise
            n = int(m.group(1))
            raise OSError(n, os.strerror(n), path + ".tmp") from None
        os.replace(path + ".tmp", path)
        return path

    # ------------------------------------------------------------------ use
    def encode(self, text):
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode_bytes(self, ids):
        """The raw bytes of ids: exact even when a token holds part of a UTF-8 character."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: token {i} is outside [0, {self.vocab_size})")
            out.append(self._bytes[i])
        return b"".join(out)

    def decode(self, ids):
        # a sampled sequence may end inside a character: show U+FFFD there, never fail
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One id per distinct character of the text it was built from (sorted, so the ids do
    not depend on the order of the text)."""

    kind = "char"

    def __init__(self, chars):
        chars = list(chars)
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("chars: expected a non-empty list of distinct characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot_id = None

    @classmethod
    def train(cls, texts, vocab_size=None, show_progress=False):
        if isinstance(texts, str):
            texts = [texts]
        seen = set()
        for t in texts:
            seen.update(t)
        chars = sorted(seen)
        if vocab_size is not None and len(chars) > vocab_size:
            raise UsageError(f"the text has {len(chars)} distinct characters, more than "
                             f"vocab_size={vocab_size}", "--vocab-size",
                             f"at least {len(chars)} for the char tokenizer, or no --vocab-size")
        return cls(chars)

    @classmethod
    def load(cls, path):
        expected = 'a chars.json written by scratchgpt ({"kind": "char", "chars": [...]})'
        try:
            with open(path, encoding="utf-8") as f:
                chars = json.load(f)["chars"]
            return cls(chars)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadFileError(f"not valid JSON ({e})", path, expected) from None
        except (KeyError, TypeError, ValueError):
            raise BadFileError("not a character list", path, expected) from None

    def save(self, folder):
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, CHARS_JSON)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"kind": "char", "chars": self.chars}, f, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        return path

    def encode(self, text):
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"text: character {e.args[0]!r} is not in this tokenizer's "
                             f"{self.vocab_size} characters") from None

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: token {i} is outside [0, {self.vocab_size})")
            out.append(self.chars[i])
        return "".join(out)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")


def find_tokenizer_files(folder):
    """The tokenizer files in a folder, as (kind, paths), or None."""
    def has(*names):
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)

    if has(TOKENIZER_JSON):
        return "bpe", (os.path.join(folder, TOKENIZER_JSON),)
    if has(CHARS_JSON):
        return "char", (os.path.join(folder, CHARS_JSON),)
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if has(vocab, merges):
            return "gpt2", (os.path.join(folder, vocab), os.path.join(folder, merges))
    return None


def load_tokenizer(path):
    """A tokenizer from a folder (tokenizer.json, chars.json, vocab.json + merges.txt, or
    encoder.json + vocab.bpe) or from a tokenizer.json / chars.json file."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isfile(path):
        if os.path.basename(path) == CHARS_JSON:
            return CharTokenizer.load(path)
        return BPETokenizer.load(path)
    if not os.path.isdir(path):
        raise MissingFileError("no tokenizer file or folder", path, TOKENIZER_FILES)
    found = find_tokenizer_files(path)
    if found is None:
        raise MissingFileError("no tokenizer files in this folder", path, TOKENIZER_FILES)
    kind, files = found
    if kind == "bpe":
        return BPETokenizer.load(files[0])
    if kind == "char":
        return CharTokenizer.load(files[0])
    return BPETokenizer.from_gpt2_files(*files)


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def train_tokenizer(kind, texts, vocab_size):
    """Train a tokenizer of the given kind ("bpe" or "char")."""
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size)
    raise ValueError(f"tokenizer: expected 'bpe', 'char' or a path, got {kind!r}")
