"""gradsal.core.visualize: colour maps, overlays, side-by-side pictures, feature bar charts and text.

Independent references: colour-map anchors are the published definitions (matplotlib's segment data for
jet and hot, viridis' endpoint colours), luminance uses the Rec. 709 weights, blending is checked against
the blend formula on the separately rendered pieces, and bar charts are read back from their pixels.
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradsal.core import visualize as viz
from gradsal.core.errors import InputError, InputTypeError, MissingDependencyError

Image = pytest.importorskip("PIL.Image")

RAMP = np.linspace(0.0, 1.0, 256)[None, :]


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def pixels(picture) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


finite_maps = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


# ----------------------------------------------------------------------------------------------- colour maps


@pytest.mark.parametrize(("cmap", "low", "high"), [
    ("gray", (0, 0, 0), (255, 255, 255)),
    ("hot", (11, 0, 0), (255, 255, 255)),
    ("jet", (0, 0, 128), (128, 0, 0)),
    ("viridis", (0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)),
    ("bwr", (0, 0, 255), (255, 0, 0)),
])
def test_colour_map_endpoints(cmap, low, high):
    colours = viz.colorize(RAMP, cmap, signed=False)
    assert colours.dtype == np.uint8 and colours.shape == (1, 256, 3)
    assert tuple(colours[0, 0]) == low and tuple(colours[0, -1]) == high


@pytest.mark.parametrize("cmap", ["gray", "hot", "viridis"])
def test_sequential_maps_have_increasing_luminance(cmap):
    light = luminance(viz.colorize(RAMP, cmap)[0])
    assert np.all(np.diff(light) >= -0.5)  # up to one 8-bit rounding step of one channel (viridis' blue)
    assert np.all(light[8:] - light[:-8] > 0) and light[-1] - light[0] > 150


def test_jet_passes_through_blue_cyan_yellow_red():
    colours = viz.colorize(np.array([[0.125, 0.5, 0.89, 1.0]]), "jet", signed=False)[0]
    np.testing.assert_allclose(colours, [[0, 0, 255], [123, 255, 123], [255, 19, 0], [128, 0, 0]], atol=1)


def test_bwr_is_white_at_the_centre_and_symmetric_in_luminance():
    colours = viz.colorize(np.linspace(-1.0, 1.0, 201)[None], "bwr")[0]
    assert tuple(colours[100]) == (255, 255, 255)
    light = luminance(colours)
    assert light.argmax() == 100
    assert np.all(np.diff(light[:101]) >= 0) and np.all(np.diff(light[100:]) <= 0)


def test_matches_matplotlib_when_installed():
    matplotlib = pytest.importorskip("matplotlib")
    for name in ("jet", "hot", "viridis", "gray", "bwr"):
        reference = np.round(matplotlib.colormaps[name](RAMP[0])[:, :3] * 255)
        tolerance = 5 if name == "viridis" else 1  # viridis: 17 interpolated anchors, as documented
        assert np.abs(viz.colorize(RAMP, name)[0].astype(float) - reference).max() <= tolerance, name


@given(finite_maps)
def test_signed_maps_put_zero_at_the_centre_colour(values):
    values = values.copy()
    values.flat[0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", viz.UniformMapWarning)  # an all-zero draw is allowed here
        colours = viz.colorize(values, "bwr", signed=True).astype(int)
    assert (colours[values == 0] == 255).all()
    red, blue = colours[..., 0], colours[..., 2]
    assert (red[values > 0] >= blue[values > 0]).all() and (blue[values < 0] >= red[values < 0]).all()


@given(finite_maps)
def test_colorize_orders_values_and_ignores_positive_scale(values):
    if np.ptp(values) == 0:
        return
    grey = viz.colorize(values, "gray")[..., 0].astype(int).ravel()
    order = np.argsort(values.ravel(), kind="stable")
    assert np.all(np.diff(grey[order]) >= 0)
    scaled = viz.colorize(values * 7.5, "gray")
    assert np.abs(scaled.astype(int) - viz.colorize(values, "gray")).max() <= 1


def test_unsigned_maps_start_at_zero_and_explicit_range_clips():
    assert tuple(viz.colorize(np.array([[0.5, 1.0]]), "gray")[0, 0]) == (128, 128, 128)
    fixed = viz.colorize(np.array([[-5.0, 0.25, 9.0]]), "gray", value_range=(0.0, 0.5))[0]
    assert [tuple(c) for c in fixed] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


# --------------------------------------------------------------------------------------------- uniform maps


@pytest.mark.parametrize("signed", [None, True, False])
def test_uniform_map_warns_and_gives_a_flat_picture(signed):
    with pytest.warns(viz.UniformMapWarning, match="constant"):
        colours = viz.colorize(np.zeros((4, 5)), "bwr", signed=signed)
    assert (colours == colours[0, 0]).all()
    if signed:
        assert tuple(colours[0, 0]) == (255, 255, 255)


def test_uniform_map_in_every_picture_function():
    image = np.full((6, 8), 0.5)
    for draw in (viz.heatmap, lambda m: viz.overlay(image, m), lambda m: viz.side_by_side(image, m, caption="x")):
        with pytest.warns(viz.UniformMapWarning):
            picture = draw(np.zeros((6, 8), dtype=np.float32))
        assert np.isfinite(pixels(picture)).all()
    assert issubclass(viz.UniformMapWarning, UserWarning)


def test_non_uniform_map_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.overlay(np.zeros((4, 4)), np.eye(4))


# ------------------------------------------------------------------------------------------------- overlays

H, W = 6, 10
LAYOUTS = {
    "HW": lambda hwc: hwc[..., 0],
    "HW1": lambda hwc: hwc[..., :1],
    "HWC": lambda hwc: hwc,
    "1HW": lambda hwc: np.moveaxis(hwc[..., :1], -1, 0),
    "CHW": lambda hwc: np.moveaxis(hwc, -1, 0),
    "1CHW": lambda hwc: np.moveaxis(hwc, -1, 0)[None],
}


def rgb_image(dtype) -> np.ndarray:
    hwc = np.random.default_rng(1).random((H, W, 3))
    return np.round(hwc * 255).astype(np.uint8) if dtype == np.uint8 else hwc.astype(dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_overlay_size_for_every_layout_and_dtype(layout, dtype):
    image = LAYOUTS[layout](rgb_image(dtype))
    saliency = np.random.default_rng(2).random((H, W))
    picture = viz.overlay(image, saliency, scale=3)
    assert picture.mode == "RGB" and picture.size == (3 * W, 3 * H)
    assert viz.overlay(image, saliency).size == (W * (256 // W), H * (256 // W))


def test_chw_and_hwc_give_the_same_picture():
    hwc = rgb_image(np.float32)
    saliency = np.random.default_rng(3).random((H, W))
    np.testing.assert_array_equal(pixels(viz.overlay(hwc, saliency)),
                                  pixels(viz.overlay(np.moveaxis(hwc, -1, 0), saliency)))
    as_bytes = rgb_image(np.uint8)
    np.testing.assert_array_equal(pixels(viz.overlay(as_bytes, saliency)),
                                  pixels(viz.overlay(as_bytes / 255.0, saliency)))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_is_the_blend_of_image_and_colours(alpha):
    image = rgb_image(np.uint8)
    saliency = np.random.default_rng(4).normal(size=(H, W))
    colours = viz.colorize(saliency, "bwr").astype(float)
    expected = (1 - alpha) * image + alpha * colours
    got = pixels(viz.overlay(image, saliency, cmap="bwr", alpha=alpha, scale=1)).astype(float)
    assert np.abs(got - expected).max() <= 1.0


def test_grey_image_is_repeated_over_three_channels():
    grey = np.linspace(0, 1, H * W).reshape(H, W)
    got = pixels(viz.overlay(grey, np.eye(H, W), alpha=0.0, scale=1))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], np.round(grey * 255).astype(np.uint8))


def test_coarse_map_is_resized_to_the_image():
    coarse = np.array([[0.0, 1.0], [0.0, 1.0]])
    picture = pixels(viz.overlay(np.zeros((8, 12)), coarse, cmap="gray", alpha=1.0, scale=1))
    assert picture.shape == (8, 12, 3)
    row = picture[4, :, 0].astype(int)
    assert row[0] < 30 and row[-1] > 225 and np.all(np.diff(row) >= 0)


def test_heatmap_enlarges_small_maps_with_nearest_neighbours():
    saliency = np.random.default_rng(5).random((4, 3))
    picture = pixels(viz.heatmap(saliency, cmap="viridis", scale=5))
    np.testing.assert_array_equal(picture[::5, ::5], viz.colorize(saliency, "viridis"))
    np.testing.assert_array_equal(picture[4::5, 4::5], viz.colorize(saliency, "viridis"))
    assert viz.heatmap(np.ones((32, 32)) * np.arange(32)).size == (256, 256)
    assert viz.heatmap(np.ones((300, 200)) * np.arange(200)).size == (200, 300)


# ------------------------------------------------------------------------------------------ side by side


def test_side_by_side_has_image_map_and_overlay_panels():
    image = rgb_image(np.uint8)
    saliency = np.random.default_rng(6).random((H, W))
    picture = viz.side_by_side(image, saliency, caption="vanilla | predicted 3 | target 3", scale=4)
    plain = viz.side_by_side(image, saliency, scale=4)
    got = pixels(picture)
    panels = [pixels(viz.overlay(image, saliency, alpha=0.0, scale=4)), pixels(viz.heatmap(saliency, scale=4)),
              pixels(viz.overlay(image, saliency, scale=4))]
    found = [_find(got, panel) for panel in panels]
    assert all(found), found
    xs = [spot[1] for spot in found]
    assert xs == sorted(xs) and len({spot[0] for spot in found}) == 1  # one row, left to right
    assert picture.height > plain.height  # the caption takes a line
    caption_area = got[plain.height - 10:, : found[0][1] + panels[0].shape[1]]  # under the first panel
    assert (caption_area < 100).any()  # dark text drawn


def _find(canvas: np.ndarray, panel: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner where ``panel`` appears exactly in ``canvas`` (searched along rows)."""
    h, w = panel.shape[:2]
    for top in range(canvas.shape[0] - h + 1):
        for left in range(canvas.shape[1] - w + 1):
            if np.array_equal(canvas[top, left:left + w], panel[0]) and \
                    np.array_equal(canvas[top:top + h, left:left + w], panel):
                return top, left
    return None


