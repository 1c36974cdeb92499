"""Preprocessing as data (``gradsal.cli.preprocess``): presets, the JSON file, detection, and the placement's
inverse, which must carry a map on the model's canvas back onto the pixels of the original picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradsal.cli import preprocess
from gradsal.cli.preprocess import Preprocessing, place
from gradsal.core.errors import InputError

pytest.importorskip("PIL")

RGB_PIXEL = np.array([[[0.2, 0.4, 0.6]]], dtype=np.float32)  # one pixel, R G B in [0, 1]


def test_caffe_bgr_preset_by_hand() -> None:
    prep = preprocess.apply_preset(Preprocessing(), "caffe-bgr")
    x = prep.to_model_values(RGB_PIXEL)
    expected_bgr = np.array([0.6, 0.4, 0.2]) * 255.0 - np.array([104.0, 117.0, 123.0])
    np.testing.assert_allclose(x[:, 0, 0], expected_bgr, rtol=1e-6)


def test_imagenet_torch_and_inception_presets_by_hand() -> None:
    torch_like = preprocess.apply_preset(Preprocessing(), "imagenet-torch").to_model_values(RGB_PIXEL)
    expected = (np.array([0.2, 0.4, 0.6]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(torch_like[:, 0, 0], expected, rtol=1e-6)
    inception = preprocess.apply_preset(Preprocessing(), "inception").to_model_values(RGB_PIXEL)
    np.testing.assert_allclose(inception[:, 0, 0], np.array([0.2, 0.4, 0.6]) * 2.0 - 1.0, rtol=1e-6)


def test_unknown_preset() -> None:
    with pytest.raises(InputError, match="caffe-bgr"):
        preprocess.apply_preset(Preprocessing(), "vgg")


def test_json_beside_the_model_with_preset_and_fields(tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    preprocess.sidecar_path(model).write_text(json.dumps(
        {"preset": "caffe-bgr", "mean": [100, 110, 120], "resize": "letterbox", "size": [32, 48]}), encoding="utf-8")
    assert preprocess.sidecar_path(model).name == "net.preprocess.json"
    prep, notes = preprocess.choose((1, 3, None, None), model)
    assert (prep.channel_order, prep.pixel_range, prep.mean) == ("BGR", (0.0, 255.0), (100.0, 110.0, 120.0))
    assert (prep.resize, prep.size) == ("letterbox", (32, 48))
    assert any("net.preprocess.json" in n for n in notes)
    prep, _ = preprocess.choose((1, 3, None, None), model, preset="inception", overrides={"mean": (0.5,)})
    assert (prep.pixel_range, prep.mean) == ((-1.0, 1.0), (0.5,))  # the preset flag, then the flags, win


@pytest.mark.parametrize("content, phrase", [
    ('{"mean": [1, 2], "colour": "RGB"}', "unknown key(s) colour"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not valid JSON"),
    ('{"layout": "CHWN"}', "unknown layout"),
    ('{"size": [0, 224]}', "between 1 and"),
    ('{"std": [0.5, 0]}', "positive"),
])
def test_bad_json_files(tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=phrase.replace("(", r"\(").replace(")", r"\)")) as info:
        preprocess.load_json(Preprocessing(), path)
    assert "p.json" in str(info.value)


def test_detection_from_the_declared_shape() -> None:
    prep, note = preprocess.detect(("batch", 224, 224, 3))
    assert (prep.layout, prep.channels, prep.size) == ("NHWC", 3, (224, 224))
    assert note is not None and "--layout NCHW" in note
    prep, note = preprocess.detect(("n", 3, 224, 224))
    assert (prep.layout, prep.channels, prep.size, note) == ("NCHW", 3, (224, 224), None)
    prep, _ = preprocess.detect((1, 1, 64, "image_width"))
    assert (prep.layout, prep.channels, prep.size) == ("NCHW", 1, (64, None))
    with pytest.raises(InputError, match="--size"):
        preprocess.detect((1, 3, 2**40, 2**40))


def test_fixed_height_keeps_the_aspect() -> None:
    picture = np.zeros((20, 100, 1), np.float32)
    canvas, placement = place(picture, Preprocessing(size=(64, None)))
    assert canvas.shape == (64, 320, 1)
    assert placement.scale == pytest.approx((3.2, 3.2))


def test_letterbox_pads_and_crop_cuts() -> None:
    picture = np.ones((10, 20, 3), np.float32)
    boxed, _ = place(picture, Preprocessing(size=(20, 20), resize="letterbox", fill=0.25))
    assert boxed.shape == (20, 20, 3)
    assert np.all(boxed[:5] == 0.25) and np.all(boxed[15:] == 0.25) and np.all(boxed[5:15] == 1.0)
    cropped, placement = place(picture, Preprocessing(size=(10, 10), resize="crop"))
    assert cropped.shape == (10, 10, 3) and np.all(cropped == 1.0)
    assert placement.offset == (0.0, -5.0)  # the middle half of the width is kept


def test_bad_sizes() -> None:
    for size in [(0, 0), (-1, 4), (None, None), (4, 1 << 20)]:
        with pytest.raises(InputError):
            preprocess.check_size(size)


@given(
    original=st.tuples(st.integers(4, 48), st.integers(4, 48)),
    canvas=st.tuples(st.integers(4, 48), st.integers(4, 48)),
    mode=st.sampled_from(["stretch", "crop", "letterbox", "keep-height", "crop-0.875"]),
)
def test_the_inverse_lands_on_the_original_pixels(original, canvas, mode) -> None:
    """A picture whose two channels hold each pixel's own (y, x) centre, normalised, is placed on the
    canvas by the real resize (pillow); the placed values, taken as a map and carried back, must give
    each original pixel its own coordinates, within one canvas pixel."""
    h, w = original
    ys, xs = np.mgrid[0:h, 0:w]
    picture = np.stack([(ys + 0.5) / h, (xs + 0.5) / w], axis=2).astype(np.float32)
    if mode == "keep-height":
        prep = Preprocessing(size=(canvas[0], None))
    elif mode == "crop-0.875":
        prep = Preprocessing(size=canvas, resize="crop", crop_fraction=0.875)
    else:
        prep = Preprocessing(size=canvas, resize=mode)
    placed, placement = place(picture, prep)
    back = [placement.to_original(placed[:, :, c], outside=np.nan) * side for c, side in enumerate(original)]
    centres = (ys + 0.5, xs + 0.5)
    inside, gone, roomy = np.ones((h, w), bool), np.zeros((h, w), bool), True
    for axis in (0, 1):
        scale, offset, side = placement.scale[axis], placement.offset[axis], placement.canvas[axis]
        u = scale * centres[axis] + offset  # where each original pixel centre sits on the canvas
        shown_from, shown_to = max(0.0, offset), min(float(side), offset + scale * original[axis])
        inside &= (u >= shown_from + 1.0) & (u <= shown_to - 1.0)  # a canvas pixel away from pad and edges
        gone |= (u < -1.0) | (u > side + 1.0)
        roomy &= shown_to - shown_from >= 4.0  # room for pixels a canvas pixel away from the edges
    assert inside.any() or not roomy  # the checks below are not vacuous
    for axis in (0, 1):
        one_pixel = max(1.0, 1.0 / placement.scale[axis])  # one canvas pixel, in original pixels
        assert np.all(np.abs(back[axis][inside] - centres[axis][inside]) <= one_pixel)
    assert not np.any(np.isnan(back[0][inside]))
    assert np.all(np.isnan(back[0][gone]))  # what a crop cut away maps to `outside`
    if mode in ("stretch", "letterbox", "keep-height"):
        assert not np.any(np.isnan(back[0]))  # nothing is cut away


def test_a_layout_flag_reads_the_declared_shape_by_that_layout(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    prep, notes = preprocess.choose((1, 3, 32, 3), model, overrides={"layout": "NHWC"})  # ambiguous: say it
    assert (prep.layout, prep.channels, prep.size, notes) == ("NHWC", 3, (3, 32), [])
    prep, _ = preprocess.choose((1, 224, 224, 3), model, overrides={"layout": "NCHW"})
    assert (prep.channels, prep.size) == (224, (224, 3))


def test_mean_of_the_wrong_length_names_the_flag() -> None:
    with pytest.raises(InputError, match="pass --mean with 1 value"):
        Preprocessing(mean=(0.5, 0.5, 0.5), channels=1).to_model_values(np.zeros((2, 2, 1), np.float32))
