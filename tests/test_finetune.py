"""GPT-1 style fine-tuning: the head's and the model's gradients under the combined loss
against finite differences, a separable task learned end to end, the data handling and the
bag-of-words baseline."""
import json
import os

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.checkpoint import load_model, save_checkpoint
from scratchgpt.cli import main
from scratchgpt.finetune import (ClassifierHead, WeightAverage, baseline_accuracy, classify,
                                 encode_examples, make_batch, read_labelled, split_examples,
                                 split_for_scoring)
from scratchgpt.tokenizer import CharTokenizer

LAM = 0.5


def combined_loss(model, head, idx, targets, last, labels):
    _, lm = model.forward(idx, targets)
    _, cls = head.forward(model.hidden, last, labels)
    return float(cls) + LAM * float(lm)


def assert_matches_central_differences(model, head, batch, grads, rng, names, per_param):
    """Up to per_param random entries of each named parameter: the analytic gradient of
    combined_loss against its central difference (float64, eps 1e-6)."""
    params = {**model.params, **head.params}
    eps = 1e-6
    for name in names:
        w = params[name]
        for i in rng.choice(w.size, size=min(per_param, w.size), replace=False):
            old = w.flat[i]
            w.flat[i] = old + eps
            fp = combined_loss(model, head, *batch)
            w.flat[i] = old - eps
            fm = combined_loss(model, head, *batch)
            w.flat[i] = old
            numeric = (fp - fm) / (2 * eps)
            assert abs(numeric - grads[name].flat[i]) <= 1e-7 * max(1.0, abs(numeric)), (name, i)


@pytest.mark.parametrize("ln_placement", ["pre", "post"])
def test_gradients_of_cls_plus_lambda_lm_match_finite_differences(ln_placement):
    model = GPT(GPTConfig.preset("nano", ln_placement=ln_placement), dtype="float64", seed=1)
    head = ClassifierHead(3, model.cfg.n_embd, model.be, np.float64, seed=2)
    rng = np.random.default_rng(3)
    head.params["head.weight"] += rng.normal(0, 0.5, head.params["head.weight"].shape)
    seqs = [list(rng.integers(0, 32, n)) for n in (5, 9, 2)]       # ragged: padding matters
    idx, targets, last = make_batch(seqs, pad_id=0)
    labels = np.array([2, 0, 1])
    combined_loss(model, head, idx, targets, last, labels)
    dhidden, grads = head.backward()
    grads.update(model.backward(loss_weight=LAM, dhidden=dhidden))
    assert_matches_central_differences(
        model, head, (idx, targets, last, labels), grads, rng, per_param=6,
        names=("head.weight", "head.bias", "h.0.attn.c_attn.weight", "wte.weight",
               "h.1.mlp.c_proj.bias"))


def test_padding_does_not_change_the_classified_state():
    model = GPT(GPTConfig.preset("nano"), dtype="float64", seed=4).eval()
    head = ClassifierHead(2, 16, model.be, np.float64, seed=0)
    seq = [3, 7, 1, 9]
    alone, _, last = make_batch([seq], pad_id=0)
    model.forward(alone)
    a, _ = head.forward(model.hidden, last)
    padded, targets, last = make_batch([seq, seq + [5, 5, 5]], pad_id=0)
    assert targets[0].tolist() == [7, 1, 9, -1, -1, -1, -1] and last.tolist() == [3, 6]
    model.forward(padded)
    b, _ = head.forward(model.hidden, last)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-12)


def write_toy_task(path, n=240, seed=0):
    """Three classes told apart by their letters: a-c, d-f or g-i (words of length 3-8)."""
    rng = np.random.default_rng(seed)
    letters = ["abc", "def", "ghi"]
    lines = []
    for _ in range(n):
        k = int(rng.integers(3))
        word = "".join(rng.choice(list(letters[k]), size=int(rng.integers(3, 9))))
        lines.append(f"{word}\tclass_{k}")
    path.write_text("\n".join(lines) + "\n")


def save_base_model(path):
    """A fresh nano GPT over the toy task's letters, saved with its tokenizer at path."""
    tok = CharTokenizer.train("abcdefghi")
    model = GPT(GPTConfig.preset("nano", vocab_size=tok.vocab_size), dtype="float32", seed=0)
    save_checkpoint(path, 0, model, tokenizer=tok)
    return tok


