"""scratchgpt: a GPT built from scratch so that every gradient can be studied by hand."""
from .config import GPTConfig
from .model import GPT

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig"]
