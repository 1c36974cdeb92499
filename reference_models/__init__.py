"""gradsal.reference_models: small trained models and architecture builders that ship with gradsal."""

from __future__ import annotations

import importlib
from typing import Any

from .text import TEXT_MODEL, load_text_classifier, text_metadata, text_tokenizer_path
from .zoo import (
    MODEL_NAMES,
    SampleImages,
    SampleRows,
    data_path,
    holdout_split,
    load_digits_cnn,
    load_model,
    load_tabular_mlp,
    metadata,
    sample_images,
    sample_tabular,
    standardize_tabular,
    upsample_digits,
)

# Architecture builders need torch; they are imported on first access so that importing this package
# (e.g. for the ONNX files' paths) never imports torch.
_ARCHITECTURES = (
    "DigitsCNN",
    "TabularMLP",
    "TextClassifier",
    "detector_style",
    "mobilenet_v2",
    "ocr_style",
    "resnet50",
    "small_mobilenet",
    "small_resnet",
)

__all__ = [
    "MODEL_NAMES",
    "SampleImages",
    "SampleRows",
    "TEXT_MODEL",
    "data_path",
    "holdout_split",
    "load_digits_cnn",
    "load_model",
    "load_tabular_mlp",
    "load_text_classifier",
    "metadata",
    "sample_images",
    "sample_tabular",
    "standardize_tabular",
    "text_metadata",
    "text_tokenizer_path",
    "upsample_digits",
    *_ARCHITECTURES,
]


def __getattr__(name: str) -> Any:
    if name in _ARCHITECTURES:
        return getattr(importlib.import_module(".architectures", __name__), name)
    if name in ("architectures", "train", "train_text"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ARCHITECTURES, "architectures", "train", "train_text"])
