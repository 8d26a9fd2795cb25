"""`scratchgpt compress` and `scratchgpt eval` end to end on a nano model: the compressed
checkpoint round trip (GPT.load, sample, eval), quantised linears decoding through the
quant_linear kernel on the host backend, pruning masks held through recovery, and one clear
error for each bad input."""
import json
import os

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.checkpoint import save_checkpoint
from scratchgpt.cli import main
from scratchgpt.compress.store import QuantAwareLinear
from scratchgpt.data import write_shard
from scratchgpt.reference.quant_linear import QuantizedWeight
from scratchgpt.tokenizer import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """RUN/ with a nano checkpoint (random weights of a realistic spread) and RUN/data shards."""
    root = tmp_path_factory.mktemp("run")
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig.preset("nano", vocab_size=tok.vocab_size), dtype="float32", seed=3)
    rng = np.random.default_rng(0)
    model.load_params({k: v + rng.normal(0, 0.2, v.shape) for k, v in model.params.items()})
    save_checkpoint(str(root), 10, model, tokenizer=tok)
    ids = np.asarray(tok.encode(TEXT), np.int64)
    os.makedirs(root / "data")
    write_shard(str(root / "data" / "train_000000.bin"), np.tile(ids, 3), tok.vocab_size)
    write_shard(str(root / "data" / "val_000000.bin"), ids[:600], tok.vocab_size)
    return root


def cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def compress(capsys, run, out, *flags):
    code, stdout, err = cli(capsys, "compress", "--ckpt", run, "--out", out, "--json",
                            "--eval-tokens", 256, *flags)
    assert code == 0, err
    return json.loads(stdout.strip().splitlines()[-1])


def eval_json(capsys, ckpt, *flags):
    code, out, err = cli(capsys, "eval", "--ckpt", ckpt, "--json", "--max-tokens", 256, *flags)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_int8_rtn_round_trip_and_eval(run, tmp_path, capsys):
    out = tmp_path / "int8"
    report = compress(capsys, run, out, "--quantize", "int8")
    src, dst = eval_json(capsys, run, "--backend", "numpy"), eval_json(capsys, out, "--backend", "numpy")
    assert set(dst) >= {"val_loss", "perplexity", "tokens", "size_bytes"}
    assert src["tokens"] == dst["tokens"] == 256
    assert dst["val_loss"] == pytest.approx(report["after"]["val_loss"], rel=1e-9)
    assert abs(dst["val_loss"] / src["val_loss"] - 1) < 0.01
    assert dst["perplexity"] == pytest.approx(np.exp(dst["val_loss"]))
    assert dst["size_bytes"] == os.path.getsize(out / "model.safetensors") < src["size_bytes"]
    assert (out / "report.md").read_text().startswith("# Compression of")
    # the file holds int8 codes and per-row scales for the block matrices, wte stays float
    from safetensors.numpy import load_file
    t = load_file(str(out / "model.safetensors"))
    assert t["h.0.mlp.c_fc.weight.qweight"].dtype == np.int8
    assert t["h.0.mlp.c_fc.weight.scale"].shape == (64,)
    assert "wte.weight" in t and "h.0.mlp.c_fc.weight" not in t


def test_int4_gptq_loads_everywhere_and_decodes_through_the_kernel(run, tmp_path, capsys):
    out = tmp_path / "int4"
    report = compress(capsys, run, out, "--quantize", "int4", "--group-size", 8, "--method", "gptq",
                      "--calib-tokens", 256)
    assert report["after"]["size_bytes"] < report["before"]["size_bytes"]
    ref = GPT.load(out)                                   # numpy: the reference dequantises
    host = GPT.load(out, backend="host")
    assert isinstance(host.be.linear, QuantAwareLinear)
    assert isinstance(host.params_lp["h.1.attn.c_attn.weight"], QuantizedWeight)
    idx = np.asarray([[1, 2, 3, 4, 5, 6, 7]])
    a, b = ref.eval().forward(idx)[0], host.eval().forward(idx)[0]
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-5
    # decode: one token at a time through the GEMV kernel, the same greedy text as numpy
    np.testing.assert_array_equal(ref.generate(idx, 12, temperature=0), host.generate(idx, 12, temperature=0))
    # the dense copy the numpy backend reads is the dequantisation of what the file holds
    from scratchgpt.reference import quant_linear as ql
    qw = host.quantized["h.0.mlp.c_proj.weight"]
    np.testing.assert_array_equal(ref.params["h.0.mlp.c_proj.weight"], ql.dequantize(qw))
    with pytest.raises(Exception, match="inference-only"):
        host.train().forward(idx, idx)
        host.backward()
    code, text, err = cli(capsys, "sample", "--ckpt", out, "--prompt", "the ", "--max-new-tokens", 10,
                          "--backend", "host", "--seed", 0)
    assert code == 0 and text.startswith("the "), err