def test_long_caption_wraps_and_stays_inside():
    picture = viz.side_by_side(np.zeros((8, 8)), np.eye(8), caption="word " * 80, scale=4)
    one_line = viz.side_by_side(np.zeros((8, 8)), np.eye(8), caption="word", scale=4)
    assert picture.width == one_line.width and picture.height > one_line.height + 18


# ----------------------------------------------------------------------------------------- feature charts

NAMES = [f"feature {i}" for i in range(12)]
VALUES = np.array([0.5, -2.0, 0.1, 3.0, 0.0, -0.7, 1.2, 0.05, -0.3, 0.9, -1.5, 0.2])


def _expected_ranking(values: np.ndarray, top_k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda j: (-abs(values[j]), j))[:top_k]


@pytest.mark.parametrize("top_k", [1, 5, 10, 12])
def test_bar_chart_png_has_one_bar_per_feature_in_rank_order(top_k):
    picture = viz.feature_bar_chart(NAMES, VALUES, top_k=top_k, title="gradient x input")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    reopened.verify()
    got = pixels(Image.open(io.BytesIO(buffer.getvalue())))
    layout = viz.bar_chart_layout(NAMES, VALUES, top_k=top_k, title="gradient x input")
    assert got.shape[:2] == (layout.size[1], layout.size[0])
    expected = _expected_ranking(VALUES, top_k)
    assert [bar.name for bar in layout.bars] == [NAMES[j] for j in expected]
    # read the bars back from the pixels: coloured runs along a column just beside the zero axis
    positive = _runs(got[:, layout.zero_x + 1], viz._POSITIVE_RGB)
    negative = _runs(got[:, layout.zero_x - 2], viz._NEGATIVE_RGB)
    assert len(positive) == sum(VALUES[j] > 0 for j in expected)
    assert len(negative) == sum(VALUES[j] < 0 for j in expected)


