"""Rebuild the shipped reference models: ``python -m gradsal.reference_models.train [--out DIR]``.

Trains, deterministically and offline, on data bundled with scikit-learn:

- :class:`~.architectures.DigitsCNN` on the 1,797 8x8 digits (``load_digits``), pixels divided by 16 and
  upsampled bilinearly to 32x32;
- :class:`~.architectures.TabularMLP` on the 569-row breast-cancer table (``load_breast_cancer``), features
  standardised with the training split's mean and standard deviation.

Each data set is split once (20% test) with a seeded permutation whose test indices are stored in the
metadata, so the recorded test accuracy can be recomputed from the shipped files alone. Training runs in
float64 on one thread with ``torch.use_deterministic_algorithms``: float64 keeps the rounding differences
between CPUs (different BLAS kernels) far below the 1e-6 at which rebuilt weights are compared. The
weights are then cast to float32 and written as a ``state_dict`` (``torch.load(weights_only=True)``) and
as ONNX (opset 17, dynamic batch axis, inference-mode batch norm), together with ``metadata.json``, four
sample digits as PNG, four sample table rows, and both test splits as ``.npy`` (so the accuracy can be
checked without scikit-learn). Needs the ``train`` extra (torch, onnx, scikit-learn).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
OPSET = 17
TEST_FRACTION = 0.2
SAMPLE_DIGITS = (0, 3, 7, 9)  # one test image of each of these classes ships as a PNG
N_SAMPLE_ROWS = 4
DIGITS_EPOCHS = 15
DIGITS_BATCH = 64
DIGITS_LR = 1e-2
TABULAR_EPOCHS = 60
TABULAR_BATCH = 64
TABULAR_LR = 3e-3
DEFAULT_OUT = Path(__file__).resolve().parent / "data"


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices of ``n`` rows: a seeded permutation, its first 20% for testing."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as ``uint8`` 8x8 images with values 0..16, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def upsample_digits(images: np.ndarray) -> np.ndarray:
    """8x8 digits (0..16) -> ``(N, 1, 32, 32)`` float64 in [0, 1]: divided by 16, upsampled bilinearly.

    Bilinear with ``align_corners=False`` (half-pixel centres, edges clamped), as ONNX Resize and PIL use.
    """
    import torch
    import torch.nn.functional as F

    small = torch.from_numpy(images.astype(np.float64) / 16.0)[:, None]
    return F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0).numpy()


def prepare_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(1797, 1, 32, 32)`` float64 in [0, 1] (see :func:`upsample_digits`), labels."""
    images, labels = load_digits_8x8()
    return upsample_digits(images), labels


