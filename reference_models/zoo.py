"""Access to the shipped reference models, their metadata and sample inputs.

Nothing here imports torch or pillow until a function needs it: ``load_digits_cnn(format="onnx")``
returns a file path, ``format="torch"`` builds the module (needs the ``torch`` extra); ``sample_images``
decodes PNGs with pillow (the ``viz`` extra).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ..core.errors import InputError, MissingDependencyError

DATA_DIR = Path(__file__).resolve().parent / "data"
MODEL_NAMES = ("digits_cnn", "tabular_mlp")
Format = Literal["torch", "onnx"]


class SampleImages(NamedTuple):
    """Sample digits: ``images`` ``(N, 1, 32, 32)`` float32 in [0, 1] (the model's input), their labels."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[Path]


class SampleRows(NamedTuple):
    """Sample table rows: ``features`` standardised ``(N, 30)`` float32 (the model's input), ``raw`` values."""

    features: np.ndarray
    raw: np.ndarray
    labels: np.ndarray
    feature_names: list[str]
    class_names: list[str]


def data_path(name: str) -> Path:
    """Path of a shipped file, e.g. ``data_path("digits_cnn.onnx")``; an unknown name lists the files."""
    path = DATA_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in DATA_DIR.glob("*") if p.is_file())
        raise InputError(f"no shipped reference-model file {name!r}: choose one of {', '.join(shipped)} (or "
                         "rebuild them with `python -m gradsal.reference_models.train`)")
    return path


@functools.lru_cache(maxsize=1)
def _metadata_text() -> str:
    return data_path("metadata.json").read_text(encoding="utf-8")


def metadata(model: str | None = None) -> dict[str, Any]:
    """The shipped ``metadata.json`` (a fresh copy), or one model's entry (``"digits_cnn"``, ``"tabular_mlp"``).

    Holds the test accuracy, input shape and preprocessing, class and feature names, normalisation
    statistics, the test split's indices, opset, seed and the sample inputs' labels.
    """
    everything = json.loads(_metadata_text())
    if model is None:
        return everything
    return everything["models"][_check_model(model)]


def _check_model(name: str) -> str:
    if name not in MODEL_NAMES:
        raise InputError(f"unknown reference model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    return name


def _check_format(format: str) -> str:
    if format not in ("torch", "onnx"):
        raise InputError(f"format={format!r}: choose 'torch' (an nn.Module in eval mode) or 'onnx' (the file path)")
    return format


def load_model(name: str, format: Format = "torch") -> Any:
    """A shipped model: ``format="torch"`` -> the ``nn.Module`` in eval mode, ``"onnx"`` -> the ``.onnx`` path.

    The torch module is built from its architecture in code and loads the ``state_dict`` with
    ``torch.load(..., weights_only=True)``, so no pickled code is ever executed.
    """
    entry = metadata(name)
    if _check_format(format) == "onnx":
        return data_path(entry["onnx"])
    return load_torch_module(entry["architecture"], entry["kwargs"], entry["state_dict"])


def load_torch_module(architecture: str, kwargs: dict[str, Any], state_dict: str) -> Any:
    """``architectures.<architecture>(**kwargs)`` with the shipped ``state_dict`` file loaded, in eval mode."""
    try:
        import torch

        from . import architectures
    except ImportError as exc:
        raise MissingDependencyError("loading a reference model as torch needs PyTorch: pip install "
                                     "'gradsal[torch]' (or use format='onnx')") from exc
    module = getattr(architectures, architecture)(**kwargs)
    module.load_state_dict(torch.load(data_path(state_dict), map_location="cpu", weights_only=True))
    return module.eval()


def load_digits_cnn(format: Format = "torch") -> Any:
    """The shipped digits CNN (1x32x32 in [0, 1] -> 10 logits): a torch module in eval mode or the ONNX path."""
    return load_model("digits_cnn", format)


def load_tabular_mlp(format: Format = "torch") -> Any:
    """The shipped breast-cancer MLP (30 standardised features -> 2 logits): torch module or ONNX path."""
    return load_model("tabular_mlp", format)


def sample_images() -> SampleImages:
    """The shipped sample digits, decoded from their PNGs (so exactly what a user of the files gets)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("reading the sample PNGs needs pillow: pip install 'gradsal[viz]'") from exc
    entry = metadata("digits_cnn")
    paths = [data_path(s["file"]) for s in entry["samples"]]
    images = []
    for path in paths:
        with Image.open(path) as picture:
            images.append(np.asarray(picture.convert("L"), dtype=np.float32) / 255.0)
    labels = np.array([s["label"] for s in entry["samples"]], dtype=np.int64)
    return SampleImages(np.stack(images)[:, None], labels, list(entry["class_names"]), paths)


def sample_tabular() -> SampleRows:
    """The shipped sample rows of the breast-cancer test split, standardised and raw, with labels and names."""
    entry = metadata("tabular_mlp")
    samples = entry["samples"]
    features = np.load(data_path(samples["file"]), allow_pickle=False)
    return SampleRows(features, np.array(samples["raw"], dtype=np.float64),
                      np.array(samples["labels"], dtype=np.int64), list(entry["feature_names"]),
                      list(entry["class_names"]))


def holdout_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A shipped model's held-out test split, model-ready: ``(x float32, labels int64)`` (no scikit-learn needed).

    ``digits_cnn``: the stored 8x8 images upsampled like the training data (:func:`upsample_digits`);
    ``tabular_mlp``: the stored raw rows standardised with the training statistics.
    """
    entry = metadata(name)
    stored = np.load(data_path(entry["test_file"]), allow_pickle=False)
    labels = np.array(entry["test_labels"], dtype=np.int64)
    if name == "digits_cnn":
        return upsample_digits(stored).astype(np.float32), labels
    return standardize_tabular(stored), labels


def upsample_digits(images: np.ndarray, size: int = 32) -> np.ndarray:
    """8x8 digits with values 0..16 ``(N, 8, 8)`` -> ``(N, 1, size, size)`` float64 in [0, 1], in NumPy.

    Divides by 16 and resizes bilinearly with half-pixel centres and clamped edges (``align_corners=False``,
    as torch's ``interpolate``, ONNX Resize and pillow do), the preprocessing the digits CNN was trained on.
    """
    pixels = np.asarray(images, dtype=np.float64) / 16.0
    if pixels.ndim != 3:
        raise InputError(f"images have shape {pixels.shape}: pass a stack of grayscale images (N, H, W)")
    rows = _bilinear_matrix(pixels.shape[1], size)
    columns = _bilinear_matrix(pixels.shape[2], size)
    return np.einsum("oh,nhw,pw->nop", rows, pixels, columns)[:, None].clip(0.0, 1.0)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D linear interpolation at half-pixel-centred positions, edges clamped."""
    source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lower), 1.0 - (source - lower))
    np.add.at(weights, (np.arange(n_out), upper), source - lower)
    return weights


def standardize_tabular(raw: np.ndarray) -> np.ndarray:
    """Raw breast-cancer features ``(N, 30)`` -> the MLP's input ``(raw - mean) / std`` as float32."""
    stats = metadata("tabular_mlp")["normalization"]
    array = np.asarray(raw, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != len(stats["mean"]):
        raise InputError(f"raw features have shape {array.shape}: pass (N, {len(stats['mean'])}) rows in the order "
                         "of metadata('tabular_mlp')['feature_names']")
    return ((array - np.array(stats["mean"])) / np.array(stats["std"])).astype(np.float32)
