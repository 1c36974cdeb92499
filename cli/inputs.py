"""Reading what the command line is given: model files, images, folders, ``.npy`` arrays, label files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..core.errors import InputError
from . import torch_files
from .images import DEFAULT_MAX_PIXELS, read_image_file
from .preprocess import Placement, Preprocessing, place

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


@dataclass(frozen=True)
class LoadedModel:
    """A backend and what the model file says about its input: (C, H, W) where declared, else None.

    ``input_shape``: the declared input shape (ints, symbol names or None); ``static_batch``: a batch size
    fixed when the model was saved (torch.export without dynamic shapes); ``preprocessing``: how images
    become its input, once the command has chosen (see :mod:`.preprocess`).
    """

    backend: Any
    kind: str  # "onnx" or "torch"
    input_chw: tuple[int | None, int | None, int | None]
    path: Path
    input_shape: tuple[Any, ...] | None = None
    static_batch: int | None = None
    preprocessing: Preprocessing | None = None
    notes: tuple[str, ...] = ()  # what was decided for the user about this model (one line each)
    constant_inputs: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Sample:
    """One input: the preprocessed array (C, H, W) or (F,), the picture to draw on, and its name.

    ``placement`` says where the picture sits on the model's canvas, so that maps can be carried back
    onto ``display`` (the image as the user gave it); None when ``display`` is the model input itself.
    """

    name: str
    array: np.ndarray
    display: np.ndarray | None  # (H, W, C) float in [0, 1], before normalisation
    placement: Placement | None = None


def load_model(
    path: str,
    *,
    output_name: str | None = None,
    input_name: str | None = None,
    constant_inputs: dict[str, np.ndarray] | None = None,
    model_class: str | None = None,
    output_batch_axis: int | None = 0,
    straight_through: bool = False,
) -> LoadedModel:
    """An ONNX file, a TorchScript file, a ``torch.export`` program (``.pt2``), or a state_dict loaded into
    ``model_class`` (``package.module:Class``), as a backend."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model file {path!r} does not exist (pass the path to an .onnx, .pt2 or TorchScript file)")
    suffix = file.suffix.lower()
    onnx_only = {"--input-name": input_name, "--constant-input": constant_inputs,
                 "--output-batch-axis": output_batch_axis != 0, "--straight-through": straight_through}
    given = [flag for flag, value in onnx_only.items() if value]
    if suffix != ".onnx" and (given or output_name):
        raise InputError(f"{', '.join(given or ['--output-name'])} name ONNX tensors; {file.name} is a PyTorch file")
    if suffix == ".onnx":
        if model_class:
            raise InputError("--model-class loads a PyTorch state_dict; an .onnx file carries its own architecture")
        return _load_onnx(file, output_name, input_name, constant_inputs, output_batch_axis, straight_through)
    if model_class:
        return _load_torch_module(torch_files.load_state_dict_into(file, model_class), file)
    if suffix == ".pt2":
        return _load_torch_export(file)
    if suffix in (".ts", ".torchscript", ".jit", ".pt", ".pth", ".zip") or suffix in PICKLE_SUFFIXES:
        return _load_torch_module(torch_files.load_torchscript(file), file)
    raise InputError(
        f"cannot tell what kind of model {path!r} is from its suffix {suffix!r}: use .onnx for ONNX, .pt2 for "
        "a torch.export program, or .ts/.pt for a TorchScript file."
    )


def _load_onnx(file: Path, output_name: str | None, input_name: str | None,
               constant_inputs: dict[str, np.ndarray] | None, output_batch_axis: int | None = 0,
               straight_through: bool = False) -> LoadedModel:
    from ..backends.onnx import OnnxBackend

    backend = OnnxBackend(str(file), output_name=output_name, input_name=input_name,
                          constant_inputs=constant_inputs or None, output_batch_axis=output_batch_axis,
                          quantised="straight_through" if straight_through else "refuse")
    shape = backend.input_shape if hasattr(backend, "input_shape") else None
    return LoadedModel(backend, "onnx", _chw_of(shape), file, input_shape=shape,
                       constant_inputs=constant_inputs or None)


def _chw_of(shape: tuple[Any, ...] | None) -> tuple[int | None, int | None, int | None]:
    if shape is not None and len(shape) == 4:
        return tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])  # type: ignore[return-value]
    if shape is not None and len(shape) == 2:
        return (shape[1] if isinstance(shape[1], int) else None, None, None)
    return (None, None, None)


def _load_torch_module(module: Any, file: Path) -> LoadedModel:
    from ..backends.torch import TorchBackend

    return LoadedModel(TorchBackend(module), "torch", (None, None, None), file)


def _load_torch_export(file: Path) -> LoadedModel:
    from ..backends.torch import TorchBackend

    module, shape, static_batch = torch_files.load_export(file)
    chw = _chw_of(shape) if shape is not None and len(shape) == 4 else (None, None, None)
    return LoadedModel(TorchBackend(module), "torch", chw, file, input_shape=shape, static_batch=static_batch)


