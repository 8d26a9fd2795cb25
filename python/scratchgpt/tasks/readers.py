"""Readers of the task data formats, each returning plain Python records.

    read_squad(path)       SQuAD v1.1 / v2.0 JSON, or JSON Lines of {context, question, answers}
                           -> [QAExample]
    read_pairs_tsv(path)   source<TAB>target lines -> [(source, target)]
    read_po(path)          a gettext catalogue in source form -> {msgid: msgstr}
    read_mo(path)          a compiled gettext catalogue -> {msgid: msgstr}

Anything malformed raises BadFileError naming the file (and the line or entry) and what was
expected; a path that is not there, MissingFileError. SQuAD v2's unanswerable questions
(`is_impossible`, no answers) are skipped: the task here is extractive answering.
"""
import ast
import json
import os
import struct
from dataclasses import dataclass

from ..data import read_text
from ..errors import BadFileError, MissingFileError

SQUAD = ("SQuAD v1.1/v2.0 JSON ({data: [{paragraphs: [{context, qas: [{question, answers: "
         "[{text, answer_start}]}]}]}]}) or JSON Lines of {context, question, answers}")
TSV_PAIRS = "source<TAB>target lines, UTF-8"
PO = "a gettext .po catalogue (msgid \"...\" / msgstr \"...\" entries)"
MO = "a compiled gettext .mo catalogue (magic 0x950412de)"


@dataclass(frozen=True)
class QAExample:
    context: str
    question: str
    answers: tuple          # gold answer texts, each a span of context; the first is trained on
    kind: str = ""          # the question's template (the embedded set) or "" (user data)


def _existing(path, what):
    if not os.path.exists(path):
        raise MissingFileError("no such file", path, what)
    if os.path.isdir(path):
        raise BadFileError("a folder, not a file", path, what)
    return path


# ------------------------------------------------------------------------------ SQuAD
def _qa_record(rec, path, where):
    """A QAExample from one {context, question, answers} record (answers: a list of
    strings or of {text} objects, or {text: [...]} as Hugging Face `datasets` writes it)."""
    if not isinstance(rec, dict):
        raise BadFileError(f"{where} is not an object", path, SQUAD)
    for key in ("context", "question"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise BadFileError(f"{where} has no {key!r} text", path, SQUAD)
    answers = rec.get("answers")
    if isinstance(answers, dict):                       # {"text": [...], "answer_start": [...]}
        answers = answers.get("text")
    if not isinstance(answers, list):
        raise BadFileError(f"{where} has no 'answers' list", path, SQUAD)
    texts = []
    for a in answers:
        t = a.get("text") if isinstance(a, dict) else a
        if not isinstance(t, str):
            raise BadFileError(f"{where}: an answer without text: {a!r:.60}", path, SQUAD)
        if t.strip():
            texts.append(t.strip())
    return texts


def read_squad(path):
    """QA examples of a SQuAD JSON file (v1.1 or v2.0) or a JSON Lines file; questions marked
    unanswerable (v2) are skipped, an answerable one without answers is an error."""
    _existing(path, SQUAD)
    text = read_text(path)
    examples = []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "data" in doc:
        if not isinstance(doc["data"], list):
            raise BadFileError("'data' is not a list", path, SQUAD)
        for a, article in enumerate(doc["data"]):
            for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict)
                                     else []):
                for q, qa in enumerate(para.get("qas", [])):
                    where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    if qa.get("is_impossible"):
                        continue
                    answers = _qa_record({"context": para.get("context"), **qa}, path, where)
                    if not answers:
                        raise BadFileError(f"{where} has no answer and is not marked "
                                           "is_impossible", path, SQUAD)
                    examples.append(QAExample(para["context"], qa["question"].strip(),
                                              tuple(answers)))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadFileError(f"line {n} is not JSON: {e.msg}", path, SQUAD) from None
            if isinstance(rec, dict) and rec.get("is_impossible"):
                continue
            answers = _qa_record(rec, path, f"line {n}")
            if not answers:
                raise BadFileError(f"line {n} has no answer", path, SQUAD)
            examples.append(QAExample(rec["context"], rec["question"].strip(), tuple(answers)))
    if not examples:
        raise BadFileError("no answerable questions", path, SQUAD)
    return examples


# ------------------------------------------------------------------------------ TSV pairs
def read_pairs_tsv(path):
    """(source, target) pairs of a `source<TAB>target` file."""
    _existing(path, TSV_PAIRS)
    pairs = []
    content = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    for n, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        source, tab, target = line.partition("\t")
        if not tab or not source.strip() or not target.strip() or "\t" in target:
            raise BadFileError(f"line {n} is not source<TAB>target: {line[:60]!r}", path,
                               TSV_PAIRS)
        pairs.append((source.strip(), target.strip()))
    if not pairs:
        raise BadFileError("no source<TAB>target lines", path, TSV_PAIRS)
    return pairs


