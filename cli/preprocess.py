"""How an image becomes a model input, as data: :class:`Preprocessing`, its presets, its JSON file.

A picture read as float ``(h, w, C)`` in [0, 1] (see :mod:`.images`) is placed on the model's canvas
``(H, W)`` by the resize mode, put in the model's channel order, mapped linearly onto ``pixel_range``,
and normalised per channel: ``x = (lo + (hi - lo) * p - mean) / std``, with ``mean`` and ``std`` in the
units of ``pixel_range`` and in the model's channel order (Caffe's BGR means are written B, G, R).

Resize modes: ``stretch`` scales each side to the canvas; ``crop`` scales the shorter side to cover the
canvas (divided by ``crop_fraction``, e.g. 0.875 for torchvision's 256 -> 224) and keeps the centre;
``letterbox`` scales the longer side to fit and pads the rest with ``fill``. A size with one side
``None`` (a model with a fixed height and a dynamic width) scales to that side and keeps the aspect.
Each placement is an axis-aligned affine map ``u = scale * v + offset`` between original coordinates
``v`` and canvas coordinates ``u`` (pixel centres at k + 0.5), so a map computed on the canvas is
carried back onto the original picture by :meth:`Placement.to_original`.

The layout (NCHW or NHWC) says how the model wants its array; everything here works in (C, H, W)
and the model adapter (:mod:`.layout`) transposes at the model's door.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
RESIZE_MODES = ("stretch", "crop", "letterbox")
MAX_SIDE = 1 << 16  # a canvas side above this is no image model's input: refuse it before allocating


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a [0, 1] picture into the model's input (see the module docstring)."""

    layout: str = "NCHW"
    channel_order: str = "RGB"
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "stretch"
    size: tuple[int | None, int | None] | None = None
    crop_fraction: float = 1.0
    fill: float = 0.5
    channels: int | None = None  # 1 or 3; None: as the file is (grey stays grey)

    def __post_init__(self) -> None:
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("channel order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("resize mode", self.resize, RESIZE_MODES)
        low, high = self.pixel_range
        if not high > low:
            raise InputError(f"pixel range [{low}, {high}] is empty: give LOW HIGH with LOW < HIGH")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise InputError(f"std values must be positive, got {list(self.std)}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise InputError(f"crop fraction must be in (0, 1], got {self.crop_fraction}")
        if self.size is not None:
            check_size(self.size)

    @property
    def normalised(self) -> bool:
        """Whether anything beyond the plain [0, 1] scaling is asked for."""
        return self.pixel_range != (0.0, 1.0) or self.mean is not None or self.std is not None

    def describe(self) -> str:
        """One line: what the images become."""
        order = "grey" if self.channels == 1 else self.channel_order
        parts = [self.layout, order, f"pixels in [{self.pixel_range[0]:g}, {self.pixel_range[1]:g}]"]
        if self.mean is not None:
            parts.append("mean " + ", ".join(f"{m:g}" for m in self.mean))
        if self.std is not None:
            parts.append("std " + ", ".join(f"{s:g}" for s in self.std))
        if self.size is not None:
            height, width = (str(s) if s else "keep aspect" for s in self.size)
            resize = self.resize if None not in self.size else "scale"
            fraction = f" (crop fraction {self.crop_fraction:g})" if resize == "crop" and self.crop_fraction < 1 else ""
            parts.append(f"{resize} to {height} x {width}{fraction}")
        return ", ".join(parts)

    def to_model_values(self, picture: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` in [0, 1] (already on the canvas) -> ``(C, H, W)`` float32 as the model takes it."""
        array = picture[:, :, ::-1] if self.channel_order == "BGR" and picture.shape[2] == 3 else picture
        low, high = self.pixel_range
        array = low + (high - low) * array.astype(np.float64)
        channels = array.shape[2]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                counts = "1 value" if channels == 1 else f"1 or {channels} values"
                raise InputError(f"{name} has {len(values)} values but the model takes {channels} channel(s) "
                                 f"(pass --{name} with {counts})")
        if self.mean is not None:
            array = array - np.asarray(self.mean)
        if self.std is not None:
            array = array / np.asarray(self.std)
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def _check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def check_size(size: tuple[int | None, int | None]) -> None:
    """A canvas size (H, W) whose sides are positive and sane; at most one side may be None (keep aspect)."""
    if len(size) != 2 or all(s is None for s in size):
        raise InputError(f"size must be H W with at least one side given, got {size}")
    for side in size:
        if side is not None and not 0 < side <= MAX_SIDE:
            raise InputError(f"size {_show(size)}: each side must be between 1 and {MAX_SIDE} pixels")


def _show(size: tuple[int | None, int | None]) -> str:
    return " x ".join("auto" if s is None else str(s) for s in size)


# ------------------------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision's ImageNet models: resize 256, centre crop 224, RGB in [0, 1], ImageNet mean / std
    "imagenet-torch": {"channel_order": "RGB", "pixel_range": (0.0, 1.0), "mean": (0.485, 0.456, 0.406),
                       "std": (0.229, 0.224, 0.225), "resize": "crop", "crop_fraction": 0.875},
    # Caffe ports (VGG, ResNet, open_nsfw): BGR in [0, 255] minus the per-channel ImageNet means (B, G, R)
    "caffe-bgr": {"channel_order": "BGR", "pixel_range": (0.0, 255.0), "mean": (104.0, 117.0, 123.0),
                  "std": None, "resize": "stretch"},
    # TF-slim / Keras Inception, MobileNet, EfficientNet-Lite: RGB scaled to [-1, 1], central crop 0.875
    "inception": {"channel_order": "RGB", "pixel_range": (-1.0, 1.0), "mean": None, "std": None,
                  "resize": "crop", "crop_fraction": 0.875},
}


def apply_preset(base: Preprocessing, name: str) -> Preprocessing:
    """``base`` with the named preset's fields (layout and size stay: they come from the model)."""
    if name not in PRESETS:
        raise InputError(f"unknown preprocessing preset {name!r}: use one of {', '.join(PRESETS)}")
    return replace(base, **PRESETS[name])


# ---------------------------------------------------------------------------------------------- JSON
_JSON_KEYS = {f.name for f in fields(Preprocessing)} | {"preset"}


def sidecar_path(model: Path) -> Path:
    """Where a model's preprocessing file lives: ``model.onnx`` -> ``model.preprocess.json`` beside it."""
    return model.with_name(model.stem + ".preprocess.json")


def load_json(base: Preprocessing, path: Path) -> Preprocessing:
    """``base`` updated by the JSON object in ``path`` (keys: the fields of Preprocessing, and ``preset``,
    applied first)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read preprocessing file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"preprocessing file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"preprocessing file {path} must hold a JSON object, e.g. {{\"preset\": \"caffe-bgr\"}}")
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise InputError(f"preprocessing file {path}: unknown key(s) {', '.join(unknown)}; the keys are "
                         f"{', '.join(sorted(_JSON_KEYS))}")
    try:
        result = apply_preset(base, data["preset"]) if "preset" in data else base
        return replace(result, **{k: _json_value(k, v) for k, v in data.items() if k != "preset"})
    except (TypeError, ValueError, InputError) as exc:
        raise InputError(f"preprocessing file {path}: {exc}") from exc


def _json_value(key: str, value: Any) -> Any:
    if key in ("mean", "std"):
        return None if value is None else tuple(float(v) for v in ([value] if np.isscalar(value) else value))
    if key == "pixel_range":
        low, high = value
        return float(low), float(high)
    if key == "size":
        if isinstance(value, int):
            value = [value, value]
        return tuple(None if v is None else _whole(v) for v in value)
    if key in ("crop_fraction", "fill"):
        return float(value)
    if key == "channels":
        return None if value is None else _whole(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value.upper() if key in ("layout", "channel_order") else value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Placement:
    """Where an original picture ``(h, w)`` sits on the model's canvas ``(H, W)``: canvas coordinates are
    ``u = scale * v + offset`` per axis (y, x), pixel centres at k + 0.5."""

    original: tuple[int, int]
    canvas: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    def to_original(self, values: np.ndarray, outside: float = 0.0) -> np.ndarray:
        """A map ``(H, W)`` on the canvas, sampled bilinearly at every original pixel's centre: ``(h, w)``.
        Original pixels that the canvas does not show (cropped away) get ``outside``."""
        ys, inside_y = self._canvas_coordinates(0)
        xs, inside_x = self._canvas_coordinates(1)
        rows = _interpolate_axis(np.asarray(values, dtype=np.float64), ys, axis=0)
        result = _interpolate_axis(rows, xs, axis=1)
        result[~inside_y, :] = outside
        result[:, ~inside_x] = outside
        return result

    def _canvas_coordinates(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        centres = np.arange(self.original[axis]) + 0.5
        u = self.scale[axis] * centres + self.offset[axis]
        return u - 0.5, (u >= 0) & (u <= self.canvas[axis])  # as indices into the canvas's pixel centres


def _interpolate_axis(values: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at fractional indices, edges clamped."""
    n = values.shape[axis]
    clamped = np.clip(positions, 0, n - 1)
    below = np.floor(clamped).astype(int)
    above = np.minimum(below + 1, n - 1)
    weight = clamped - below
    shape = [1, 1]
    shape[axis] = -1
    low, high = np.take(values, below, axis=axis), np.take(values, above, axis=axis)
    return low + (high - low) * weight.reshape(shape)


def place(picture: np.ndarray, prep: Preprocessing) -> tuple[np.ndarray, Placement]:
    """``picture`` (h, w, C) on the canvas the preprocessing asks for, and where it sits there."""
    h, w = picture.shape[:2]
    if prep.size is None:
        return picture, Placement((h, w), (h, w), (1.0, 1.0), (0.0, 0.0))
    height, width = prep.size
    if height is None or width is None:  # fixed side, keep the aspect
        factor = height / h if height is not None else width / w  # type: ignore[operator]
        target = (height or max(1, round(h * factor)), width or max(1, round(w * factor)))
        check_size(target)
        return _resize(picture, target), Placement((h, w), target, (target[0] / h, target[1] / w), (0.0, 0.0))
    if prep.resize == "stretch":
        return _resize(picture, (height, width)), Placement((h, w), (height, width), (height / h, width / w), (0, 0))
    factor = (max(height / h, width / w) / prep.crop_fraction if prep.resize == "crop"
              else min(height / h, width / w))
    scaled = (max(1, round(h * factor)), max(1, round(w * factor)))
    resized = _resize(picture, scaled)
    top, left = (height - scaled[0]) // 2, (width - scaled[1]) // 2  # negative: cropped away
    canvas = np.full((height, width, picture.shape[2]), prep.fill, dtype=np.float32)
    src = resized[max(0, -top):max(0, -top) + height, max(0, -left):max(0, -left) + width]
    canvas[max(0, top):max(0, top) + src.shape[0], max(0, left):max(0, left) + src.shape[1]] = src
    placement = Placement((h, w), (height, width), (scaled[0] / h, scaled[1] / w), (float(top), float(left)))
    return canvas, placement


def _resize(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (h, w, C) picture, channel by channel, in float (pillow's mode F)."""
    if picture.shape[:2] == tuple(size):
        return picture
    from PIL import Image

    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(picture[:, :, c], dtype=np.float32), mode="F")
                           .resize((size[1], size[0]), Image.Resampling.BILINEAR))
                for c in range(picture.shape[2])]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------- detection
def detect(shape: tuple[Any, ...] | None, layout: str | None = None) -> tuple[Preprocessing, str | None]:
    """Layout, channels and size read from a model input's declared shape, and a note when the layout
    is not the default NCHW (the user should know the images are fed channels-last). ``layout``: read
    channels and size for this layout instead of guessing it."""
    if shape is None or len(shape) != 4:
        return Preprocessing(), None
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    first, last = dims[1], dims[3]
    channels_last = last in (1, 3) and first not in (1, 3) if layout is None else layout == "NHWC"
    if channels_last:
        channels, height, width = last, dims[1], dims[2]
    else:
        channels, height, width = first, dims[2], dims[3]
    for side in (height, width):
        if side is not None and side > MAX_SIDE:
            raise InputError(f"the model declares an input of shape {tuple(shape)}, with a side of {side} "
                             f"pixels (more than {MAX_SIDE}): pass --size H W to feed images of another size")
    size = (height, width) if height or width else None
    prep = Preprocessing(layout="NHWC" if channels_last else "NCHW", channels=channels, size=size)
    note = None
    if channels_last:
        note = (f"the model's input is {_shape_text(shape)}, channels last: images are fed as NHWC "
                "(--layout NCHW to change)")
    return prep, note


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


# ------------------------------------------------------------------------------------------ choosing
NORMALISATION_HINT = ("images are fed as pixels in [0, 1] without normalisation, but most trained models "
                      "expect their own (see README): pass --preset imagenet-torch, caffe-bgr or inception, "
                      "--mean/--std, or a preprocessing JSON file")


def choose(shape: tuple[Any, ...] | None, model_path: Path, *, json_path: Path | None = None,
           preset: str | None = None, overrides: dict[str, Any] | None = None) -> tuple[Preprocessing, list[str]]:
    """The preprocessing for a model, and one-line notes on what was decided for the user.

    Later sources win: what the model's declared input shape shows (layout, channels, size), then the
    JSON file (``json_path``, else ``MODEL.preprocess.json`` beside the model when it exists), then the
    named ``preset``, then the ``overrides`` that are not None (the individual flags).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    detected, layout_note = detect(shape)
    beside = sidecar_path(model_path)
    source = json_path if json_path is not None else beside if beside.is_file() else None
    prep = _from_file_and_preset(detected, source, preset)
    layout = overrides.get("layout", prep.layout)
    if layout != detected.layout:  # the JSON file or a flag chose the other layout: read the shape by it
        prep = _from_file_and_preset(detect(shape, layout)[0], source, preset)
    prep = replace(prep, **overrides)
    notes = [] if source is None else [f"preprocessing from {source}"]
    if layout_note and prep.layout == "NHWC" and "layout" not in overrides:
        notes.insert(0, layout_note)
    return prep, notes


def _from_file_and_preset(base: Preprocessing, source: Path | None, preset: str | None) -> Preprocessing:
    prep = load_json(base, source) if source is not None else base
    return apply_preset(prep, preset) if preset is not None else prep
