"""Tasks a GPT is fine-tuned or prompted for, beyond language modelling.

    readers.py           SQuAD v1.1/v2 JSON and JSON Lines, source<TAB>target TSV, .po, .mo
    qa_data.py           the question-answering split; the standard library reading set
    translation_data.py  the translation split; the machine's message catalogues
    task.py              one task's split, prompts and scoring, shared by finetune and eval
    prompts.py           prompt formats, the answer-only loss mask, greedy decoding (KV cache)
    metrics.py           SQuAD EM / F1, BLEU / chrF (sacrebleu), accuracy
    baselines.py         model-free baselines
    generative.py        `scratchgpt finetune --task qa | translate`
    fewshot.py           `scratchgpt eval --task ... --shots K`

Classification (`finetune --task classify`, a head on the last token) lives in finetune.py.
"""