# ------------------------------------------------------------------------------ gettext
def _plain_entries(raw):
    """{msgid: msgstr} without the header (msgid ""), contexts (msgctxt\\x04msgid keeps its
    msgid), plural forms (the singular pair) and untranslated entries."""
    out = {}
    for msgid, msgstr in raw:
        if not msgid:
            continue
        msgid = msgid.split("\x04", 1)[-1].split("\x00", 1)[0]
        msgstr = msgstr.split("\x00", 1)[0]
        if msgid and msgstr:
            out.setdefault(msgid, msgstr)
    return out


def _charset(header):
    for line in header.split("\n"):
        if line.lower().startswith("content-type:") and "charset=" in line:
            return line.split("charset=", 1)[1].strip() or "utf-8"
    return "utf-8"


def read_mo(path):
    """{msgid: msgstr} of a compiled catalogue (GNU .mo, either byte order), decoded with the
    charset its header names."""
    _existing(path, MO)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 20:
        raise BadFileError(f"truncated: {len(data)} bytes, shorter than the 20-byte header",
                           path, MO)
    magic = struct.unpack("<I", data[:4])[0]
    order = {0x950412de: "<", 0xde120495: ">"}.get(magic)
    if order is None:
        raise BadFileError(f"wrong magic number 0x{magic:08x}", path, MO)
    _, n, orig, trans = struct.unpack(order + "4I", data[4:20])
    if orig + 8 * n > len(data) or trans + 8 * n > len(data):
        raise BadFileError(f"truncated: {n} strings' tables end past the file's {len(data)} "
                           "bytes", path, MO)
    raw = []
    for i in range(n):
        (lo, oo), (lt, ot) = (struct.unpack(order + "2I", data[t + 8 * i:t + 8 * i + 8])
                              for t in (orig, trans))
        if oo + lo > len(data) or ot + lt > len(data):
            raise BadFileError(f"string {i} ends past the end of the file", path, MO)
        raw.append((data[oo:oo + lo], data[ot:ot + lt]))
    charset = "utf-8"
    for k, v in raw:
        if k == b"":
            charset = _charset(v.decode("ascii", "replace"))
    try:
        return _plain_entries([(k.decode(charset), v.decode(charset)) for k, v in raw])
    except (LookupError, UnicodeDecodeError) as e:
        raise BadFileError(f"cannot decode its strings as {charset}: {e}", path, MO) from None


def _po_string(token, path, n):
    """The value of a C-quoted .po string ("...", with \\n, \\t, \\" and octal escapes)."""
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise BadFileError(f"line {n}: expected a quoted string, got {token[:40]!r}", path, PO)
    try:
        # the escapes of a .po string are C's, which Python's string literal syntax covers
        return ast.literal_eval(token)
    except (SyntaxError, ValueError):
        raise BadFileError(f"line {n}: bad string {token[:40]!r}", path, PO) from None


def read_po(path):
    """{msgid: msgstr} of a .po catalogue; fuzzy entries are skipped, as msgfmt does."""
    _existing(path, PO)
    text = read_text(path)
    entries, cur, field, fuzzy = [], {}, None, False

    def flush():
        nonlocal cur, fuzzy
        if "msgid" in cur and not fuzzy:
            msgstr = cur.get("msgstr", cur.get("msgstr[0]"))
            if msgstr is None:
                raise BadFileError(f"the entry msgid {cur['msgid'][:40]!r} has no msgstr",
                                   path, PO)
            entries.append((cur["msgid"], msgstr))
        cur, fuzzy = {}, False

    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if s.startswith("#,") and "fuzzy" in s:
                if "msgid" in cur:
                    flush()
                fuzzy = True
            continue
        if s.startswith('"'):
            if field is None:
                raise BadFileError(f"line {n}: a string outside an entry", path, PO)
            cur[field] += _po_string(s, path, n)
            continue
        keyword, _, rest = s.partition(" ")
        if keyword not in ("msgctxt", "msgid", "msgid_plural", "msgstr") and \
                not keyword.startswith("msgstr["):
            raise BadFileError(f"line {n}: unknown keyword {keyword[:20]!r}", path, PO)
        if keyword in ("msgctxt", "msgid") and ("msgstr" in cur or "msgstr[0]" in cur):
            flush()
        field = keyword
        cur[field] = _po_string(rest.strip(), path, n)
    flush()
    return _plain_entries(entries)