def _runs(column: np.ndarray, colour: tuple[int, int, int]) -> list[int]:
    hit = np.all(column == colour, axis=-1).astype(int)
    return list(np.flatnonzero(np.diff(np.concatenate([[0], hit])) == 1))


def test_bar_lengths_are_proportional_to_values():
    layout = viz.bar_chart_layout(NAMES, VALUES, top_k=12)
    lengths = np.array([bar.box[2] - bar.box[0] for bar in layout.bars], dtype=float)
    values = np.array([abs(bar.value) for bar in layout.bars])
    span = layout.plot[1] - layout.plot[0]
    np.testing.assert_allclose(lengths, span * values / (VALUES.max() - VALUES.min()), atol=1.0)
    for bar in layout.bars:
        assert (bar.box[0] >= layout.zero_x) == (bar.value >= 0)


def test_positive_only_chart_starts_at_the_left():
    layout = viz.bar_chart_layout(["a", "b"], np.array([1.0, 2.0]))
    assert layout.zero_x == layout.plot[0]


def test_all_zero_attributions_warn_and_draw():
    with pytest.warns(viz.UniformMapWarning):
        picture = viz.feature_bar_chart(["a", "b", "c"], np.zeros(3))
    assert picture.size[0] > 0
    with pytest.warns(viz.UniformMapWarning):
        text = viz.feature_ranking_text(["a", "b", "c"], np.zeros(3))
    assert "nan" not in text.lower() and len(text.splitlines()) == 3


