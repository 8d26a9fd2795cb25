"""One task's data, split and scoring, shared by `finetune --task` and `eval --task`: both
build the split from the same arguments (--data, --lang, --test-fraction, --seed, --max-train,
--max-test), so fine-tuned and few-shot numbers are measured on the same held-out examples."""
from dataclasses import dataclass

import numpy as np

from . import baselines, metrics
from .prompts import format_answer, format_prompt, qa_fields
from .qa_data import qa_split
from .translation_data import check_fraction, translation_split

METRICS = {"qa": "exact_match", "translate": "bleu", "classify": "accuracy"}


@dataclass
class Task:
    name: str
    train: list
    test: list
    description: str

    @property
    def metric(self):
        return METRICS[self.name]

    def fields(self, example, with_context=True):
        if self.name == "qa":
            return qa_fields(example, with_context)
        if self.name == "translate":
            return {"source": example[0], "target": example[1]}
        return {"text": example[0], "label": example[1]}

    def prompt(self, example, with_context=True):
        return format_prompt(self.name, self.fields(example, with_context))

    def answer(self, example):
        return format_answer(self.name, self.fields(example))

    def score(self, predictions, examples=None):
        """{metric: value} of predictions on examples (default: the test split)."""
        examples = self.test if examples is None else examples
        if self.name == "qa":
            return metrics.squad_scores(predictions, [e.answers for e in examples])
        if self.name == "translate":
            return metrics.translation_scores(predictions, [t for _, t in examples])
        return {"accuracy": metrics.accuracy(predictions, [y for _, y in examples])}

    def baselines(self):
        """{baseline name: score of the task's metric} of the model-free baselines."""
        if self.name == "qa":
            preds = baselines.most_frequent_answer(self.train, self.test)
            return {"most_frequent_answer": self.score(preds)[self.metric]}
        if self.name == "translate":
            sources = [s for s, _ in self.test]
            return {"copy_source": self.score(baselines.copy_source(sources))[self.metric],
                    "word_for_word": self.score(baselines.word_for_word(self.train, sources))
                    [self.metric]}
        return {}


def _sample(examples, limit, seed):
    if limit is None or len(examples) <= limit:
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:limit])
    return [examples[i] for i in keep]


def load_task(args):
    """The Task that args name (task, data, lang, test_fraction, seed, max_train, max_test)."""
    check_fraction(args.test_fraction)
    if args.task == "qa":
        train, test, desc = qa_split(args.data, args.test_fraction, args.seed)
    elif args.task == "translate":
        train, test, desc = translation_split(args.data, args.lang, args.test_fraction, args.seed)
    else:
        from ..finetune import read_labelled, split_examples
        from ..errors import UsageError
        if args.data is None:
            raise UsageError("--task classify needs labelled texts", "--data",
                             "a text<TAB>label file or a folder of them")
        texts, labels = read_labelled(args.data)
        tr, te = split_examples(len(texts), args.test_fraction, args.seed)
        train = [(texts[i], labels[i]) for i in tr]
        test = [(texts[i], labels[i]) for i in te]
        desc = f"{len(texts)} labelled texts in {args.data}"
    return Task(args.task, _sample(train, args.max_train, args.seed),
                _sample(test, args.max_test, args.seed + 1), desc)


def add_task_data_arguments(p, default_task, lm=None):
    """--task, --data and the split's flags. lm: the help of a task "lm" (`scratchgpt eval`'s
    language-model loss) and of its --data, when the command offers it."""
    from ..cli import nonneg_int, open_fraction, positive_int
    p.add_argument("--task", default=default_task,
                   choices=(("lm",) if lm else ()) + ("classify", "qa", "translate"),
                   help=(f"lm: {lm[0]}; " if lm else "") + "classify: text<TAB>label files, a "
                   "head on the last token; qa: extractive question answering (SQuAD EM/F1); "
                   f"translate: source -> target (BLEU, chrF). Default {default_task}")
    p.add_argument("--data", help=(f"lm: {lm[1]}; " if lm else "") + "classify: text<TAB>label "
                   "file or folder; qa: SQuAD v1.1/v2 .json or .jsonl (default: the standard "
                   "library reading-comprehension set); translate: source<TAB>target .tsv, .po, "
                   ".mo, or a folder of them (default: this machine's message catalogues of --lang)")
    p.add_argument("--lang", default="fr", help="translate without --data: the language of "
                   "/usr/share/locale/LANG/LC_MESSAGES/*.mo (default fr)")
    p.add_argument("--test-fraction", type=open_fraction, default=None,
                   help="held-out share (default 0.2 for classify, 0.1 for qa and translate)")
    p.add_argument("--max-train", type=positive_int, default=None,
                   help="at most this many training examples, a seeded sample (default: all; "
                   "translate 20000; finetune --task classify always uses all)")
    p.add_argument("--max-test", type=positive_int, default=None,
                   help="at most this many held-out examples (default: qa and translate 500, "
                   "classify all; finetune --task classify always scores all)")
    p.add_argument("--seed", type=nonneg_int, default=1337)


TASK_DEFAULTS = {   # test_fraction, max_train, max_test; for finetune: the context and the
    "classify": (0.2, None, None, 64, 400, 5),      # pretraining steps of a model pretrained
    "qa": (0.1, None, 500, 192, 400, 3),            # here, the fine-tuning epochs
    "translate": (0.1, 20000, 500, 96, 1200, 6),
}


def fill_task_defaults(args):
    test_fraction, max_train, max_test, block, pretrain_steps, epochs = TASK_DEFAULTS[args.task]
    if args.test_fraction is None:
        args.test_fraction = test_fraction
    if args.max_train is None:
        args.max_train = max_train
    if args.max_test is None:
        args.max_test = max_test
    if hasattr(args, "block_size") and args.block_size is None:
        args.block_size = block
    if hasattr(args, "epochs") and args.epochs is None:
        args.epochs = epochs
    if hasattr(args, "pretrain_steps") and args.pretrain_steps is None:
        args.pretrain_steps = pretrain_steps
    return args
