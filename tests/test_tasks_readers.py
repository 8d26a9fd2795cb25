"""The task readers (SQuAD v1.1 / v2 JSON, JSON Lines, TSV pairs, .po, .mo) on tiny fixtures
written here, and the one-line errors of bad task data."""
import json
import struct

import pytest

from scratchgpt.errors import BadFileError, MissingFileError
from scratchgpt.tasks.readers import QAExample, read_mo, read_pairs_tsv, read_po, read_squad
from scratchgpt.tasks.translation_data import (catalogue_files, grouped_pairs, split_by_group,
                                               translation_split)


def write_mo(path, entries, order="<"):
    """A GNU .mo file as msgfmt writes it (gettext 0.21's layout: header, the original and the
    translated string tables sorted by msgid, then the strings NUL-terminated; no hash table,
    which readers may ignore)."""
    keys = sorted(entries)
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    n = len(keys)
    start = 28 + 16 * n
    table, blob = [], b""
    for s in ids + strs:
        table.append((len(s), start + len(blob)))
        blob += s + b"\0"
    header = struct.pack(order + "7I", 0x950412de, 0, n, 28, 28 + 8 * n, 0, 0)
    body = b"".join(struct.pack(order + "2I", *t) for t in table)
    path.write_bytes(header + body + blob)
    return str(path)


SQUAD_V1 = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{
    "context": "The cat sat on the mat in Paris.",
    "qas": [{"id": "1", "question": "Where did the cat sit?",
             "answers": [{"text": "on the mat", "answer_start": 8},
                         {"text": "the mat", "answer_start": 11}]},
            {"id": "2", "question": "In which city?",
             "answers": [{"text": "Paris", "answer_start": 26}]}]}]}]}


def test_squad_v1(tmp_path):
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(SQUAD_V1))
    got = read_squad(str(p))
    assert got == [QAExample("The cat sat on the mat in Paris.", "Where did the cat sit?",
                             ("on the mat", "the mat")),
                   QAExample("The cat sat on the mat in Paris.", "In which city?", ("Paris",))]


def test_squad_v2_skips_impossible(tmp_path):
    doc = json.loads(json.dumps(SQUAD_V1))
    doc["version"] = "v2.0"
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "3", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "cat", "answer_start": 4}]})
    p = tmp_path / "v2.json"
    p.write_text(json.dumps(doc))
    got = read_squad(str(p))
    assert [e.question for e in got] == ["Where did the cat sit?", "In which city?"]


def test_jsonl(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"context": "x = 1", "question": "What is x?", "answers": ["1"]})
                 + "\n\n" + json.dumps({"context": "y = 2", "question": "What is y?",
                                        "answers": {"text": ["2"], "answer_start": [4]}}) + "\n")
    got = read_squad(str(p))
    assert [(e.context, e.answers) for e in got] == [("x = 1", ("1",)), ("y = 2", ("2",))]


def test_squad_missing_answers(tmp_path):
    doc = json.loads(json.dumps(SQUAD_V1))
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"] = []
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(BadFileError, match=r"qas\[1\] has no answer and is not marked "
                       r"is_impossible \(.*bad.json, SQuAD"):
        read_squad(str(p))
    p.write_text(json.dumps({"context": "c", "question": "q?"}) + "\n")
    with pytest.raises(BadFileError, match="line 1 has no 'answers' list"):
        read_squad(str(p))
    p.write_text(json.dumps({"context": "c", "question": "q?", "answers": []}) + "\n")
    with pytest.raises(BadFileError, match="line 1 has no answer"):
        read_squad(str(p))
    p.write_text("{not json\n")
    with pytest.raises(BadFileError, match="line 1 is not JSON"):
        read_squad(str(p))
    with pytest.raises(MissingFileError, match="no such file"):
        read_squad(str(tmp_path / "absent.json"))


