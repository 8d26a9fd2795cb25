"""The task metrics and baselines against examples worked by hand."""
import math

import pytest

from scratchgpt.tasks import baselines, metrics
from scratchgpt.tasks.readers import QAExample


def test_squad_normalisation():
    # lower case, punctuation out, articles out, whitespace collapsed (the official script)
    assert metrics.normalize_answer("  The  Cat's, a HAT!") == "cats hat"
    assert metrics.normalize_answer("An apple, then another") == "apple then another"


def test_exact_match_and_f1():
    assert metrics.exact_match("the Mat.", "mat") == 1.0
    assert metrics.exact_match("on the mat", "mat") == 0.0
    # pred "on mat" vs gold "mat": 1 common token, P = 1/2, R = 1/1, F1 = 2/3
    assert metrics.token_f1("on the mat", "the mat") == pytest.approx(2 / 3)
    # a token repeated counts as often as it occurs in both (multiset): "a b b" vs "b b c":
    # common {b: 2}, P = 2/3, R = 2/3
    assert metrics.token_f1("x b b", "b b c") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "mat") == 0.0
    # answers that normalise to nothing: equal -> 1 (EM and F1), else 0
    assert metrics.token_f1("()", "''") == 1.0 and metrics.exact_match("()", "''") == 1.0
    assert metrics.token_f1("()", "None") == 0.0
    # best over golds, then the mean over questions, in percent:
    # q1: EM 1 (matches "the mat"), F1 1; q2: EM 0, F1: "new york city" vs "york": P 1/3, R 1 -> 1/2
    s = metrics.squad_scores(["mat", "New York City"], [("on the mat", "the mat"), ("York",)])
    assert s["exact_match"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * (1 + 0.5) / 2)
    with pytest.raises(ValueError, match="one per question"):
        metrics.squad_scores(["a"], [("a",), ("b",)])


def test_bleu_hand_worked():
    # hyp "the cat sat on mat" (5 words), ref "the cat sat on the mat" (6):
    # p1 = 5/5, p2 = 3/4, p3 = 2/3, p4 = 1/2; geometric mean (1/4)^(1/4); BP = exp(1 - 6/5)
    s = metrics.translation_scores(["the cat sat on mat"], ["the cat sat on the mat"])
    assert s["bleu"] == pytest.approx(100 * 0.25 ** 0.25 * math.exp(-0.2), rel=1e-9)
    assert metrics.translation_scores(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100)


def test_chrf_hand_worked():
    # characters of "ab" vs "abc": order 1: P 2/2, R 2/3; order 2: P 1/1, R 1/2; orders 3-6 have
    # no hypothesis n-grams and are left out of the averages: P = 1, R = 7/12,
    # chrF (beta 2) = 5 P R / (4 P + R) = 35/55
    s = metrics.translation_scores(["ab"], ["abc"])
    assert s["chrf"] == pytest.approx(100 * 35 / 55, rel=1e-9)
    assert metrics.translation_scores(["xyz"], ["abc"])["chrf"] == pytest.approx(0.0, abs=1e-9)


def test_accuracy():
    assert metrics.accuracy(["1", "0", "1"], ["1", "1", "1"]) == pytest.approx(200 / 3)


def test_most_frequent_answer():
    train = [QAExample("c", "q", ("None",), "default"), QAExample("c", "q", ("None",), "default"),
             QAExample("c", "q", ("0",), "default"),
             QAExample("c", "q", ("KeyError",), "exception")]
    test = [QAExample("c", "q", ("x",), "default"), QAExample("c", "q", ("y",), "exception"),
            QAExample("c", "q", ("z",), "function")]      # unseen template: the overall top
    assert baselines.most_frequent_answer(train, test) == ["None", "KeyError", "None"]
    # user data: the template is the question's first two words
    user = [QAExample("c", "Who wrote it?", ("Ann",)), QAExample("c", "Who wrote this?", ("Ann",)),
            QAExample("c", "When was it?", ("1990",))]
    assert baselines.most_frequent_answer(
        user, [QAExample("c", "Who wrote that?", ("Bob",)),
               QAExample("c", "When was that?", ("1991",))]) == ["Ann", "1990"]


def test_word_for_word():
    # "open file" -> "ouvrir fichier": open->ouvrir, file->fichier along the diagonal;
    # "file" also aligns to "fichier" in the second pair; unseen "now" is copied
    train = [("open file", "ouvrir fichier"), ("file", "fichier"), ("close file", "fermer fichier")]
    assert baselines.word_for_word(train, ["close file now", "open"]) == \
        ["fermer fichier now", "ouvrir"]
    assert baselines.copy_source(["a b"]) == ["a b"]
