"""Pictures of saliency maps: colour maps in NumPy, images with pillow (the ``viz`` extra).

- :func:`colorize` turns a map ``(H, W)`` into an RGB ``uint8`` array (NumPy only).
- :func:`heatmap`, :func:`overlay` and :func:`side_by_side` (image | map | overlay, colour bar, caption)
  return ``PIL.Image`` objects; tiny inputs such as 32x32 digits are enlarged by an integer factor with
  nearest-neighbour sampling, so every input pixel stays a visible square.
- :func:`feature_bar_chart` and :func:`feature_ranking_text` show a tabular prediction's top-k features.

Colour maps: ``jet`` and ``hot`` follow matplotlib's piecewise-linear definitions exactly; ``viridis`` is
an approximation, linear interpolation between 17 colours of matplotlib's table (at 0, 1/16, ..., 1;
within 5/255 of it in every channel); ``gray``; ``bwr`` (blue - white - red) is diverging. Signed maps
(any negative value, or ``signed=True``) are scaled symmetrically, ``[-max|m|, max|m|]``, so that zero
falls on the centre of the colour map (white for ``bwr``); unsigned maps are scaled to ``[min(m, 0),
max(m)]``, so zero attribution gets the lowest colour. A constant map (e.g. all zero) gets a
:class:`UniformMapWarning` and a flat picture, never NaN. Nothing passed in is modified.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import InputError, InputTypeError, MissingDependencyError
from .postprocess import rank_features

__all__ = [
    "COLORMAPS",
    "Bar",
    "BarChartLayout",
    "UniformMapWarning",
    "bar_chart_layout",
    "colorize",
    "feature_bar_chart",
    "feature_ranking_text",
    "heatmap",
    "overlay",
    "side_by_side",
]


class UniformMapWarning(UserWarning):
    """A saliency map (or feature attribution) is constant: the picture carries no information."""


def _hex(code: str) -> tuple[float, float, float]:
    return tuple(int(code[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


# viridis at 0, 1/16, ..., 1 (17 colours of its published table); linear interpolation stays within 5/255
_VIRIDIS = [_hex(c) for c in ("#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e",
                              "#26828e", "#21918c", "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b",
                              "#addc30", "#d8e219", "#fde725")]

# Per channel (red, green, blue): breakpoints (positions in [0, 1], values in [0, 1]), linearly interpolated.
COLORMAPS: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]] = {
    "jet": (
        ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
        ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
        ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
    ),
    "hot": (
        ((0.0, 0.365079, 1.0), (0.0416, 1.0, 1.0)),
        ((0.0, 0.365079, 0.746032, 1.0), (0.0, 0.0, 1.0, 1.0)),
        ((0.0, 0.746032, 1.0), (0.0, 0.0, 1.0)),
    ),
    "viridis": tuple(
        (tuple(np.linspace(0.0, 1.0, len(_VIRIDIS)).tolist()), tuple(c[k] for c in _VIRIDIS)) for k in range(3)
    ),
    "gray": (((0.0, 1.0), (0.0, 1.0)),) * 3,
    "bwr": (
        ((0.0, 0.5, 1.0), (0.0, 1.0, 1.0)),
        ((0.0, 0.5, 1.0), (0.0, 1.0, 0.0)),
        ((0.0, 0.5, 1.0), (1.0, 1.0, 0.0)),
    ),
}

_POSITIVE_RGB = (214, 39, 40)
_NEGATIVE_RGB = (31, 119, 180)
_TEXT_RGB = (20, 20, 20)
_BACKGROUND_RGB = (255, 255, 255)
_DISPLAY_SIZE = 256  # small maps are enlarged by an integer factor to about this many pixels


# ------------------------------------------------------------------------------------------ colours (NumPy)


def colorize(
    saliency_map: Any,
    cmap: str = "jet",
    *,
    signed: bool | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Colours of a map ``(H, W)`` (or ``(1, H, W)``) as an RGB ``uint8`` array ``(H, W, 3)``.

    Each value ``m`` becomes ``cmap(t)`` with ``t = clip((m - low) / (high - low), 0, 1)``. ``(low, high)`` is
    ``value_range`` when given, else ``(-max|m|, max|m|)`` for a signed map (``signed=None``: signed when
    any value is negative), which puts 0 at the colour map's centre, and ``(min(m, 0), max(m))`` otherwise.
    """
    values = _as_map(saliency_map, "saliency_map")
    positions = _positions(values, signed, _check_cmap_and_range(cmap, value_range))
    return _to_uint8(_apply_cmap(positions, cmap))


