"""The question-answering examples: a reading-comprehension set built from the Python standard
library on this machine by default, or SQuAD / JSON Lines files given with --data.

The embedded set walks the standard library's .py sources (data.default_corpus_files: no test
suites, no site-packages), parses each with `ast`, and asks three kinds of question whose
answer is a span of the context, copied from the source:

  default    context: a function's signature as written (decorators left out, at most
             MAX_CONTEXT characters); question: "What is the default value of P in F?";
             answer: the default's source text (P has a default of at most 24 characters).
             One question per defaulted parameter.
  function   context: three neighbouring functions of one module, each its `def` line and its
             docstring's first line; question: 'Which function does "<first line>" describe?';
             answer: the name of the function whose docstring it is (the second of the three,
             so position alone does not answer). Functions with the same first line are skipped.
  exception  context: "F: " + the sentence of F's docstring that says an exception is raised
             ("Raises ValueError if ...", "... raise KeyError ..."), at most MAX_CONTEXT
             characters; question: "Which exception does F raise?"; answer: the exception's name
             (docstrings naming more than one exception are skipped).

Contexts must not contain the answer more than the question needs: each answer is checked to
be a span of its context. Each template keeps at most PER_TEMPLATE questions (a seeded
sample), and the held-out split takes whole source files, so no signature or docstring is
both trained on and tested.
"""
import ast
import os
import re

import numpy as np

from ..data import default_corpus_files
from ..errors import MissingFileError, UsageError
from .readers import QAExample, read_squad

MAX_CONTEXT = 240
PER_TEMPLATE = 4000
TEMPLATES = ("default", "function", "exception")
EXC_RE = re.compile(r"\b(?:[Rr]aises?|[Rr]aised|[Rr]aising)\b[^.]{0,60}?\b"
                    r"([A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt|Iteration))\b")
EXC_NAME = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt|Iteration)\b")


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _signature(lines, fn):
    """The `def` line(s) of fn as written, or None when longer than MAX_CONTEXT."""
    first, last = fn.lineno - 1, fn.body[0].lineno - 1
    header = "\n".join(line.strip() for line in lines[first:max(last, first + 1)])
    if not header.startswith(("def ", "async def ")) or len(header) > MAX_CONTEXT:
        return None
    # the body may share the last line (def f(): return 1): keep up to the colon
    return header


def _segment(lines, node):
    """The source text of a one-line node (ast.get_source_segment re-splits the whole file
    on every call: minutes over the standard library)."""
    if node.lineno != node.end_lineno:
        return None
    return lines[node.lineno - 1].encode()[node.col_offset:node.end_col_offset].decode()


def default_questions(lines, functions):
    out = []
    for fn in functions:
        sig = _signature(lines, fn)
        if sig is None:
            continue
        a = fn.args
        positional = a.posonlyargs + a.args
        pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
        pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
        for arg, default in pairs:
            text = _segment(lines, default)
            if not text or len(text) > 24 or "\n" in text or f"{arg.arg}={text}" not in \
                    sig.replace(" = ", "=").replace(": ", ":"):
                continue
            out.append(QAExample(sig, f"What is the default value of {arg.arg} in {fn.name}?",
                                 (text,), "default"))
    return out


def _doc_first_line(fn):
    doc = ast.get_docstring(fn)
    if not doc:
        return None
    first = doc.strip().split("\n", 1)[0].strip()
    return first if 10 <= len(first) <= 80 and '"' not in first else None


def function_questions(lines, parents):
    out = []
    for parent in parents:
        fns = [n for n in parent.body if isinstance(n, FUNCTIONS)]
        described = [(fn, _doc_first_line(fn)) for fn in fns]
        described = [(fn, d) for fn, d in described if d and lines[fn.lineno - 1].strip()
                     .startswith(("def ", "async def "))]
        firsts = [d for _, d in described]
        for i in range(0, len(described) - 2, 3):
            group = described[i:i + 3]
            if len({d for _, d in group}) < 3 or firsts.count(group[1][1]) > 1:
                continue
            context = "\n".join(f"{lines[fn.lineno - 1].strip()}\n    \"\"\"{d}\"\"\""
                                for fn, d in group)
            if len(context) > MAX_CONTEXT * 5 // 4:
                continue
            fn, doc = group[1]
            out.append(QAExample(context, f'Which function does "{doc}" describe?', (fn.name,),
                                 "function"))
    return out


