"""Compression: weight-only int8 / int4 quantisation (RTN, GPTQ), pruning (magnitude, 2:4) with
masked recovery, the compressed checkpoint that GPT.load / sample / eval read, and its report.

    quantize.py   RTN and GPTQ of one layer (NumPy)
    prune.py      masks and the masked AdamW recovery
    store.py      the checkpoint format; running a model's linears through quant_linear
    evaluate.py   validation loss of any checkpoint on fixed tokens
    command.py    `scratchgpt compress` (and the loss behind `scratchgpt eval`)

The op itself is quant_linear, in its four places (docs/gradients/quant_linear.md,
reference/quant_linear.py, csrc/quant_linear.cu, tests/test_quant_linear*.py).
"""
from .command import LM_EVAL_HELP, add_eval_arguments, register, run_compress, run_eval   # noqa: F401
from .store import attach, decompress, is_compressed   # noqa: F401
