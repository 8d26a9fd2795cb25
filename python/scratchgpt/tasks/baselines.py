"""Baselines that use no model: what a fine-tuned model has to beat.

  most_frequent_answer   QA: for each question template (the question with its names blanked
                         out), the answer seen most often in training for that template
  copy_source            translation: the source string itself (interface strings share
                         format specifiers, names and numbers with their translations)
  word_for_word          translation: each source word replaced by the target word it is most
                         often aligned with in training, where a pair's words are aligned along
                         the diagonal (word i of n to word round(i * m / n) of m); unseen words
                         are copied
"""
from collections import Counter, defaultdict


def question_template(example):
    """The template of a question: its own kind (the embedded set), else the question with every
    word but its first two blanked ("What is ...", "Which function ...")."""
    if example.kind:
        return example.kind
    words = example.question.split()
    return " ".join(words[:2]).lower()


def most_frequent_answer(train, test):
    """The most frequent training answer of each test question's template (ties: the answer
    first seen); the overall most frequent one for a template never seen in training."""
    by_template = defaultdict(Counter)
    overall = Counter()
    for e in train:
        by_template[question_template(e)][e.answers[0]] += 1
        overall[e.answers[0]] += 1
    top = overall.most_common(1)[0][0] if overall else ""
    return [by_template[question_template(e)].most_common(1)[0][0]
            if by_template[question_template(e)] else top for e in test]


def copy_source(sources):
    return list(sources)


def word_for_word(train_pairs, sources):
    table = defaultdict(Counter)
    for src, tgt in train_pairs:
        s, t = src.split(), tgt.split()
        for i, w in enumerate(s):
            j = min(len(t) - 1, round(i * len(t) / len(s))) if len(s) > 1 else 0
            table[w][t[j]] += 1
    return [" ".join(table[w].most_common(1)[0][0] if table[w] else w for w in src.split())
            for src in sources]
