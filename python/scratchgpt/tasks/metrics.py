"""The tasks' metrics.

SQuAD exact match and token F1 follow the official v1.1 evaluation script: both strings are
normalised (lower case, punctuation removed, the articles a / an / the removed, whitespace
collapsed), EM is 1 when the normalised strings are equal, F1 is the harmonic mean of precision
and recall of the normalised tokens as a multiset; an answer that normalises to nothing (here:
"()", "''") scores F1 1 when the prediction does too, as in the v2.0 script; a prediction takes
its best score over the gold answers, and the scores are averaged over questions (reported in
percent, as SQuAD does).

BLEU and chrF are sacrebleu's corpus scores with its defaults (checked against sacrebleu 2.6.0:
BLEU-4, the 13a tokenizer, exponential smoothing of zero n-gram counts; chrF with character
n-grams up to 6 and beta 2), one reference per sentence.
"""
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s):
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction, gold):
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        # an answer that normalises to nothing ("()", "''"): 1 when both do, as the v2.0
        # script scores it (v1.1's gives 0 even to an exact match)
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions, golds):
    """{"exact_match", "f1"} in percent; golds: a tuple of gold answers per question."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"predictions: expected one per question ({len(golds)}), got "
                         f"{len(predictions)}")
    em = sum(max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds))
    f1 = sum(max(token_f1(p, g) for g in gs) for p, gs in zip(predictions, golds))
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


def translation_scores(hypotheses, references):
    """{"bleu", "chrf"}: sacrebleu's corpus BLEU and chrF of the hypotheses."""
    import sacrebleu
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"hypotheses: expected one per reference ({len(references)}), got "
                         f"{len(hypotheses)}")
    refs = [list(references)]
    return {"bleu": float(sacrebleu.corpus_bleu(list(hypotheses), refs).score),
            "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), refs).score)}


def accuracy(predictions, labels):
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions: expected one per label")
    return 100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels)