def prepare_breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The breast-cancer table ``(569, 30)`` float64, labels (0 malignant, 1 benign), feature and class names."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return (data.data.astype(np.float64), data.target.astype(np.int64),
            [str(n) for n in data.feature_names], [str(n) for n in data.target_names])


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """One thread, deterministic algorithms and a seeded generator; the previous settings come back after."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def fit(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, lr: float, seed: int) -> None:
    """Adam on the cross-entropy with a cosine-decayed learning rate, mini-batches in a seeded order."""
    import torch

    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    loss_function = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            optimiser.zero_grad()
            loss_function(model(inputs[rows]), labels[rows]).backward()
            optimiser.step()
            schedule.step()
    model.eval()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax logit is the label (the model in eval mode, its own dtype)."""
    import torch

    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        predicted = model(torch.from_numpy(x).to(dtype)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def export_onnx(model: Any, example: np.ndarray, path: Path) -> None:
    """``model`` (float32, eval mode) as ONNX opset 17 with input ``input``, output ``logits``, dynamic batch."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.from_numpy(example.astype(np.float32)),), buffer, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    path.write_bytes(buffer.getvalue())


def save_state_dict(model: Any, path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buffer)
    path.write_bytes(buffer.getvalue())


def onnx_tensor_of(path: Path, module_name: str) -> str | None:
    """Name of the last ONNX node output produced inside module ``module_name`` (e.g. for Grad-CAM)."""
    import onnx

    prefix = "/" + module_name.replace(".", "/") + "/"
    outputs = [n.output[0] for n in onnx.load(str(path)).graph.node if n.name.startswith(prefix)]
    return outputs[-1] if outputs else None


def train_digits(out: Path, seed: int) -> dict[str, Any]:
    """Train, export and describe the digits CNN; returns its metadata entry."""
    from .architectures import DigitsCNN

    images, y = load_digits_8x8()
    x = upsample_digits(images)
    train, test = split_indices(len(x), seed)
    np.save(out / "digits_test.npy", images[test], allow_pickle=False)
    with deterministic_torch(seed):
        model = DigitsCNN().double()
        fit(model, x[train], y[train], epochs=DIGITS_EPOCHS, batch=DIGITS_BATCH, lr=DIGITS_LR, seed=seed)
    model = model.float().eval()
    save_state_dict(model, out / "digits_cnn.pt")
    export_onnx(model, x[:1], out / "digits_cnn.onnx")
    samples = write_digit_samples(out, x, y, test)
    test_accuracy = accuracy(model, x[test].astype(np.float32), y[test])
    return {
        "architecture": "DigitsCNN", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 8},
        "onnx": "digits_cnn.onnx", "state_dict": "digits_cnn.pt", "input_name": "input", "output_name": "logits",
        "input_shape": [1, 32, 32], "input_range": [0.0, 1.0],
        "preprocessing": "sklearn load_digits 8x8 images / 16, bilinear upsample 8x8 -> 32x32 (align_corners=False)",
        "class_names": [str(i) for i in range(10)],
        "gradcam_layer": "block3", "gradcam_onnx_tensor": onnx_tensor_of(out / "digits_cnn.onnx", "block3"),
        "dataset": "sklearn.datasets.load_digits", "n_train": len(train), "n_test": len(test),
        "test_indices": test.tolist(), "test_labels": y[test].tolist(), "test_accuracy": test_accuracy,
        "test_file": "digits_test.npy", "test_file_format": "uint8 (n_test, 8, 8), values 0..16, before upsampling",
        "training": {"optimizer": "Adam", "lr": DIGITS_LR, "schedule": "cosine", "epochs": DIGITS_EPOCHS,
                     "batch_size": DIGITS_BATCH, "dtype": "float64, shipped as float32"},
        "samples": samples,
    }


def write_digit_samples(out: Path, x: np.ndarray, y: np.ndarray, test: np.ndarray) -> list[dict[str, Any]]:
    """The first test image of each class in ``SAMPLE_DIGITS`` as an 8-bit grayscale 32x32 PNG."""
    from PIL import Image

    samples = []
    for digit in SAMPLE_DIGITS:
        index = int(test[np.flatnonzero(y[test] == digit)[0]])
        pixels = np.round(x[index, 0] * 255.0).astype(np.uint8)
        name = f"digit_{digit}.png"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)  # uint8 (H, W): mode "L"
        (out / name).write_bytes(buffer.getvalue())
        samples.append({"file": name, "label": digit, "dataset_index": index})
    return samples


def train_tabular(out: Path, seed: int) -> dict[str, Any]:
    """Train, export and describe the breast-cancer MLP; returns its metadata entry."""
    from .architectures import TabularMLP

    raw, y, feature_names, class_names = prepare_breast_cancer()
    train, test = split_indices(len(raw), seed)
    mean, std = raw[train].mean(axis=0), raw[train].std(axis=0)
    np.save(out / "tabular_test.npy", raw[test], allow_pickle=False)
    x = (raw - mean) / std
    with deterministic_torch(seed):
        model = TabularMLP().double()
        fit(model, x[train], y[train], epochs=TABULAR_EPOCHS, batch=TABULAR_BATCH, lr=TABULAR_LR, seed=seed)
    model = model.float().eval()
    save_state_dict(model, out / "tabular_mlp.pt")
    export_onnx(model, x[:1], out / "tabular_mlp.onnx")
    rows = test[:N_SAMPLE_ROWS]
    np.save(out / "tabular_samples.npy", x[rows].astype(np.float32), allow_pickle=False)
    return {
        "architecture": "TabularMLP", "kwargs": {"n_features": 30, "n_classes": 2, "hidden": [32, 16]},
        "onnx": "tabular_mlp.onnx", "state_dict": "tabular_mlp.pt", "input_name": "input", "output_name": "logits",
        "input_shape": [30], "preprocessing": "(x - mean) / std per feature, statistics of the training split",
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "feature_names": feature_names, "class_names": class_names,
        "dataset": "sklearn.datasets.load_breast_cancer", "n_train": len(train), "n_test": len(test),
        "test_indices": test.tolist(), "test_labels": y[test].tolist(),
        "test_accuracy": accuracy(model, x[test].astype(np.float32), y[test]),
        "test_file": "tabular_test.npy", "test_file_format": "float64 (n_test, 30), raw, before standardising",
        "training": {"optimizer": "Adam", "lr": TABULAR_LR, "schedule": "cosine", "epochs": TABULAR_EPOCHS,
                     "batch_size": TABULAR_BATCH, "dtype": "float64, shipped as float32"},
        "samples": {"file": "tabular_samples.npy", "dtype": "float32, standardised",
                    "labels": y[rows].tolist(), "dataset_indices": rows.tolist(), "raw": raw[rows].tolist()},
    }


def build(out: Path = DEFAULT_OUT, seed: int = SEED) -> dict[str, Any]:
    """Train both models into ``out`` and write ``metadata.json``, then the text classifier
    (:mod:`.train_text`, with its own ``text_classifier.json``); returns ``metadata.json``'s content."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format_version": 1, "seed": seed, "opset": OPSET, "torch_version": torch.__version__.split("+")[0],
        "rebuild": "python -m gradsal.reference_models.train",
        "models": {"digits_cnn": train_digits(out, seed), "tabular_mlp": train_tabular(out, seed)},
    }
    (out / "metadata.json").write_text(compact_json(metadata), encoding="utf-8")
    from .train_text import build as build_text_classifier  # its own metadata file: text_classifier.json

    build_text_classifier(out, seed)
    return metadata


def compact_json(value: Any) -> str:
    """Indented JSON with each list of numbers on one line (the test indices stay readable)."""
    text = json.dumps(value, indent=1)
    compact = re.sub(r"\[[-0-9.,e\s]*\]", lambda m: " ".join(m.group(0).split()), text)
    return (compact if json.loads(compact) == value else text) + "\n"


def rebuild_arguments(module: str, what: str, seed: int, argv: list[str] | None) -> argparse.Namespace:
    """``--out`` and ``--seed`` of a script ``python -m gradsal.reference_models.<module>`` rebuilding ``what``."""
    parser = argparse.ArgumentParser(prog=f"python -m gradsal.reference_models.{module}",
                                     description=f"Rebuild the shipped {what}, deterministically.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write into (default: the package's)")
    parser.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed}, the shipped one's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = rebuild_arguments("train", "reference models", SEED, argv)
    start = time.perf_counter()
    metadata = build(args.out, args.seed)
    seconds = time.perf_counter() - start
    for name, entry in metadata["models"].items():
        print(f"{name}: test accuracy {entry['test_accuracy']:.4f} on {entry['n_test']} held-out rows")
    files = sorted(p for p in args.out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files ({total / 1024:.0f} KiB) to {args.out} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
