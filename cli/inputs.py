"""Reading what the command line is given: model files, images, folders, ``.npy`` arrays, label files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, MissingDependencyError, ModelError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}
GRAY_MODES = {"1", "L", "LA", "La"}  # pillow modes of 8-bit (or 1-bit) grayscale images


@dataclass(frozen=True)
class LoadedModel:
    """A backend and what the model file says about its input: (C, H, W) where declared, else None."""

    backend: Any
    kind: str  # "onnx" or "torch"
    input_chw: tuple[int | None, int | None, int | None]
    path: Path


@dataclass(frozen=True)
class Sample:
    """One input: the preprocessed array (C, H, W) or (F,), the picture to draw on, and its name."""

    name: str
    array: np.ndarray
    display: np.ndarray | None  # (H, W, C) float in [0, 1], before normalisation


def load_model(path: str, *, output_name: str | None = None) -> LoadedModel:
    """An ONNX file, a TorchScript file, or a ``torch.export`` program (``.pt2``), as a backend."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model file {path!r} does not exist (pass the path to an .onnx, .pt2 or TorchScript file)")
    suffix = file.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(file, output_name)
    if suffix == ".pt2":
        return _load_torch_export(file)
    if suffix in (".ts", ".torchscript", ".jit", ".pt", ".pth", ".zip"):
        return _load_torchscript(file, suffix)
    raise InputError(
        f"cannot tell what kind of model {path!r} is from its suffix {suffix!r}: use .onnx for ONNX, .pt2 for "
        "a torch.export program, or .ts/.pt for a TorchScript file."
    )


def _load_onnx(file: Path, output_name: str | None) -> LoadedModel:
    from ..backends.onnx import OnnxBackend

    backend = OnnxBackend(str(file), output_name=output_name)
    shape = backend.input_shape if hasattr(backend, "input_shape") else None
    chw: tuple[int | None, int | None, int | None] = (None, None, None)
    if shape is not None and len(shape) == 4:
        chw = tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])  # type: ignore[assignment]
    elif shape is not None and len(shape) == 2:
        chw = (shape[1] if isinstance(shape[1], int) else None, None, None)
    return LoadedModel(backend, "onnx", chw, file)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "PyTorch model files need PyTorch: pip install 'gradsal[torch]'"
        ) from exc
    return torch


def _load_torchscript(file: Path, suffix: str) -> LoadedModel:
    from ..backends.torch import TorchBackend

    torch = _torch()
    try:
        module = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        hint = ""
        if suffix in PICKLE_SUFFIXES:
            hint = (
                " gradsal never unpickles a model (a pickle can run arbitrary code when loaded): save it with "
                "torch.jit.script(model).save('model.pt') or torch.export.save(torch.export.export(model, "
                "(x,)), 'model.pt2')."
            )
        raise ModelError(f"{file} is not a TorchScript file ({str(exc).splitlines()[0]}).{hint}") from exc
    module.eval()
    return LoadedModel(TorchBackend(module), "torch", (None, None, None), file)


def _load_torch_export(file: Path) -> LoadedModel:
    from ..backends.torch import TorchBackend

    torch = _torch()
    try:
        program = torch.export.load(str(file))
    except Exception as exc:
        raise ModelError(f"{file} is not a torch.export program ({str(exc).splitlines()[0]}).") from exc
    chw: tuple[int | None, int | None, int | None] = (None, None, None)
    args = program.example_inputs[0] if program.example_inputs else ()
    if args and getattr(args[0], "ndim", 0) == 4:
        chw = tuple(int(d) for d in args[0].shape[1:])  # type: ignore[assignment]
    return LoadedModel(TorchBackend(program.module()), "torch", chw, file)


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files named on the command line, with each folder replaced by the images it holds, or by its .npy
    files when it holds no image (a folder of samples often keeps other arrays beside its pictures)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found.extend(images or sorted(p for p in path.iterdir() if p.suffix.lower() == ".npy"))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"input {raw!r} does not exist (give image files, folders of images, or .npy arrays)")
    if not found:
        raise InputError(f"no images or .npy files found in {paths}")
    return found


def read_image(path: Path, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """An image as float32 (H, W, C) in [0, 1], converted to ``channels`` and resized to ``size`` (H, W).

    ``channels=None`` (the model does not declare it, e.g. TorchScript): grayscale files stay one channel,
    everything else becomes RGB.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("reading images needs pillow: pip install 'gradsal[viz]'") from exc
    try:
        with Image.open(path) as img:
            gray = channels == 1 or (channels is None and img.mode in GRAY_MODES)
            img = img.convert("L" if gray else "RGB")
            if size is not None and (img.height, img.width) != size:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    return array[:, :, None] if array.ndim == 2 else array


def load_samples(
    paths: list[Path],
    *,
    size: tuple[int, int] | None,
    channels: int | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> list[Sample]:
    """Preprocess every input the same way: resize, scale to [0, 1], then (x - mean) / std per channel."""
    samples = []
    for path in paths:
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {path} as a NumPy array: {exc}") from exc
            samples.append(Sample(path.stem, np.asarray(array, dtype=np.float32), _display_of(array)))
            continue
        image = read_image(path, size, channels)
        chw = _normalise(image, mean, std).transpose(2, 0, 1)
        samples.append(Sample(path.stem, np.ascontiguousarray(chw), image))
    shapes = {s.array.shape for s in samples}
    if len(shapes) > 1:
        raise InputError(
            f"inputs have different shapes {sorted(shapes)}; pass --size H W to resize images to one size"
        )
    return samples


def _normalise(image: np.ndarray, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    out = image
    channels = image.shape[2]
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, channels):
            raise InputError(f"{name} has {len(values)} values but the images have {channels} channels")
    if mean is not None:
        out = out - np.asarray(mean, dtype=np.float32)
    if std is not None:
        if any(s <= 0 for s in std):
            raise InputError("--std values must be positive")
        out = out / np.asarray(std, dtype=np.float32)
    return out.astype(np.float32)


def _display_of(array: np.ndarray) -> np.ndarray | None:
    """A picture to draw the map on for an .npy input shaped (C, H, W), scaled to [0, 1]; else None."""
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        return None
    hwc = np.asarray(array, dtype=np.float32).transpose(1, 2, 0)
    low, high = float(hwc.min()), float(hwc.max())
    return (hwc - low) / (high - low) if high > low else np.zeros_like(hwc)


def read_labels(path: str | None) -> list[str] | None:
    """Class names from a text file (one per line) or a JSON list / {index: name} object."""
    if path is None:
        return None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from exc
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"labels file {path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data, key=lambda k: int(k))]
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]