def exception_questions(functions):
    out = []
    for fn in functions:
        doc = ast.get_docstring(fn)
        if not doc:
            continue
        flat = " ".join(doc.split())
        names = set(EXC_NAME.findall(flat))
        m = EXC_RE.search(flat)
        if m is None or len(names) != 1:
            continue
        # the sentence holding the mention, cut to MAX_CONTEXT around it
        start = flat.rfind(". ", 0, m.start()) + 1
        end = flat.find(". ", m.end())
        sentence = flat[start:len(flat) if end < 0 else end + 1].strip()
        context = f"{fn.name}: {sentence}"[:MAX_CONTEXT]
        if m.group(1) not in context:
            continue
        out.append(QAExample(context, f"Which exception does {fn.name} raise?", (m.group(1),),
                             "exception"))
    return out


def stdlib_examples(files=None):
    """{source file: [QAExample]} of the embedded set (before the per-template cap)."""
    groups = {}
    for path in files or default_corpus_files():
        try:
            with open(path, encoding="utf-8") as f:
                src = f.read()
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue          # a few stdlib files are templates or other encodings
        lines = src.split("\n")
        nodes = list(ast.walk(tree))
        functions = [n for n in nodes if isinstance(n, FUNCTIONS)]
        parents = [tree] + [n for n in nodes if isinstance(n, ast.ClassDef)]
        found = default_questions(lines, functions) + function_questions(lines, parents) + \
            exception_questions(functions)
        found = [e for e in found if all(a in e.context for a in e.answers)]
        if found:
            groups[path] = found
    if not groups:
        raise MissingFileError("no questions could be built from the standard library",
                               "the default corpus", "Python's .py sources; or give --data")
    return groups


def cap_per_template(groups, per_template, seed):
    """The same groups with at most per_template questions of each template (seeded)."""
    rng = np.random.default_rng(seed)
    flat = [(g, i, e.kind) for g in sorted(groups) for i, e in enumerate(groups[g])]
    keep = set()
    for kind in sorted({k for _, _, k in flat}):
        rows = [r for r in flat if r[2] == kind]
        for j in sorted(rng.permutation(len(rows))[:per_template]):
            keep.add(rows[j][:2])
    capped = {g: [e for i, e in enumerate(groups[g]) if (g, i) in keep] for g in sorted(groups)}
    return {g: es for g, es in capped.items() if es}


def qa_split(data, test_fraction, seed, per_template=PER_TEMPLATE):
    """(train, test, description) for the qa task."""
    from .translation_data import split_by_group
    if data is None:
        groups = cap_per_template(stdlib_examples(), per_template, seed)
        train, test, names = split_by_group(groups, test_fraction, seed)
        counts = {k: sum(e.kind == k for e in train + test) for k in TEMPLATES}
        desc = (f"the standard library reading-comprehension set: {len(train) + len(test)} "
                f"questions from {len(groups)} source files "
                f"({', '.join(f'{v} {k}' for k, v in counts.items())}); held out: "
                f"{len(names)} whole files")
        return train, test, desc
    if os.path.isdir(data):
        raise UsageError("a folder", f"--data {data}", "a SQuAD .json or a .jsonl file")
    examples = read_squad(data)
    if len(examples) < 2:
        raise UsageError(f"{len(examples)} question: nothing left to test on", f"--data {data}",
                         "at least two answerable questions")
    # questions on one context stay on one side of the split
    contexts = {}
    for e in examples:
        contexts.setdefault(e.context, []).append(e)
    train, test, _ = split_by_group(contexts, test_fraction, seed)
    return train, test, f"{len(examples)} questions on {len(contexts)} contexts in {data}"
