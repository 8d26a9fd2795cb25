"""The pretraining corpora this machine already holds (`scratchgpt train --corpus`):

  python    the standard library's .py sources (data.default_corpus_files; no test suites,
            no site-packages): code with its docstrings and comments, as written
  english   the English the standard library and the system carry: every module's, class's
            and function's docstring and every block of consecutive comment lines of those same
            sources (parsed with `ast` and `tokenize`), the 79 help topics of `pydoc_data` (the
            language reference's prose behind `help("if")`), and the English source strings
            (msgids) of the gettext catalogues under /usr/share/locale (the largest language's
            copy of each catalogue), de-duplicated
  mixed     the two interleaved document by document (python's files and english's documents
            alternate), so a --max-corpus-mb limit takes both halves

Documents come in a fixed order (files in name order; the english documents shuffled with a
fixed seed so a size limit samples every source), so a corpus and its shards are the same on
every run.
"""
import ast
import glob
import io
import os
import tokenize

import numpy as np

from .data import default_corpus_files, read_documents

CORPORA = ("python", "english", "mixed")
LOCALE_ROOT = "/usr/share/locale"


def _docstrings(tree):
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [d for d in (ast.get_docstring(n) for n in nodes) if d and len(d) >= 20]


def _comment_blocks(src):
    """Consecutive comment lines joined into one paragraph each."""
    blocks, cur, last_line = [], [], -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#").strip()
            if tok.start[0] != last_line + 1 and cur:
                blocks.append(" ".join(cur))
                cur = []
            if text and not text.startswith("!"):
                cur.append(text)
            last_line = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        pass
    if cur:
        blocks.append(" ".join(cur))
    return [b for b in blocks if len(b) >= 40]


def stdlib_english():
    docs = []
    for path in default_corpus_files():
        try:
            with open(path, encoding="utf-8") as f:
                src = f.read()
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        docs += _docstrings(tree) + _comment_blocks(src)
    return docs


def pydoc_topics():
    try:
        from pydoc_data.topics import topics
    except ImportError:           # some distributions leave pydoc_data out
        return []
    return [topics[k] for k in sorted(topics)]


def catalogue_english(root=LOCALE_ROOT):
    """The msgids of the machine's catalogues, each once. Every language's copy of a catalogue
    holds (nearly) the same English strings, so only the largest copy of each is read."""
    from .tasks.readers import read_mo
    from .errors import BadFileError
    largest = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "LC_MESSAGES", "*.mo"))):
        name = os.path.basename(path)
        if not os.path.islink(path) and (name not in largest or
                                         os.path.getsize(path) > os.path.getsize(largest[name])):
            largest[name] = path
    seen, out = set(), []
    for name in sorted(largest):
        path = largest[name]
        try:
            ids = read_mo(path)
        except BadFileError:
            continue
        for msgid in ids:
            if msgid not in seen and any(c.isalpha() for c in msgid):
                seen.add(msgid)
                out.append(msgid)
    return out


def english_documents(seed=0):
    """Docstrings, comments and pydoc topics one document each; the catalogue strings in
    documents of 200 strings (one string a line)."""
    strings = catalogue_english()
    docs = stdlib_english() + pydoc_topics() + \
        ["\n".join(strings[i:i + 200]) for i in range(0, len(strings), 200)]
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]


def _limit(docs, max_bytes):
    if max_bytes is None:
        return docs
    out, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        out.append(d[:max_bytes - total])
        total += len(out[-1])
    return out


def corpus_documents(name, max_bytes=None):
    """The documents of a corpus, at most max_bytes characters in all."""
    if name == "python":
        return read_documents(default_corpus_files(), max_bytes)
    if name == "english":
        return _limit(english_documents(), max_bytes)
    if name == "mixed":
        half = None if max_bytes is None else max_bytes // 2
        code = read_documents(default_corpus_files(), half)
        prose = _limit(english_documents(), half)
        mixed = [d for pair in zip(code, prose) for d in pair]
        longer = code if len(code) > len(prose) else prose
        return mixed + longer[min(len(code), len(prose)):]
    raise ValueError(f"corpus: expected one of {', '.join(CORPORA)}, got {name!r}")