def load_finetuned(ckpt, n_classes, pool="last"):
    """The fine-tuned model and its head as finetune saved them."""
    from safetensors.numpy import load_file
    ft, _, _, _ = load_model(ckpt)
    head = ClassifierHead(n_classes, ft.cfg.n_embd, ft.be, ft.dtype, pool=pool)
    head.params.update(load_file(os.path.join(ckpt, "head.safetensors")))
    return ft, head


def test_finetune_learns_a_separable_task(tmp_path, capsys):
    data = tmp_path / "toy.tsv"
    write_toy_task(data)
    save_base_model(tmp_path / "base")
    assert main(["finetune", "--data", str(data), "--ckpt", str(tmp_path / "base"),
                 "--epochs", "4", "--batch-size", "8", "--lr", "1e-2", "--out",
                 str(tmp_path / "ft"), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == ["class_0", "class_1", "class_2"]
    assert summary["n_test"] == 48 and summary["n_train"] == 192
    assert summary["accuracy"] >= 0.95
    assert summary["baseline_accuracy"] >= 0.0          # words are mostly unique: a weak baseline


def test_read_labelled_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("Great film.\t1\nAwful\tplot!\t0\n\n")
    (tmp_path / "b.tsv").write_text("meh\tneutral\n")
    (tmp_path / "readme.txt").write_text("This folder holds labelled sentences.\n")
    texts, labels = read_labelled(tmp_path)
    assert texts == ["Great film.", "Awful\tplot!", "meh"] and labels == ["1", "0", "neutral"]
    with pytest.raises(ValueError, match="line 1"):
        read_labelled(tmp_path / "readme.txt")
    tr, te = split_examples(10, 0.3, seed=0)
    assert len(te) == 3 and sorted(np.concatenate([tr, te]).tolist()) == list(range(10))


def test_bag_of_words_baseline_separates_keywords():
    rng = np.random.default_rng(0)
    filler = ["the", "a", "movie", "food", "was", "really", "quite"]
    texts, y = [], []
    for _ in range(200):
        k = int(rng.integers(2))
        words = list(rng.choice(filler, 4)) + [("good", "bad")[k]]
        texts.append(" ".join(rng.permutation(words)))
        y.append(k)
    acc = baseline_accuracy(texts[:150], y[:150], texts[150:], y[150:], 2)
    assert acc == 1.0


SENTIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sentiment")


@pytest.mark.skipif(not os.path.isdir(SENTIMENT),
                    reason=f"the sentiment sentences are not at {SENTIMENT}")
def test_sentiment_data_and_its_baseline():
    texts, labels = read_labelled(SENTIMENT)                # the readme.txt beside them is skipped
    assert len(texts) == 3000 and sorted(set(labels)) == ["0", "1"]
    y = np.array([int(v) for v in labels])
    tr, te = split_examples(len(texts), 0.2, seed=1337)
    acc = baseline_accuracy([texts[i] for i in tr], y[tr], [texts[i] for i in te], y[te], 2)
    assert acc == pytest.approx(0.8333, abs=1e-4)          # the figure in the README


def test_without_ckpt_a_small_model_is_pretrained_first_and_reused(tmp_path, capsys):
    data = tmp_path / "toy.tsv"
    write_toy_task(data, n=60)
    argv = ["finetune", "--data", str(data), "--out", str(tmp_path / "ft"), "--preset", "nano",
            "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--pretrain-steps", "3", "--pretrain-batch-size", "2",
            "--corpus-mb", "0.05", "--epochs", "1", "--no-progress", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["pretrained_from"].endswith(os.path.join("pretrain", "ckpt_000003"))
    model, _, tok, _ = load_model(first["pretrained_from"])
    assert model.cfg.n_layer == 1 and tok.kind == "bpe" and tok.vocab_size <= 300
    # the pretraining data held the 48 training texts, 16 copies each (--text-repeats)
    with open(tmp_path / "ft" / "pretrain" / "data" / "source.json") as f:
        assert json.load(f)["extra_docs"] == 48 * 16
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().err            # --json: messages go to stderr


def test_mean_pooled_head_gradients_match_finite_differences_and_ignore_padding():
    model = GPT(GPTConfig.preset("nano"), dtype="float64", seed=5)
    head = ClassifierHead(2, model.cfg.n_embd, model.be, np.float64, seed=6, pool="mean")
    rng = np.random.default_rng(7)
    head.params["head.weight"] += rng.normal(0, 0.5, head.params["head.weight"].shape)
    seqs = [list(rng.integers(0, 32, n)) for n in (6, 2, 4)]
    idx, targets, last = make_batch(seqs, pad_id=0)
    labels = np.array([1, 0, 1])
    model.forward(idx)
    logits, _ = head.forward(model.hidden, last, labels)
    # the mean over each row's own tokens, the padding left out
    for r, n in enumerate((6, 2, 4)):
        h = model.hidden[r, :n].mean(axis=0)
        np.testing.assert_allclose(logits[r], head.params["head.weight"] @ h
                                   + head.params["head.bias"], rtol=1e-12)
    combined_loss(model, head, idx, targets, last, labels)
    dhidden, grads = head.backward()
    assert np.all(dhidden[1, 2:] == 0) and np.all(dhidden[2, 4:] == 0)
    grads.update(model.backward(loss_weight=LAM, dhidden=dhidden))
    assert_matches_central_differences(model, head, (idx, targets, last, labels), grads, rng,
                                       per_param=4,
                                       names=("head.weight", "h.0.attn.c_attn.weight", "wte.weight"))


def test_weight_average_is_the_mean_of_the_last_k_epochs():
    model = GPT(GPTConfig.preset("nano"), dtype="float32", seed=0)
    params = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
    average = WeightAverage(params, model.be, k=3, epochs=5)
    for epoch in range(5):                    # epochs 2, 3, 4 are averaged: values 2, 3, 4
        params["a"][...] = epoch
        params["b"][...] = 10 * epoch
        average.end_of_epoch(epoch)
    a_before = params["a"]
    average.apply()
    assert average.count == 3 and params["a"] is a_before          # written in place
    np.testing.assert_array_equal(params["a"], np.full((2, 3), 3.0))
    np.testing.assert_array_equal(params["b"], np.full(4, 30.0))


def test_finetune_with_mean_pool_and_averaging_reports_the_averaged_model(tmp_path, capsys):
    data = tmp_path / "toy.tsv"
    write_toy_task(data, n=120)
    tok = save_base_model(tmp_path / "base")
    assert main(["finetune", "--data", str(data), "--ckpt", str(tmp_path / "base"),
                 "--epochs", "3", "--batch-size", "8", "--lr", "1e-2", "--pool", "mean",
                 "--average-epochs", "2", "--out", str(tmp_path / "ft"), "--no-progress",
                 "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["pool"] == "mean" and summary["averaged_epochs"] == 2
    assert "averaged over the last 2 epochs" in out.err
    assert summary["accuracy"] >= 0.9
    # the saved model is the averaged one: reloaded, it classifies as reported
    ft, head = load_finetuned(summary["checkpoint"], 3, pool="mean")
    texts, labels = read_labelled(data)
    tr, te = split_examples(len(texts), 0.2, seed=1337)
    seqs = encode_examples(tok, texts, ft.cfg.block_size)
    y = np.array([int(v[-1]) for v in labels])
    acc = np.mean(classify(ft, head, [seqs[i] for i in te], seqs[0][-1], 64) == y[te])
    assert acc == pytest.approx(summary["accuracy"])


def test_validation_split_is_carved_from_the_training_part_and_split_seed_fixes_it():
    from argparse import Namespace
    n = 500

    def split(**kw):
        return split_for_scoring(n, Namespace(**{"seed": 7, "split_seed": None, "test_fraction": 0.2,
                                                 "validation": False, **kw}))
    tr, te = split()
    vtr, va = split(validation=True)
    # validation: 320 / 80 out of the 400 training examples; the 100 held out are never touched
    assert (len(vtr), len(va)) == (320, 80)
    assert set(vtr) | set(va) == set(tr) and not set(vtr) & set(va)
    assert not (set(vtr) | set(va)) & set(te)
    # --split-seed: the split follows it, not --seed
    a_tr, a_te = split(seed=1, split_seed=7)
    assert np.array_equal(a_te, te) and np.array_equal(a_tr, tr)
    assert not np.array_equal(split(seed=1)[1], te)


def test_ensemble_classifies_with_the_mean_of_its_members_probabilities(tmp_path, capsys):
    data = tmp_path / "toy.tsv"
    write_toy_task(data, n=120)
    tok = save_base_model(tmp_path / "base")
    argv = ["finetune", "--data", str(data), "--ckpt", str(tmp_path / "base"), "--epochs", "1",
            "--batch-size", "8", "--lr", "3e-3", "--ensemble", "3", "--validation",
            "--out", str(tmp_path / "ft"), "--no-progress", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ensemble"] == 3 and summary["scored_on"] == "validation"
    assert (summary["task"], summary["metric"], summary["score"]) == ("classify", "accuracy",
                                                                      summary["accuracy"])
    assert summary["baselines"] == {"bag_of_words": summary["baseline_accuracy"]}
    assert [m["seed"] for m in summary["members"]] == [1337, 1338, 1339]
    assert len(summary["member_accuracy"]) == 3 and summary["n_test"] == 19   # 20 % of 96
    # recompute the ensemble from the three saved members: mean probabilities, then argmax
    from scratchgpt.finetune import class_probabilities
    texts, labels = read_labelled(data)
    y = np.array([int(v[-1]) for v in labels])
    from argparse import Namespace
    _, va = split_for_scoring(len(texts), Namespace(seed=1337, split_seed=None, test_fraction=0.2,
                                                   validation=True))
    probs = []
    for m in summary["members"]:
        ft, head = load_finetuned(m["checkpoint"], 3)
        seqs = encode_examples(tok, texts, ft.cfg.block_size)
        probs.append(class_probabilities(ft, head, [seqs[i] for i in va], seqs[0][-1], 64))
    member_acc = [float(np.mean(p.argmax(1) == y[va])) for p in probs]
    assert member_acc == pytest.approx(summary["member_accuracy"])
    assert float(np.mean(np.mean(probs, axis=0).argmax(1) == y[va])) == pytest.approx(summary["accuracy"])
    # members differ (their own head, batches and dropout), so the ensemble is not one model
    assert not np.allclose(probs[0], probs[1])


@pytest.mark.parametrize("flag", [["--ensemble", "2"], ["--validation"], ["--split-seed", "3"]])
def test_classify_only_options_are_refused_for_generative_tasks(flag, capsys):
    assert main(["finetune", "--task", "qa", *flag]) == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "--task classify" in err


def test_unknown_pool_is_refused():
    model = GPT(GPTConfig.preset("nano"), dtype="float32", seed=0)
    with pytest.raises(ValueError, match="pool"):
        ClassifierHead(2, 16, model.be, np.float32, pool="max")
    with pytest.raises(SystemExit):
        main(["finetune", "--data", "x.tsv", "--pool", "max"])


def test_adamw_lr_scale_scales_each_named_parameters_step():
    from scratchgpt.optim import AdamW
    model = GPT(GPTConfig.preset("nano"), dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4))
    params = {n: start.copy() for n in ("body", "head", "frozen")}
    grad = rng.normal(size=(3, 4))
    opt = AdamW(params, model.be, lr=1e-2, weight_decay=0.0,
                lr_scale={"body": 0.25, "frozen": 0.0})
    opt.step({n: grad.copy() for n in params})
    step = params["head"] - start                         # scale 1: not in lr_scale
    assert np.abs(step).min() > 1e-3
    np.testing.assert_allclose(params["body"] - start, 0.25 * step, rtol=1e-10)
    np.testing.assert_array_equal(params["frozen"], start)


def test_pretraining_defaults_by_task_and_explicit_values_kept():
    from scratchgpt.finetune import parse_args

    def pretraining(argv):
        args = parse_args(argv)
        return args.vocab_size, args.text_repeats
    assert pretraining(["--data", "x.tsv"]) == (4096, 16)
    assert pretraining(["--task", "qa"]) == (1024, 4)
    assert pretraining(["--task", "translate"]) == (1024, 4)
    assert pretraining(["--data", "x.tsv", "--vocab-size", "512", "--text-repeats", "2"]) == (512, 2)
