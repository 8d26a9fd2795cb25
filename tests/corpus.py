"""The tiny training text the CLI, training and precision tests share (conftest's `text_file`
writes it): 17 distinct characters, so the char tokenizer and the model get a 17-token
vocabulary, and repetitive enough that a few dozen steps lower the loss."""
TEXT = "".join(f"the {w} sat on a mat. " for w in ("cat", "dog", "bird", "frog")) * 60