def _check_cmap_and_range(cmap: str, value_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate ``cmap`` and ``value_range`` up front (before any warning about the map); returns the range."""
    if not isinstance(cmap, str) or cmap not in COLORMAPS:
        raise InputError(f"cmap={cmap!r} is not a known colour map: choose one of {', '.join(COLORMAPS)}")
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError) as exc:
        raise InputError(f"value_range={value_range!r}: pass two numbers (low, high)") from exc
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"value_range={value_range!r}: pass finite numbers with low < high")
    return low, high


def _apply_cmap(positions: np.ndarray, cmap: str) -> np.ndarray:
    """``cmap`` (a name in COLORMAPS) at ``positions`` in [0, 1]: float RGB, shape ``positions.shape + (3,)``."""
    channels = [np.interp(positions, xs, ys) for xs, ys in COLORMAPS[cmap]]
    return np.stack(channels, axis=-1)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _positions(values: np.ndarray, signed: bool | None, value_range: tuple[float, float] | None) -> np.ndarray:
    """Each value's position ``t`` in [0, 1] along the colour map (see :func:`colorize`)."""
    low, high = _value_range(values, signed, value_range)
    if float(values.max()) == float(values.min()):
        warnings.warn(
            f"the saliency map is constant ({float(values.flat[0]):.3g} everywhere), so the picture shows no "
            "structure; check the target and the model (a dead ReLU, a saturated softmax) or the method",
            UniformMapWarning, stacklevel=3,
        )
    if high == low:
        middle = 0.5 if low == 0.0 and _is_signed(values, signed) else 0.0
        return np.full(values.shape, middle)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _is_signed(values: np.ndarray, signed: bool | None) -> bool:
    return bool((values < 0).any()) if signed is None else bool(signed)


def _value_range(values: np.ndarray, signed: bool | None,
                 value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is not None:
        return value_range
    if _is_signed(values, signed):
        extent = float(np.abs(values).max())
        return -extent, extent
    return min(float(values.min()), 0.0), float(values.max())


def _as_map(saliency_map: Any, name: str) -> np.ndarray:
    """A finite float64 ``(H, W)`` array from a map given as ``(H, W)``, ``(1, H, W)`` or ``(H, W, 1)``."""
    values = np.asarray(saliency_map)
    if values.dtype.kind not in "fiub":
        raise InputTypeError(f"{name} has dtype {values.dtype}: pass a real-valued array (H, W)")
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    elif values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2 or values.size == 0:
        raise InputError(
            f"{name} has shape {np.shape(saliency_map)}: pass one map (H, W); reduce channels of attributions "
            "first with gradsal.core.to_saliency_map(attr)[i] (one sample of its (N, H, W) output)"
        )
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinity: check the model's outputs and the attribution method")
    return values


# ------------------------------------------------------------------------------------------ images (pillow)


def _pil() -> tuple[Any, Any, Any]:
    """pillow's ``Image``, ``ImageDraw`` and ``ImageFont`` modules, or a MissingDependencyError naming the extra."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise MissingDependencyError(
            "gradsal's pictures need pillow: pip install 'gradsal[viz]' (colorize() works without it)"
        ) from exc
    return Image, ImageDraw, ImageFont


def _font(size: int) -> Any:
    """pillow's built-in font at ``size`` pixels (older pillow: its fixed-size bitmap font)."""
    _, _, image_font = _pil()
    try:
        return image_font.load_default(size=size)
    except TypeError:  # pillow < 10.1 has no size argument
        return image_font.load_default()


def _as_rgb_float(image: Any) -> np.ndarray:
    """An image as float64 RGB ``(H, W, 3)`` in [0, 1] from HWC / CHW / (H, W), 1, 3 or 4 channels, uint8 or float."""
    pixels = np.asarray(image)
    shape = pixels.shape
    if pixels.ndim == 4 and shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif pixels.ndim == 3 and shape[-1] not in (1, 3, 4) and pixels.shape[0] in (1, 3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # CHW -> HWC
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or min(pixels.shape[:2]) < 1:
        raise InputError(f"image has shape {shape}: pass (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4")
    pixels = pixels[..., :3]
    if pixels.dtype == np.uint8:
        rgb = pixels.astype(np.float64) / 255.0
    elif pixels.dtype.kind in "fb":
        rgb = _unit_float(pixels.astype(np.float64))
    else:
        raise InputTypeError(f"image has dtype {pixels.dtype}: pass uint8 (0..255) or float values in [0, 1]")
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def _unit_float(pixels: np.ndarray) -> np.ndarray:
    if not np.isfinite(pixels).all():
        raise InputError("image contains NaN or infinity: pass a picture with values in [0, 1]")
    low, high = float(pixels.min()), float(pixels.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise InputError(
            f"float image has values in [{low:.3g}, {high:.3g}]: pass values in [0, 1] (undo the model's "
            "normalisation, x * std + mean, or divide 0..255 pixels by 255) or a uint8 image"
        )
    return np.clip(pixels, 0.0, 1.0)


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float, np.floating)) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha={alpha!r}: pass the map's opacity, a number in [0, 1]")
    return float(alpha)


def _check_scale(scale: int | None) -> int | None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, np.integer))
                              or not 1 <= scale <= 64):
        raise InputError(f"scale={scale!r}: pass an integer enlargement factor from 1 to 64, or None for automatic")
    return None if scale is None else int(scale)


