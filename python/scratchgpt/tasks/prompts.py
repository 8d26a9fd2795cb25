"""Prompt formats, the answer-only loss mask, and greedy decoding through the KV cache.

Every example is a prompt and an answer, formatted as text

    qa          "<context>\\nQuestion: <question>\\nAnswer:"   " <answer>"
    translate   "<source>\\nTranslation:"                      " <target>"
    classify    "<text>\\nLabel:"                              " <label>"

and tokenised in two pieces, prompt and answer, followed by the end token (<|endoftext|>, or a
newline for a tokenizer without one). Tokenising the pieces apart keeps the boundary exact: the
model is trained on the same prompt ids it later decodes from. Fine-tuning puts the loss on the
answer and end tokens only (targets -1 elsewhere); decoding runs greedily from the prompt until
the end token or a newline, through the model's key/value cache (one position per new token).
Few-shot prompts join K solved examples and the question with blank lines, GPT-3 style.
"""
import numpy as np

from ..errors import UsageError

FORMATS = {
    "qa": ("{context}\nQuestion: {question}\nAnswer:", " {answer}"),
    "translate": ("{source}\nTranslation:", " {target}"),
    "classify": ("{text}\nLabel:", " {label}"),
}
SHOT_SEPARATOR = "\n\n"
# the longest answer decoded: the embedded QA answers are names and literals of at most 24
# characters; interface strings are at most 60 characters in the source language
MAX_ANSWER_TOKENS = {"qa": 24, "translate": 48}


def qa_fields(example, with_context=True):
    return {"context": example.context if with_context else "", "question": example.question,
            "answer": example.answers[0]}


def format_prompt(task, fields):
    prompt = FORMATS[task][0].format(**fields)
    return prompt.lstrip("\n")            # a question without its context starts at "Question:"


def format_answer(task, fields):
    return FORMATS[task][1].format(**fields)


def encode(tokenizer, text):
    """The ids of text; a tokenizer that cannot encode it (a character tokenizer built from
    other text) is a usage error naming the checkpoint's tokenizer."""
    try:
        return tokenizer.encode(text)
    except ValueError as e:
        raise UsageError(f"the checkpoint's tokenizer cannot encode the task's text: {e}",
                         "--ckpt", "a checkpoint with a byte-level BPE tokenizer (the default "
                         "of scratchgpt train)") from None


def end_ids(tokenizer):
    return [tokenizer.eot_id] if tokenizer.eot_id is not None else encode(tokenizer, "\n")


def encode_pair(tokenizer, prompt, answer):
    """(ids, prompt length): prompt ids, answer ids, the end token."""
    p = encode(tokenizer, prompt)
    return p + encode(tokenizer, answer) + end_ids(tokenizer), len(p)


def answer_only_batch(seqs, prompt_lens, pad_id):
    """Right-padded ids [B, T] and targets [B, T] that are -1 except where the next token is an
    answer (or end) token: position t predicts token t + 1, so the targets run from
    prompt_len - 1 to len - 2."""
    T = max(len(s) for s in seqs)
    idx = np.full((len(seqs), T), pad_id, dtype=np.int64)
    targets = np.full((len(seqs), T), -1, dtype=np.int64)
    for r, (s, p) in enumerate(zip(seqs, prompt_lens)):
        if not 0 < p < len(s):
            raise ValueError(f"row {r}: prompt length {p} leaves no answer in {len(s)} tokens")
        idx[r, :len(s)] = s
        targets[r, p - 1:len(s) - 1] = s[p:]
    return idx, targets


def greedy_decode(model, tokenizer, prompt_ids, max_new_tokens):
    """The greedy continuation of one prompt (ids), as text, up to the end token or a newline.
    The prompt keeps its last block_size - max_new_tokens tokens."""
    stop = set(end_ids(tokenizer))
    keep = max(1, model.cfg.block_size - max_new_tokens)
    ids = list(prompt_ids[-keep:])
    kv = [[None, None] for _ in range(model.cfg.n_layer)]
    new, out = ids, []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if len(ids) + len(out) > model.cfg.block_size:
                break
            logits = model._forward_cached(model._to_device(np.asarray([new])), kv,
                                           len(ids) + len(out) - len(new))
            nxt = int(model.be.asnumpy(logits)[0].argmax())
            if nxt in stop:
                break
            out.append(nxt)
            if "\n" in tokenizer.decode(out):
                break
            new = [nxt]
    finally:
        model.train(was_training)
    return tokenizer.decode(out).split("\n", 1)[0].strip()


def sequence_logprob(model, ids, start):
    """Sum of log p(ids[t] | ids[:t]) for t >= start (one forward, no cache)."""
    was_training = model.training
    model.eval()
    try:
        logits = model.be.asnumpy(model.forward(model._to_device(np.asarray([ids[:-1]])))[0])[0]
    finally:
        model._caches = None
        model.train(was_training)
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))
