"""`scratchgpt finetune --task` and `scratchgpt eval --task`: bad task data ends in one clear
line (exit 1 for data, 2 for arguments); the pretraining corpora; an end-to-end run on a tiny
model (about 5 s)."""
import json

import pytest

from scratchgpt import corpora
from scratchgpt.cli import main
from test_tasks_readers import SQUAD_V1, write_mo


def one_error(capsys, argv, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_language_without_catalogues(capsys, tmp_path):
    line = one_error(capsys, ["finetune", "--task", "translate", "--lang", "zz-none",
                              "--out", str(tmp_path)])
    assert line.startswith("scratchgpt finetune: error: no message catalogues for --lang "
                           "zz-none (/usr/share/locale/zz-none/LC_MESSAGES, ")
    assert "--data" in line


def test_empty_catalogue(capsys, tmp_path):
    mo = write_mo(tmp_path / "empty.mo", {"": "Content-Type: text/plain; charset=UTF-8\n"})
    line = one_error(capsys, ["finetune", "--task", "translate", "--data", mo,
                              "--out", str(tmp_path / "run")])
    assert "error: no translated strings (empty catalogues" in line and "empty.mo" in line


def test_missing_answers(capsys, tmp_path):
    doc = json.loads(json.dumps(SQUAD_V1))
    for qa in doc["data"][0]["paragraphs"][0]["qas"]:
        qa["answers"] = []
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(doc))
    line = one_error(capsys, ["eval", "--task", "qa", "--data", str(p), "--ckpt",
                              str(tmp_path / "none")])
    assert "error: data[0].paragraphs[0].qas[0] has no answer and is not marked is_impossible" \
        in line


def test_classify_needs_data(capsys, tmp_path):
    line = one_error(capsys, ["finetune", "--out", str(tmp_path)], code=2)
    assert "error: missing a required argument (--data, text<TAB>label" in line


def test_corpus_with_data_is_refused(capsys, tmp_path, text_file):
    line = one_error(capsys, ["train", "--data", text_file, "--corpus", "english", "--preset",
                              "nano", "--tokenizer", "char", "--out", str(tmp_path)], code=2)
    assert "error: --corpus chooses the text when there is no --data (--corpus english" in line


def test_mixed_corpus_alternates(monkeypatch):
    monkeypatch.setattr(corpora, "default_corpus_files", lambda: ["a.py", "b.py", "c.py"])
    monkeypatch.setattr(corpora, "read_documents",
                        lambda files, max_bytes: [f"code {f}" for f in files][:2])
    monkeypatch.setattr(corpora, "english_documents", lambda: ["prose 1", "prose 2", "prose 3"])
    # 14 characters of each: two files of code (read_documents' limit), two of prose
    assert corpora.corpus_documents("mixed", 28) == ["code a.py", "prose 1", "code b.py",
                                                     "prose 2"]
    assert corpora.corpus_documents("english", 10) == ["prose 1", "pro"]
    with pytest.raises(ValueError, match="corpus: expected one of python, english, mixed"):
        corpora.corpus_documents("latin")


def test_comment_blocks_and_docstrings():
    src = ('"""Module docstring that is long enough."""\n'
           "# first line of a comment that is long\n# and its second line\nx = 1\n"
           "# short\n"
           "def f():\n    '''A function docstring, long enough.'''\n")
    import ast
    assert corpora._docstrings(ast.parse(src)) == ["Module docstring that is long enough.",
                                                   "A function docstring, long enough."]
    assert corpora._comment_blocks(src) == ["first line of a comment that is long and its "
                                            "second line"]


def test_translate_and_fewshot_end_to_end(capsys, tmp_path):
    words = ["file", "open", "close", "save", "print", "copy", "move", "read", "write", "find"]
    french = ["fichier", "ouvrir", "fermer", "enregistrer", "imprimer", "copier", "déplacer",
              "lire", "écrire", "chercher"]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{w} {x}\t{f} {y}\n" for w, f in zip(words, french)
                           for x, y in (("now", "maintenant"), ("all", "tout"), ("it", "le"))))
    out = tmp_path / "run"
    assert main(["finetune", "--task", "translate", "--data", str(tsv), "--out", str(out),
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--vocab-size", "300",
                 "--pretrain-steps", "10", "--corpus-mb", "0.02", "--epochs", "1",
                 "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary)[-6:] == ["task", "metric", "score", "baselines", "n_train", "n_test"]
    assert summary["task"] == "translate" and summary["metric"] == "bleu"
    assert set(summary["baselines"]) == {"copy_source", "word_for_word"}
    assert summary["n_train"] + summary["n_test"] == 30
    assert (out / "predictions.jsonl").read_text().count("\n") == summary["n_test"]
    assert main(["eval", "--task", "translate", "--data", str(tsv), "--shots", "2", "--ckpt",
                 str(out / "pretrain"), "--no-progress", "--json"]) == 0
    few = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert few["shots"] == 2 and few["n_test"] == summary["n_test"] and 0 <= few["score"] <= 100