def _scale_for(scale: int | None, height: int, width: int) -> int:
    """The enlargement factor: ``scale``, or the largest integer keeping the longer side <= 256 pixels (>= 1)."""
    return max(1, _DISPLAY_SIZE // max(height, width)) if scale is None else scale


def _enlarge(picture: Any, scale: int) -> Any:
    image_module, _, _ = _pil()
    if scale == 1:
        return picture
    return picture.resize((picture.width * scale, picture.height * scale), image_module.NEAREST)


def _resize_positions(positions: np.ndarray, height: int, width: int) -> np.ndarray:
    """Colour-map positions resized bilinearly to ``(height, width)`` (stays in [0, 1]); unchanged if same size."""
    if positions.shape == (height, width):
        return positions
    image_module, _, _ = _pil()
    small = image_module.fromarray(positions.astype(np.float32))
    resized = np.asarray(small.resize((width, height), image_module.BILINEAR), dtype=np.float64)
    return np.clip(resized, 0.0, 1.0)


def _rgb_image(rgb: np.ndarray) -> Any:
    image_module, _, _ = _pil()
    return image_module.fromarray(_to_uint8(rgb) if rgb.dtype != np.uint8 else rgb)


def heatmap(
    saliency_map: Any,
    *,
    cmap: str = "jet",
    signed: bool | None = None,
    value_range: tuple[float, float] | None = None,
    scale: int | None = None,
) -> Any:
    """The map in colour as an RGB ``PIL.Image``, enlarged ``scale`` times (nearest; None: up to ~256 px).

    Colours as in :func:`colorize`.
    """
    scale = _check_scale(scale)
    _pil()
    rgb = colorize(saliency_map, cmap, signed=signed, value_range=value_range)
    return _enlarge(_rgb_image(rgb), _scale_for(scale, *rgb.shape[:2]))


def _blend(image: Any, saliency_map: Any, cmap: str, alpha: float, signed: bool | None,
           value_range: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(picture, map colours, overlay)`` as float RGB at the image's size."""
    _pil()
    value_range = _check_cmap_and_range(cmap, value_range)
    alpha = _check_alpha(alpha)
    rgb = _as_rgb_float(image)
    values = _as_map(saliency_map, "saliency_map")
    positions = _resize_positions(_positions(values, signed, value_range), *rgb.shape[:2])
    colours = _apply_cmap(positions, cmap)
    return rgb, colours, (1.0 - alpha) * rgb + alpha * colours


def overlay(
    image: Any,
    saliency_map: Any,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    signed: bool | None = None,
    value_range: tuple[float, float] | None = None,
    scale: int | None = None,
) -> Any:
    """``(1 - alpha) * image + alpha * cmap(map)`` as an RGB ``PIL.Image``, enlarged ``scale`` times.

    ``image``: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with 1 or 3 channels (4: alpha dropped), uint8 or
    float in [0, 1]; a layout with C in {1, 3, 4} last is read as HWC. The map is resized bilinearly to
    the image's size when they differ (e.g. a Grad-CAM map); colours as in :func:`colorize`.
    """
    scale = _check_scale(scale)
    rgb, _, blended = _blend(image, saliency_map, cmap, alpha, signed, value_range)
    return _enlarge(_rgb_image(blended), _scale_for(scale, *rgb.shape[:2]))


def side_by_side(
    image: Any,
    saliency_map: Any,
    *,
    caption: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    signed: bool | None = None,
    value_range: tuple[float, float] | None = None,
    scale: int | None = None,
    titles: Sequence[str] = ("input", "saliency", "overlay"),
) -> Any:
    """One ``PIL.Image``: image | map | overlay, titled, a colour bar with the value range, and a caption.

    ``caption`` (e.g. ``"vanilla | predicted 3 | target 3 (12.4)"``) is wrapped under the panels. Panels
    share the image's size, enlarged ``scale`` times; other arguments as in :func:`overlay`.
    """
    scale = _check_scale(scale)
    rgb, colours, blended = _blend(image, saliency_map, cmap, alpha, signed, value_range)
    panels = [_enlarge(_rgb_image(p), _scale_for(scale, *rgb.shape[:2])) for p in (rgb, colours, blended)]
    values = _as_map(saliency_map, "saliency_map")
    low, high = _value_range(values, signed, _check_cmap_and_range(cmap, value_range))
    return _compose(panels, list(titles), cmap, (low, high, _is_signed(values, signed)), caption)


def _compose(panels: list[Any], titles: list[str], cmap: str, scale_info: tuple[float, float, bool],
             caption: str | None) -> Any:
    image_module, image_draw, _ = _pil()
    font = _font(14)
    gap, title_h, bar_h, tick_h = 10, 20, 10, 18
    width, height = panels[0].size
    cell = max(width, 100)  # room for titles and tick labels beside small panels (centred in their cells)
    total_w = len(panels) * cell + (len(panels) + 1) * gap
    lines = _wrap(caption or "", font, total_w - 2 * gap)
    total_h = gap + title_h + height + 6 + bar_h + tick_h + len(lines) * 18 + gap
    canvas = image_module.new("RGB", (total_w, total_h), _BACKGROUND_RGB)
    draw = image_draw.Draw(canvas)
    top = gap + title_h
    for i, panel in enumerate(panels):
        left = gap + i * (cell + gap)
        corner = left + (cell - width) // 2
        canvas.paste(panel, (corner, top))
        draw.rectangle([corner - 1, top - 1, corner + width, top + height], outline=(190, 190, 190))
        if i < len(titles):
            _centred_text(draw, titles[i], left + cell / 2, gap, font)
    _colour_bar(canvas, draw, font, cmap, (gap + cell + gap, top + height + 6, cell, bar_h), scale_info)
    for k, line in enumerate(lines):
        draw.text((gap, top + height + 6 + bar_h + tick_h + 18 * k), line, fill=_TEXT_RGB, font=font)
    return canvas


def _colour_bar(canvas: Any, draw: Any, font: Any, cmap: str, box: tuple[int, int, int, int],
                scale_info: tuple[float, float, bool]) -> None:
    """A horizontal strip of the colour map under the map panel with its low / (0) / high values."""
    image_module, _, _ = _pil()
    left, top, width, height = box
    strip = _apply_cmap(np.linspace(0.0, 1.0, width), cmap)
    canvas.paste(image_module.fromarray(_to_uint8(np.repeat(strip[None], height, axis=0))), (left, top))
    low, high, signed = scale_info
    ticks = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    if signed and low < 0 < high:
        ticks.append(((0 - low) / (high - low), "0"))
    for where, label in ticks:
        x = left + where * (width - 1)
        draw.line([(x, top + height), (x, top + height + 3)], fill=_TEXT_RGB)
        text_w = draw.textlength(label, font=font)
        draw.text((min(max(x - text_w / 2, left), left + width - text_w), top + height + 3), label,
                  fill=_TEXT_RGB, font=font)


def _centred_text(draw: Any, text: str, centre_x: float, top: float, font: Any) -> None:
    draw.text((centre_x - draw.textlength(text, font=font) / 2, top), text, fill=_TEXT_RGB, font=font)


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a long word gets its own line)."""
    image_module, image_draw, _ = _pil()
    measure = image_draw.Draw(image_module.new("RGB", (1, 1)))
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and measure.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------------------- tabular features


class Bar(NamedTuple):
    """One bar of :func:`feature_bar_chart`: feature, value, pixel box ``(x0, y0, x1, y1)`` and colour."""

    name: str
    value: float
    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]


class BarChartLayout(NamedTuple):
    """Geometry of a bar chart: canvas size, the bars from the top, the zero axis' x and the plot's span."""

    size: tuple[int, int]
    bars: list[Bar]
    zero_x: int
    plot: tuple[int, int]


def _ranked(names: Sequence[str], values: Any, top_k: int) -> list[tuple[str, float]]:
    ranked = [(n, v) for n, v in rank_features(np.asarray(values), names, top_k)]
    if all(v == 0.0 for _, v in ranked):
        warnings.warn("all feature attributions are zero: the chart shows no bars; check the target and the "
                      "method (e.g. a dead ReLU or a saturated output)", UniformMapWarning, stacklevel=3)
    return ranked


def _shorten(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def bar_chart_layout(
    names: Sequence[str],
    values: Any,
    *,
    top_k: int = 10,
    title: str | None = None,
    width: int = 720,
    bar_height: int = 22,
) -> BarChartLayout:
    """Where :func:`feature_bar_chart` draws: the top-k features by ``|value|``, largest at the top.

    Bars grow right (positive, red) or left (negative, blue) from a zero axis placed so that the longest
    bar on each side fits; bar lengths are proportional to the values.
    """
    ranked = _ranked(names, values, top_k)
    font = _font(14)
    image_module, image_draw, _ = _pil()
    measure = image_draw.Draw(image_module.new("RGB", (1, 1)))
    label_w = int(max(measure.textlength(_shorten(n), font=font) for n, _ in ranked)) + 12
    value_w = 70
    plot = (label_w + value_w, width - value_w)
    if plot[1] - plot[0] < 60:
        raise InputError(f"width={width} leaves no room for the bars: pass width >= {label_w + 2 * value_w + 60}")
    top = 12 + (26 if title else 0)
    below = max(0.0, -min(v for _, v in ranked))
    above = max(0.0, max(v for _, v in ranked))
    extent = (below + above) or 1.0
    span = plot[1] - plot[0]
    zero_x = plot[0] + round(span * below / extent)
    bars = []
    for k, (name, value) in enumerate(ranked):
        y0 = top + k * (bar_height + 6)
        end = zero_x + round(span * value / extent)
        colour = _POSITIVE_RGB if value >= 0 else _NEGATIVE_RGB
        bars.append(Bar(name, value, (min(zero_x, end), y0, max(zero_x, end), y0 + bar_height), colour))
    height = top + len(ranked) * (bar_height + 6) + 34
    return BarChartLayout((width, height), bars, zero_x, plot)


def feature_bar_chart(
    names: Sequence[str],
    values: Any,
    *,
    top_k: int = 10,
    title: str | None = None,
    width: int = 720,
    bar_height: int = 22,
) -> Any:
    """A ranked horizontal bar chart (``PIL.Image``, RGB) of one prediction's top-k feature attributions.

    ``values``: one sample's attributions ``(D,)`` (ranked by ``|value|``, sign shown by colour: red
    positive, blue negative) or a batch ``(N, D)`` (mean ``|value|`` per feature). Names on the left,
    values at the bar ends, a legend underneath. Drawn with pillow alone.
    """
    layout = bar_chart_layout(names, values, top_k=top_k, title=title, width=width, bar_height=bar_height)
    image_module, image_draw, _ = _pil()
    font = _font(14)
    canvas = image_module.new("RGB", layout.size, _BACKGROUND_RGB)
    draw = image_draw.Draw(canvas)
    if title:
        draw.text((12, 10), title, fill=_TEXT_RGB, font=_font(16))
    for bar in layout.bars:
        x0, y0, x1, y1 = bar.box
        text_y = y0 + (y1 - y0 - 14) / 2 - 1
        label = _shorten(bar.name)
        draw.text((layout.plot[0] - 70 - draw.textlength(label, font=font) - 6, text_y), label, fill=_TEXT_RGB,
                  font=font)
        if x1 > x0:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=bar.colour)
        number = f"{bar.value:+.3g}"
        number_x = x1 + 4 if bar.value >= 0 else x0 - 4 - draw.textlength(number, font=font)
        draw.text((number_x, text_y), number, fill=_TEXT_RGB, font=font)
    bottom = layout.bars[-1].box[3] + 4
    draw.line([(layout.zero_x, layout.bars[0].box[1] - 4), (layout.zero_x, bottom)], fill=_TEXT_RGB)
    _legend(draw, font, 12, bottom + 8)
    return canvas


def _legend(draw: Any, font: Any, left: int, top: int) -> None:
    for colour, text in ((_POSITIVE_RGB, "positive attribution"), (_NEGATIVE_RGB, "negative attribution")):
        draw.rectangle([left, top + 3, left + 11, top + 14], fill=colour)
        draw.text((left + 16, top), text, fill=_TEXT_RGB, font=font)
        left += 28 + int(draw.textlength(text, font=font))


def feature_ranking_text(names: Sequence[str], values: Any, top_k: int = 10, *, bar_width: int = 20) -> str:
    """The top-k features as text, one line each: rank, name, signed value, and a bar left (-) or right (+).

    Example line: ``  1  worst concave points       -0.412  ######|`` (bars scaled to the largest ``|value|``).
    """
    ranked = _ranked(names, values, top_k)
    largest = max(abs(v) for _, v in ranked) or 1.0
    name_w = max(len(_shorten(n)) for n, _ in ranked)
    lines = []
    for k, (name, value) in enumerate(ranked, start=1):
        length = round(bar_width * abs(value) / largest)
        left = ("#" * length if value < 0 else "").rjust(bar_width)
        right = ("#" * length if value > 0 else "").ljust(bar_width)
        lines.append(f"{k:3d}  {_shorten(name):<{name_w}}  {value:>+10.3g}  {left}|{right}".rstrip())
    return "\n".join(lines)