def test_ranking_text_lists_features_in_order_with_signed_bars():
    text = viz.feature_ranking_text(NAMES, VALUES, top_k=4)
    lines = text.splitlines()
    expected = _expected_ranking(VALUES, 4)
    assert len(lines) == 4
    for k, (line, j) in enumerate(zip(lines, expected, strict=True), start=1):
        assert line.split()[0] == str(k) and f"{NAMES[j]} " in line
        assert float(line.split()[3]) == pytest.approx(VALUES[j], rel=1e-2)
        left, right = line.split("|")
        assert ("#" in left) == (VALUES[j] < 0) and ("#" in right) == (VALUES[j] > 0)
    assert lines[0].count("#") == 20


# ---------------------------------------------------------------------------------------------- robustness


@given(
    hnp.arrays(np.float32, st.tuples(st.sampled_from([1, 3]), st.integers(2, 9), st.integers(2, 9)),
               elements=st.floats(0, 1, width=32)),
    st.floats(-5, 5, allow_nan=False),
)
def test_inputs_are_never_modified(image, offset):
    saliency = np.linspace(-1, 1, image.shape[1] * image.shape[2]).reshape(image.shape[1:]) + offset
    image_copy, map_copy = image.copy(), saliency.copy()
    viz.colorize(saliency, "jet")
    viz.overlay(image, saliency)
    viz.side_by_side(image, saliency, caption="c")
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(saliency, map_copy)


def test_bad_inputs_raise_gradsal_errors_with_a_fix():
    image = np.eye(4)
    cases = [
        (lambda: viz.colorize(np.full((2, 2), np.nan)), InputError, "NaN"),
        (lambda: viz.colorize(np.zeros((3, 4, 4))), InputError, "to_saliency_map"),
        (lambda: viz.colorize(np.zeros((2, 2)), "rainbow"), InputError, "viridis"),
        (lambda: viz.colorize(np.zeros((2, 2)), value_range=(1, 0)), InputError, "low < high"),
        (lambda: viz.colorize(np.array([["a"]])), InputTypeError, "real-valued"),
        (lambda: viz.overlay(image * 3.0, image), InputError, "x \\* std \\+ mean"),
        (lambda: viz.overlay(image.astype(np.int16), image), InputTypeError, "uint8"),
        (lambda: viz.overlay(np.zeros((5, 5, 2)), image), InputError, "C = 1, 3 or 4"),
        (lambda: viz.overlay(image, image, alpha=1.5), InputError, "\\[0, 1\\]"),
        (lambda: viz.overlay(image, image, scale=0), InputError, "integer"),
        (lambda: viz.feature_bar_chart(["a"], np.zeros(2)), InputError, "one name per feature"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_missing_pillow_names_the_extra(monkeypatch):
    for name in ("PIL", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"gradsal\[viz\]"):
        viz.heatmap(np.eye(3))
    with pytest.raises(ImportError):
        viz.feature_bar_chart(["a"], np.ones(1))
    assert viz.colorize(np.eye(3)).shape == (3, 3, 3)  # NumPy only


def test_importing_visualize_does_not_import_pillow():
    code = "import sys, gradsal.core.visualize as v; v.colorize([[0.0, 1.0]]); print('PIL' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
