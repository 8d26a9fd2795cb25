"""`scratchgpt sample` and generation from checkpoints: the KV cache changes nothing but the
cost, greedy is the argmax, long prompts are cropped with a warning."""
import json

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.checkpoint import save_checkpoint
from scratchgpt.cli import main
from scratchgpt.sample import generate_text
from scratchgpt.tokenizer import CharTokenizer

TEXT = "abcdefghij klmnopqrstuvwxyz.\n"


@pytest.fixture()
def saved(tmp_path):
    """A nano model with random (not trained) weights, saved as a checkpoint with its tokenizer."""
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig.preset("nano", vocab_size=tok.vocab_size), dtype="float32", seed=11)
    rng = np.random.default_rng(0)
    model.load_params({k: v + rng.normal(0, 0.3, v.shape) for k, v in model.params.items()})
    save_checkpoint(tmp_path, 5, model, tokenizer=tok)
    return model.eval(), tok, tmp_path


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=4),
                                      dict(temperature=0.9, top_p=0.8)])
def test_cached_and_uncached_generation_give_the_same_text(saved, sampling):
    model, tok, _ = saved
    # 30 new tokens from a 5-token prompt run past block_size=16, where the window slides
    cached = generate_text(model, tok, "abc d", 30, seed=3, num_samples=3, **sampling)
    uncached = generate_text(model, tok, "abc d", 30, seed=3, num_samples=3, use_cache=False,
                             **sampling)
    assert cached == uncached
    assert all(len(s) == 30 for s in cached)


def test_greedy_sample_is_the_argmax_of_the_logits(saved):
    model, tok, _ = saved
    text = generate_text(model, tok, "hello", 6, temperature=0.0)[0]
    ids = tok.encode("hello")
    for ch in text:
        logits, _ = model.forward(np.array([ids[-16:]]))
        assert tok.decode([int(logits[0, -1].argmax())]) == ch
        ids.append(tok.encode(ch)[0])


def test_cli_sample_matches_the_api_and_is_seeded(saved, capsys):
    model, tok, path = saved
    argv = ["sample", "--ckpt", str(path), "--prompt", "xyz", "--max-new-tokens", "12",
            "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--seed", "4", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["samples"] == second["samples"]
    api = generate_text(model, tok, "xyz", 12, temperature=0.8, top_k=5, top_p=0.9, seed=4)
    assert first["samples"] == api


def test_long_prompt_is_cropped_with_a_warning(saved):
    model, tok, _ = saved
    long_prompt = "abcdefghij" * 5                            # 50 tokens > block_size 16
    with pytest.warns(UserWarning, match="longer than the context"):
        cropped = generate_text(model, tok, long_prompt, 4, temperature=0.0)
    assert cropped == generate_text(model, tok, long_prompt[-16:], 4, temperature=0.0)


def test_sample_from_a_hugging_face_folder(saved, tmp_path, capsys):
    model, tok, _ = saved
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    tok.save(hf_dir)
    assert main(["sample", "--ckpt", str(hf_dir), "--prompt", "ab", "--max-new-tokens", "5",
                 "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["samples"] == generate_text(model, tok, "ab", 5, temperature=0.0)