def test_tsv_pairs(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("File\tFichier\r\n\nOpen file\tOuvrir le fichier\n")
    assert read_pairs_tsv(str(p)) == [("File", "Fichier"), ("Open file", "Ouvrir le fichier")]
    p.write_text("File\tFichier\nno tab here\n")
    with pytest.raises(BadFileError, match="line 2 is not source<TAB>target"):
        read_pairs_tsv(str(p))


PO = r'''# a comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

#: src/a.c:1
msgid "File"
msgstr "Fichier"

msgid "Open \"%s\""
msgstr "Ouvrir "
"« %s »"

#, fuzzy
msgid "Close"
msgstr "Fermer ?"

msgctxt "menu"
msgid "Quit"
msgstr "Quitter"

msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d fichier"
msgstr[1] "%d fichiers"

msgid "Untranslated"
msgstr ""
'''


def test_po(tmp_path):
    p = tmp_path / "fr.po"
    p.write_text(PO, encoding="utf-8")
    assert read_po(str(p)) == {"File": "Fichier", 'Open "%s"': "Ouvrir « %s »",
                               "Quit": "Quitter", "%d file": "%d fichier"}
    p.write_text('msgid "a"\nmsgstr "b"\nbogus "c"\n')
    with pytest.raises(BadFileError, match="line 3: unknown keyword 'bogus'"):
        read_po(str(p))
    p.write_text('msgid "a"\nmsgstr b\n')
    with pytest.raises(BadFileError, match="line 2: expected a quoted string"):
        read_po(str(p))


@pytest.mark.parametrize("order", ["<", ">"])
def test_mo(tmp_path, order):
    entries = {"": "Content-Type: text/plain; charset=UTF-8\n", "File": "Fichier",
               "menu\x04Quit": "Quitter", "%d file\x00%d files": "%d fichier\x00%d fichiers",
               "Empty": ""}
    p = write_mo(tmp_path / "fr.mo", entries, order)
    assert read_mo(p) == {"File": "Fichier", "Quit": "Quitter", "%d file": "%d fichier"}


def test_mo_bad(tmp_path):
    p = tmp_path / "bad.mo"
    p.write_bytes(b"\x00" * 40)
    with pytest.raises(BadFileError, match="wrong magic number 0x00000000"):
        read_mo(str(p))
    good = write_mo(tmp_path / "good.mo", {"File": "Fichier"})
    p.write_bytes(open(good, "rb").read()[:30])
    with pytest.raises(BadFileError, match="truncated"):
        read_mo(str(p))


def test_empty_catalogue(tmp_path):
    p = write_mo(tmp_path / "empty.mo", {"": "Content-Type: text/plain; charset=UTF-8\n"})
    with pytest.raises(BadFileError, match=r"no translated strings \(empty catalogues"):
        translation_split(p, "fr", 0.1, 0)
    with pytest.raises(BadFileError, match="no translated strings"):
        grouped_pairs([p])


def test_language_without_catalogues(tmp_path):
    with pytest.raises(MissingFileError, match=r"no message catalogues for --lang xx "
                       r"\(.*xx/LC_MESSAGES, .*--data"):
        catalogue_files("xx", root=str(tmp_path))


def test_split_by_catalogue_leaks_nothing(tmp_path):
    cats = []
    for i in range(6):
        entries = {f"String {i} {j}": f"Chaîne {i} {j}" for j in range(5)}
        entries["Shared"] = f"Partagé {i}"                # in every catalogue: kept once
        cats.append(write_mo(tmp_path / f"c{i}.mo", entries))
    groups = grouped_pairs(cats)
    assert sum(s == "Shared" for g in groups.values() for s, _ in g) == 1
    train, test, names = split_by_group(groups, 0.3, seed=3)
    assert {s for s, _ in train}.isdisjoint({s for s, _ in test})
    assert len(train) + len(test) == 31 and len(test) >= 0.3 * 31
    assert {s.split()[1] for s, _ in test if s != "Shared"} == \
        {n[-4] for n in names}                           # whole catalogues, c<i>.mo
    # the folder form of --data is split the same way
    tr2, te2, _ = translation_split(str(tmp_path), "fr", 0.3, 3)
    assert len(tr2) + len(te2) == 31