def test_gptq_is_closer_than_rtn_on_the_calibrated_layers(run, tmp_path, capsys):
    """On the first layer (whose inputs neither method changes), GPTQ's output error on the
    calibration inputs is below round-to-nearest's at the same group size."""
    from scratchgpt.compress import quantize as qz
    from scratchgpt.compress.command import calibration_batches, layer_inputs
    from scratchgpt.data import load_split
    compress(capsys, run, tmp_path / "rtn", "--quantize", "int4", "--group-size", 16)
    compress(capsys, run, tmp_path / "gptq", "--quantize", "int4", "--group-size", 16,
             "--method", "gptq", "--calib-tokens", 512)
    layers = json.loads((tmp_path / "gptq" / "report.json").read_text())["layers"]
    assert all(0 <= r["output_rel_error"] < 1 for r in layers)
    source = GPT.load(run).eval()
    name = "h.0.attn.c_attn.weight"
    batches = calibration_batches(load_split(str(run / "data"), "train"), 512, 16)
    h, n = None, 0
    for x in layer_inputs(source, name, batches):
        h, n = qz.add_hessian(h, n, x)
    w = source.params[name]
    errors = {m: qz.output_error(w, GPT.load(tmp_path / m).params[name], h) for m in ("rtn", "gptq")}
    assert errors["gptq"] < errors["rtn"], errors
    assert layers[0]["output_rel_error"] == pytest.approx(errors["gptq"], rel=1e-6)


def test_prune_recover_holds_the_masks(run, tmp_path, capsys):
    out = tmp_path / "p50"
    report = compress(capsys, run, out, "--prune", "0.5", "--recover-steps", 3, "--batch-size", 4)
    assert len(report["recover_losses"]) == 3
    model = GPT.load(out)
    for i in range(2):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            w = model.params[f"h.{i}.{name}.weight"]
            assert abs((w == 0).mean() - 0.5) < 0.01
    assert report["after"]["size_bytes"] < report["before"]["size_bytes"]
    meta = json.loads((out / "compression.json").read_text())
    assert meta["prune"] == {"kind": "magnitude", "sparsity": 0.5, "global": False}


def test_two_four_then_int8(run, tmp_path, capsys):
    out = tmp_path / "24q"
    compress(capsys, run, out, "--prune", "2:4", "--quantize", "int8", "--method", "gptq",
             "--calib-tokens", 256)
    model = GPT.load(out)
    w = model.params["h.0.mlp.c_fc.weight"]
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(axis=2) <= 2).all()


@pytest.mark.parametrize("flags,message", [
    (["--quantize", "int4", "--group-size", "24"], "--group-size 24"),
    (["--quantize", "int4", "--group-size", "5"], "--group-size 5"),
    (["--prune", "1.0"], "--prune, a fraction in [0, 1)"),
    (["--quantize", "int8", "--method", "gptq", "--calib-tokens", "32"],
     "--calib-tokens 32, at least 64"),
    (["--quantize", "int8", "--method", "gptq", "--calib-tokens", "100000"],
     "fewer than the 100000 asked for"),
    (["--recover-steps", "5"], "--recover-steps 5"),
    ([], "nothing to do"),
])
def test_bad_input_is_one_clear_error(run, tmp_path, capsys, flags, message):
    code, out, err = cli(capsys, "compress", "--ckpt", run, "--out", tmp_path / "x", *flags)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_an_existing_folder_is_replaced_only_when_it_is_a_compressed_checkpoint(run, tmp_path, capsys):
    code, out, err = cli(capsys, "compress", "--ckpt", run, "--out", run, "--quantize", "int8")
    assert code == 2 and "exists and is not a compressed checkpoint" in err, err
    assert (run / "ckpt_000010" / "model.safetensors").is_file()
    compress(capsys, run, tmp_path / "again", "--quantize", "int8")
    compress(capsys, run, tmp_path / "again", "--quantize", "int4", "--group-size", 8)
    assert json.loads((tmp_path / "again" / "compression.json").read_text())["quantize"] == "int4"


def test_an_already_compressed_checkpoint_is_refused(run, tmp_path, capsys):
    compress(capsys, run, tmp_path / "once", "--quantize", "int8")
    code, out, err = cli(capsys, "compress", "--ckpt", tmp_path / "once", "--out", tmp_path / "twice",
                         "--quantize", "int4")
    assert code == 2 and "already compressed" in err and len(err.strip().splitlines()) == 1, err


def test_eval_needs_data_it_can_find(tmp_path, capsys, run):
    code, out, err = cli(capsys, "eval", "--ckpt", run, "--data", tmp_path / "nothing")
    assert code == 1 and "no validation shards here" in err, err


@pytest.mark.cuda
def test_compressed_model_on_the_cuda_backend(run, tmp_path, capsys):
    """The quantised linears through the cuda backend's binding path (a GPU, or the emulated
    device under SCRATCHGPT_EMULATE_CUDA=1) give the numpy reference's logits."""
    from scratchgpt.kernels import backend_status
    status = backend_status("cuda")
    if not status["available"]:
        pytest.skip(f"cuda backend unavailable: {status['reason']}")
    out = tmp_path / "int4"
    compress(capsys, run, out, "--quantize", "int4", "--group-size", 16)
    ref, dev = GPT.load(out).eval(), GPT.load(out, backend="cuda").eval()
    idx = np.asarray([[3, 1, 4, 1, 5]])
    a, b = ref.forward(idx)[0], dev.be.asnumpy(dev.forward(idx)[0])
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-5
    np.testing.assert_array_equal(ref.generate(idx, 8, temperature=0), dev.generate(idx, 8, temperature=0))
