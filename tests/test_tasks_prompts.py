"""Prompt formatting, the answer-only loss mask, greedy decoding through the KV cache and
few-shot prompts, on a tiny random GPT (float64, NumPy reference)."""
import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.tasks.fewshot import shot_prompt
from scratchgpt.tasks.prompts import (answer_only_batch, encode_pair, format_answer,
                                      format_prompt, greedy_decode, sequence_logprob)
from scratchgpt.tasks.readers import QAExample
from scratchgpt.tasks.task import Task
from scratchgpt.tokenizer import train_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?=()_\"'\n"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", [ALPHABET], None)


@pytest.fixture(scope="module")
def model(tok):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=16,
                    dropout=0.0)
    return GPT(cfg, backend="numpy", dtype="float64", seed=3)


def test_formats():
    e = QAExample("def f(x=1):", "What is the default value of x in f?", ("1",), "default")
    task = Task("qa", [e], [e], "")
    assert task.prompt(e) == "def f(x=1):\nQuestion: What is the default value of x in f?\nAnswer:"
    assert task.prompt(e, with_context=False) == \
        "Question: What is the default value of x in f?\nAnswer:"
    assert task.answer(e) == " 1"
    assert format_prompt("translate", {"source": "File", "target": "Fichier"}) == \
        "File\nTranslation:"
    assert format_answer("translate", {"source": "File", "target": "Fichier"}) == " Fichier"


def test_encode_pair_ends_with_end_token(tok):
    ids, p = encode_pair(tok, "ab:", " c")
    assert ids == tok.encode("ab:") + tok.encode(" c") + tok.encode("\n") and p == 3


def test_tokenizer_that_cannot_encode(tok):
    from scratchgpt.errors import UsageError
    with pytest.raises(UsageError, match="the checkpoint's tokenizer cannot encode the task's "
                       r"text: text: character 'é' .*\(--ckpt, a checkpoint with a byte-level"):
        encode_pair(tok, "Fichier", " é")


def test_answer_only_mask():
    # row 0: prompt [5, 6, 7], answer [8, 9]; row 1: prompt [1], answer [2, 3, 4]
    idx, targets = answer_only_batch([[5, 6, 7, 8, 9], [1, 2, 3, 4]], [3, 1], pad_id=0)
    np.testing.assert_array_equal(idx, [[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]])
    # position t predicts token t + 1: only the answer tokens are targets
    np.testing.assert_array_equal(targets, [[-1, -1, 8, 9, -1], [2, 3, 4, -1, -1]])
    with pytest.raises(ValueError, match="row 0: prompt length 2 leaves no answer"):
        answer_only_batch([[1, 2]], [2], 0)


def test_masked_loss_is_the_answer_tokens_loss(model, tok):
    seqs, plens = zip(*(encode_pair(tok, p, a) for p, a in
                        [("x = 1\nQ: x?\nA:", " 1"), ("def g(y=None):\nA:", " None")]))
    idx, targets = answer_only_batch(list(seqs), list(plens), 0)
    logits, loss = model.forward(idx, targets)
    model._caches = None
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = [-logp[r, t, seqs[r][t + 1]] for r in range(2)
              for t in range(plens[r] - 1, len(seqs[r]) - 1)]
    assert len(picked) == (2 + 1) + (5 + 1)            # answer tokens + end token per row
    assert float(loss) == pytest.approx(np.mean(picked), rel=1e-12)


def test_greedy_decode_matches_generate(model, tok):
    prompt = tok.encode("def f(a=1):\nAnswer:")
    got = greedy_decode(model, tok, prompt, 12)
    full = model.generate(np.array([prompt]), 12, temperature=0.0, use_cache=False)[0]
    want = tok.decode(full[len(prompt):]).split("\n", 1)[0].strip()
    assert got == want


def test_sequence_logprob(model, tok):
    ids = tok.encode("ab cd:")
    logits = model.forward(np.array([ids[:-1]]))[0][0]
    model._caches = None
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                             keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = sum(logp[t - 1, ids[t]] for t in range(3, len(ids)))
    assert sequence_logprob(model, ids, 3) == pytest.approx(want, rel=1e-12)


def test_shot_prompt_drops_longest_shots(tok):
    shots = [("aa", "b"), ("a very long source string indeed", "c"), ("dd", "e")]
    task = Task("translate", shots, [("q", "r")], "")
    ids, n = shot_prompt(task, tok, shots, ("q", "r"), room=10 ** 6)
    assert n == 3 and tok.decode(ids) == ("aa\nTranslation: b\n\na very long source string "
                                          "indeed\nTranslation: c\n\ndd\nTranslation: e\n\n"
                                          "q\nTranslation:")
    ids, n = shot_prompt(task, tok, shots, ("q", "r"), room=55)
    assert n == 2 and "long" not in tok.decode(ids) and len(ids) == 52
