"""Reading image files as the data they hold: float32 ``(H, W, C)`` in [0, 1], C = 1 (grey) or 3 (RGB).

``img.convert("RGB")`` is how most tools read pictures, and it silently destroys scientific images: a
16-bit PNG saturates to 255 and a float TIFF in [0, 1] truncates to 0. Here every pixel type is scaled by
its real range instead: 8-bit and 16-bit integers by 2**bits - 1, 1-bit images as 0/1, 32-bit integer
images (pillow's mode ``I``, often 16-bit data) by 65535 when they fit in 16 bits, and float images as
they are when they lie in [0, 1], else by their own minimum and maximum (and a note says so). Palette,
CMYK and YCbCr images become RGB; an alpha channel is dropped (as ``convert("RGB")`` does); the EXIF
orientation is applied, so the picture stands as a viewer shows it. Of a multi-frame file (GIF, TIFF)
the first frame is read and a note says so. Files larger than ``max_pixels`` are refused before they are
decoded (a small file can declare a huge image: a decompression bomb).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..core.errors import InputError, MissingDependencyError

DEFAULT_MAX_PIXELS = 89_478_485  # pillow's own default limit (about 0.25 GiB of 24-bit RGB)
_GREY_8BIT = {"L", "LA", "La"}
_COLOUR_8BIT = {"RGB", "RGBA", "RGBX", "RGBa"}
_INTEGER_16BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ImageRead:
    """The pixels of one file and what the reader had to decide about them (notes for the user)."""

    pixels: np.ndarray  # float32 (H, W, C) in [0, 1], C = 1 or 3
    notes: tuple[str, ...] = ()


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise MissingDependencyError("reading images needs pillow: pip install 'gradsal[viz]'") from exc
    return Image, ImageOps


def read_image_file(path: Path | BinaryIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageRead:
    """The pixels of the image file at ``path`` (or an open binary file) scaled to [0, 1] by their real range
    (see the module doc)."""
    Image, ImageOps = _pillow()
    name = getattr(path, "name", "the image")  # an in-memory file (the audit's Ray engine) has no name
    where = f"image {path}" if isinstance(path, (str, os.PathLike)) else "the image"  # not a BytesIO's repr
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours (max_pixels) replaces pillow's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _check_size(where, img.width, img.height, max_pixels)  # from the header, before decoding
            notes = []
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"{name}: several frames (an animation or a stack); only the first is read")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            pixels, note = _as_unit_range(img)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        unnamed = where == "the image" and isinstance(exc, Image.UnidentifiedImageError)  # it shows the repr
        reason = "not a format pillow reads, or a damaged file" if unnamed else exc
        raise InputError(f"cannot read {where}: {reason}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if note:
        notes.append(f"{name}: {note}")
    return ImageRead(pixels, tuple(notes))


def _check_size(where: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{where} declares {width} x {height} = {width * height} pixels, more than the limit of "
            f"{max_pixels} (a file this size could exhaust memory); pass --max-pixels {width * height} if you "
            "trust it"
        )


def _as_unit_range(img) -> tuple[np.ndarray, str | None]:
    """``(pixels (H, W, C) float32 in [0, 1], a note or None)`` for any pillow mode."""
    mode = img.mode
    if mode == "1":
        return _channels(np.asarray(img, dtype=np.float32)), None
    if mode in _GREY_8BIT:
        return _channels(np.asarray(img.getchannel(0), dtype=np.float32) / 255.0), None
    if mode in _COLOUR_8BIT:
        return np.asarray(img, dtype=np.float32)[:, :, :3] / 255.0, None
    if mode in _INTEGER_16BIT:
        return _channels(np.asarray(img).astype(np.float32) / 65535.0), None
    if mode == "I":
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 65535:  # pillow opens 16-bit greyscale files this way
            return _channels(values.astype(np.float32) / 65535.0), None
        return _by_own_range(values, "32-bit integer")
    if mode == "F":
        values = np.asarray(img, dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError("the float image holds NaN or infinite values")
        if values.min() >= 0.0 and values.max() <= 1.0:
            return _channels(values), None
        return _by_own_range(values, "float")
    if mode == "P" or mode == "PA":
        return _as_unit_range(img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB"))
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, None  # CMYK, YCbCr, LAB, HSV, ...


def _channels(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(grey[:, :, None], dtype=np.float32)


def _by_own_range(values: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
    low, high = float(values.min()), float(values.max())
    scaled = (values.astype(np.float64) - low) / (high - low) if high > low else np.zeros(values.shape)
    note = f"{kind} pixels in [{low:.6g}, {high:.6g}] scaled to [0, 1] by that range"
    return _channels(scaled.astype(np.float32)), note