def read_constant_inputs(specs: list[str] | None) -> dict[str, np.ndarray]:
    """``--constant-input NAME=FILE.npy`` values as ``{name: array}``."""
    constants: dict[str, np.ndarray] = {}
    for spec in specs or []:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise InputError(f"--constant-input {spec!r} must be NAME=FILE.npy")
        try:
            constants[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--constant-input {name}: cannot read {file} as a NumPy array: {exc}") from exc
    return constants


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
    """An image as float32 (H, W, C) in [0, 1] (scaled by its real range, see :mod:`.images`), converted to
    ``channels`` and stretched to ``size`` (H, W).

    ``channels=None`` (the model does not declare it, e.g. TorchScript): grayscale files stay one channel,
    everything else becomes RGB.
    """
    picture = with_channels(read_image_file(path).pixels, channels)
    return place(picture, Preprocessing(size=size))[0] if size is not None else picture


def with_channels(picture: np.ndarray, channels: int | None) -> np.ndarray:
    """A (H, W, 1|3) picture with ``channels`` channels: RGB to grey by ITU-R 601 luma (as pillow's
    ``convert("L")``), grey to RGB by repetition; None keeps the picture's own."""
    have = picture.shape[2]
    if channels is None or channels == have:
        return picture
    if channels == 1 and have == 3:
        return (picture @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    if channels == 3 and have == 1:
        return np.repeat(picture, 3, axis=2)
    raise InputError(f"the model takes {channels} channels; images can be given as 1 (grey) or 3 (RGB)")


DISPLAY_SIDE = 768  # the longest side overlays are drawn at; larger pictures are drawn smaller


def prepare_samples(paths: list[Path], prep: Preprocessing, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    same_shape: bool = True) -> tuple[list[Sample], list[str]]:
    """Every input preprocessed by ``prep`` and the readers' notes, one line per kind of remark.
    ``same_shape``: refuse inputs that end up with different shapes (they cannot form one batch).

    Images keep their original picture (at most DISPLAY_SIDE pixels on a side) and their placement on
    the canvas, so maps are drawn on the image as the user gave it. ``.npy`` arrays are taken as the
    model's input as they are (in (C, H, W); an NHWC model's arrays in (H, W, C)).
    """
    samples, notes = [], []
    for path in paths:
        if path.suffix.lower() == ".npy":
            samples.append(_array_sample(path, prep))
            continue
        image = prepare_image(path, prep, max_pixels=max_pixels)
        notes.extend(image.notes)
        display, placement = _for_display(image.picture, image.placement)
        samples.append(Sample(path.stem, image.array, display, placement))
    shapes = {s.array.shape for s in samples}
    if same_shape and len(shapes) > 1:
        raise InputError(
            f"inputs have different shapes {sorted(shapes)}; pass --size H W to resize images to one size"
        )
    return samples, _grouped(notes)


@dataclass(frozen=True)
class PreparedImage:
    """One image file as the model takes it (``array``, (C, H, W)), the picture it came from at its own
    size (``picture``, (h, w, C) in [0, 1] with the model's channel count), where that picture sits on the
    model's canvas (``placement``: maps come back with ``placement.to_original``) and the reader's notes."""

    array: np.ndarray
    picture: np.ndarray
    placement: Placement
    notes: tuple[str, ...] = ()


def prepare_image(file: Path | BinaryIO, prep: Preprocessing, *,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """Read an image file (a path or an open binary file) and preprocess it by ``prep``: channels, placement
    on the canvas, then the model's values (see :mod:`.preprocess`)."""
    read = read_image_file(file, max_pixels=max_pixels)  # type: ignore[arg-type]
    picture = with_channels(read.pixels, prep.channels)
    canvas, placement = place(picture, prep)
    return PreparedImage(prep.to_model_values(canvas), picture, placement, read.notes)


def _array_sample(path: Path, prep: Preprocessing) -> Sample:
    try:
        array = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a NumPy array: {exc}") from exc
    if prep.layout == "NHWC" and array.ndim == 3:
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    return Sample(path.stem, array, _display_of(array))


def _for_display(picture: np.ndarray, placement: Placement) -> tuple[np.ndarray, Placement]:
    """The picture at most DISPLAY_SIDE on a side, and the placement that maps the canvas onto it."""
    h, w = picture.shape[:2]
    factor = min(1.0, DISPLAY_SIDE / max(h, w))
    if factor == 1.0:
        return picture, placement
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    small = place(picture, Preprocessing(size=size))[0]
    sy, sx = size[0] / h, size[1] / w
    return small, Placement(size, placement.canvas, (placement.scale[0] / sy, placement.scale[1] / sx),
                            placement.offset)


def _grouped(notes: list[str]) -> list[str]:
    """Notes of the same kind (the text after the file name) said once, naming every file."""
    kinds: dict[str, list[str]] = {}
    for text in notes:
        name, _, remark = text.partition(": ")
        kinds.setdefault(remark, []).append(name)
    return [f"{', '.join(names)}: {remark}" for remark, names in kinds.items()]


def load_samples(
    paths: list[Path],
    *,
    size: tuple[int, int] | None,
    channels: int | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> list[Sample]:
    """Preprocess every input the same way: resize, scale to [0, 1], then (x - mean) / std per channel."""
    prep = Preprocessing(size=size, channels=channels, mean=None if mean is None else tuple(mean),
                         std=None if std is None else tuple(std))
    return prepare_samples(paths, prep)[0]


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
