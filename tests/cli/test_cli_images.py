"""Image files read as the data they hold (``gradsal.cli.images``): every file is written by the test itself."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from gradsal.cli.images import read_image_file
from gradsal.cli.inputs import prepare_samples
from gradsal.cli.preprocess import Preprocessing
from gradsal.core.errors import InputError

Image = pytest.importorskip("PIL.Image")


def test_16_bit_png_keeps_its_levels(tmp_path: Path) -> None:
    levels = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    read = read_image_file(tmp_path / "deep.png")
    assert read.pixels.shape == (1, 4, 1) and read.pixels.dtype == np.float32
    np.testing.assert_allclose(read.pixels[0, :, 0], levels[0] / 65535.0, rtol=1e-6)
    assert read.notes == ()


def test_float_tiff_in_unit_range_is_kept(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "unit.tif")
    read = read_image_file(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read.pixels[:, :, 0], values)  # convert("L") made these all 0
    assert read.notes == ()


def test_float_tiff_outside_unit_range_is_scaled_by_its_range_and_said(tmp_path: Path) -> None:
    values = np.array([[-50.0, 0.0], [150.0, 950.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "counts.tif")
    read = read_image_file(tmp_path / "counts.tif")
    np.testing.assert_allclose(read.pixels[:, :, 0], (values + 50.0) / 1000.0, rtol=1e-6)
    assert len(read.notes) == 1 and "[-50, 950]" in read.notes[0]


def test_grey_and_1_bit(tmp_path: Path) -> None:
    grey = np.array([[0, 51, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(read_image_file(tmp_path / "grey.png").pixels[0, :, 0], grey[0] / 255.0)
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "bits.png").pixels[0, :, 0], [1.0, 0.0])


def test_palette_image_gives_its_colours(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "palette.png")
    img.info["transparency"] = 1
    img.save(tmp_path / "palette_transparent.png", transparency=1)
    for name in ("palette.png", "palette_transparent.png"):
        pixels = read_image_file(tmp_path / name).pixels
        np.testing.assert_array_equal(pixels[0], [[1, 0, 0], [0, 0, 1]])


def test_alpha_is_dropped(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_allclose(read_image_file(tmp_path / "alpha.png").pixels, rgba[:, :, :3] / 255.0)
    Image.fromarray(rgba[:, :, [0, 3]], mode="LA").save(tmp_path / "grey_alpha.png")
    np.testing.assert_allclose(read_image_file(tmp_path / "grey_alpha.png").pixels[:, :, 0], rgba[:, :, 0] / 255.0)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:, :8, 0] = 255  # pure cyan on the left, pure yellow on the right; no black
    cmyk[:, 8:, 2] = 255
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "print.jpg", quality=95)
    pixels = read_image_file(tmp_path / "print.jpg").pixels
    expected = 1.0 - cmyk[:, :, :3] / 255.0  # R = 1 - C, G = 1 - M, B = 1 - Y when K = 0
    np.testing.assert_allclose(pixels[2:-2, 2:6], expected[2:-2, 2:6], atol=0.06)
    np.testing.assert_allclose(pixels[2:-2, 10:14], expected[2:-2, 10:14], atol=0.06)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(tmp_path / "camera.png", exif=exif)
    pixels = read_image_file(tmp_path / "camera.png").pixels[:, :, 0]
    np.testing.assert_allclose(pixels, np.rot90(stored, k=-1) / 255.0)  # as a viewer shows it: 4 high, 3 wide


def test_multi_frame_files_give_their_first_frame_said_once(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue])
    red.save(tmp_path / "b.tif", save_all=True, append_images=[blue])
    samples, notes = prepare_samples([tmp_path / "a.gif", tmp_path / "b.tif"], Preprocessing())
    for sample in samples:
        np.testing.assert_array_equal(sample.array[:, 0, 0], [1.0, 0.0, 0.0])
    frame_notes = [n for n in notes if "frames" in n]
    assert len(frame_notes) == 1 and "a.gif" in frame_notes[0] and "b.tif" in frame_notes[0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` 8-bit grey pixels and holds no image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InputError, match="--max-pixels"):
        read_image_file(tmp_path / "bomb.png")
    Image.new("L", (10, 10)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="100 pixels, more than the limit of 99"):
        read_image_file(tmp_path / "small.png", max_pixels=99)
    assert read_image_file(tmp_path / "small.png", max_pixels=100).pixels.shape == (10, 10, 1)


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        read_image_file(tmp_path / "x.png")
