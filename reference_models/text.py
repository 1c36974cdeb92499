"""The shipped text classifier: a sentiment model over generated sentences, with its word-level tokenizer.

``load_text_classifier("onnx")`` returns the ``.onnx`` path (input ``input_ids`` int64 ``(batch,
tokens)``, output ``logits`` for ``negative``/``positive``), ``"torch"`` the module in eval mode (needs
the ``torch`` extra); :func:`text_tokenizer_path` is its tokenizer in the ``tokenizers`` library's JSON
format. Rebuilt by ``python -m gradsal.reference_models.train_text``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .zoo import Format, _check_format, data_path, load_torch_module

TEXT_MODEL = "text_classifier"


@functools.lru_cache(maxsize=1)
def _metadata_text() -> str:
    return data_path(f"{TEXT_MODEL}.json").read_text(encoding="utf-8")


def text_metadata() -> dict[str, Any]:
    """The text classifier's metadata (a fresh copy): vocabulary size, class names, accuracy, samples."""
    return json.loads(_metadata_text())


def text_tokenizer_path() -> Path:
    """The classifier's tokenizer, a ``tokenizers`` JSON file (``Tokenizer.from_file`` reads it)."""
    return data_path(text_metadata()["tokenizer"])


def load_text_classifier(format: Format = "torch") -> Any:
    """The shipped text classifier: ``"torch"`` -> ``nn.Module`` in eval mode, ``"onnx"`` -> the ``.onnx`` path."""
    entry = text_metadata()
    if _check_format(format) == "onnx":
        return data_path(entry["onnx"])
    return load_torch_module("TextClassifier", entry["kwargs"], entry["state_dict"])
