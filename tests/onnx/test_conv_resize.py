"""Property tests of the Pad, Resize and Upsample rules (backends/onnx/_conv.py), at each opset variant:
Pad's pads attribute (< 11) or input (11+) and axes input (18+), wrap mode (19); Resize-10, -11, -13,
-18 (axes, keep_aspect_ratio_policy) and -19 (half_pixel_symmetric); Upsample-7/8 (scales attribute)
and -9 (scales input).

Every model is checked with ``assert_gradients_match`` (central finite differences of the original model
in onnxruntime, and <J u, v> = <u, J^T v>): Pad in float64, Resize/Upsample in float32 (onnxruntime has
no double kernel for them).
"""

from __future__ import annotations

import numpy as np
from harness import assert_gradients_match, make_model, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

F32, F64 = np.float32, np.float64


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def check(nodes, x, *, initializers=None, opset=17):
    assert_gradients_match(make_model(nodes, {"x": x}, ["y"], initializers=initializers, opset=opset), x)


def normal(seed: int, shape, dtype) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------- Pad


@st.composite
def pad_amounts(draw, size: int, mode: str) -> tuple[int, int]:
    """Begin/end pads of one axis; negative crops (at least one cell stays); reflect needs pad < size."""
    crop_begin = draw(st.integers(-min(1, size - 1), 0))
    crop_end = draw(st.integers(-min(1, size - 1 + crop_begin), 0))
    kept = size + crop_begin + crop_end
    limit = {"reflect": kept - 1, "wrap": kept}.get(mode, 3)
    begin = crop_begin if draw(st.booleans()) and crop_begin else draw(st.integers(0, min(limit, 3)))
    end = crop_end if draw(st.booleans()) and crop_end else draw(st.integers(0, min(limit, 3)))
    return begin, end


@given(data=st.data())
def test_pad(data):
    opset = data.draw(st.sampled_from([10, 11, 13, 18, 19, 21]))
    mode = data.draw(st.sampled_from(["constant", "reflect", "edge", *(["wrap"] if opset >= 19 else [])]))
    rank = data.draw(st.integers(1, 4))
    shape = [data.draw(st.integers(2 if mode == "reflect" else 1, 4 if rank < 3 else 2)) for _ in range(rank)]
    x = normal(data.draw(st.integers(0, 99)), shape, F64)
    axes = list(range(rank))
    if opset >= 18 and data.draw(st.booleans()):
        axes = data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    amounts = [data.draw(pad_amounts(shape[a], mode)) for a in axes]
    pads = [b for b, _ in amounts] + [e for _, e in amounts]
    if opset < 11:
        check([node("Pad", ["x"], mode=mode, pads=pads, value=1.5)], x, opset=opset)
        return
    inputs, initializers = ["x", "pads"], {"pads": np.array(pads, np.int64)}
    if mode == "constant" and data.draw(st.booleans()):
        inputs.append("value")
        initializers["value"] = np.array(-0.75)
    if axes != list(range(rank)):
        if len(inputs) == 2:
            inputs.append("")
        inputs.append("axes")
        negative = data.draw(st.booleans())
        initializers["axes"] = np.array([a - rank if negative else a for a in axes], np.int64)
    check([node("Pad", inputs, mode=mode)], x, initializers=initializers, opset=opset)


def test_reflect_pad_matches_numpy_adjoint():
    """Reflect pad's gradient folds the borders back: compare with the transpose of np.pad's index map."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5,))
    pads = (3, 2)
    model = make_model([node("Pad", ["x", "pads"], mode="reflect")], {"x": x}, ["y"],
                       initializers={"pads": np.array(pads, np.int64)})
    v = rng.standard_normal(5 + sum(pads))
    _, g = run_vjp(model, x, v)
    source = np.pad(np.arange(5), pads, mode="reflect")
    expected = np.zeros(5)
    np.add.at(expected, source, v)
    np.testing.assert_allclose(g, expected, rtol=1e-12)


# ------------------------------------------------------------------------------------------- Resize

COORDINATES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SCALES = [0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]


@st.composite
def resize_case(draw, opset: int):
    """A 4-D input resized along H and W: attributes, and the scales or sizes that say how."""
    mode = draw(st.sampled_from(["nearest", "linear"]))
    coordinates = COORDINATES + (["half_pixel_symmetric"] if opset >= 19 else [])
    if mode == "nearest":
        coordinates = [*coordinates, "tf_half_pixel_for_nn"]
    attrs = {"mode": mode, "coordinate_transformation_mode": draw(st.sampled_from(coordinates))}
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(NEAREST_MODES))
    shape = [1, draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    if draw(st.booleans()):
        scales = [1.0, 1.0, *[draw(st.sampled_from([s for s in SCALES if int(s * d) >= 1])) for d in shape[2:]]]
        return shape, attrs, np.array(scales, F32), None
    return shape, attrs, None, np.array([1, shape[1], draw(st.integers(1, 7)), draw(st.integers(1, 7))], np.int64)


@given(data=st.data())
def test_resize(data):
    """Nearest (every nearest_mode) and linear, every coordinate transform, from scales or from sizes."""
    opset = data.draw(st.sampled_from([11, 13, 18, 19, 21]))
    shape, attrs, scales, sizes = data.draw(resize_case(opset))
    x = normal(data.draw(st.integers(0, 99)), shape, F32)
    initializers = {"roi": np.array([], F32)}
    if opset >= 18 and data.draw(st.booleans()):  # scales/sizes given for the resized axes only
        attrs["axes"] = [2, 3]
        scales = None if scales is None else scales[2:]
        sizes = None if sizes is None else sizes[2:]
    if scales is not None:
        inputs = ["x", "roi", "scales"]
        initializers["scales"] = scales
    else:
        inputs = ["x", "roi", "scales", "sizes"] if opset < 13 else ["x", "", "", "sizes"]
        initializers.update(scales=np.array([], F32), sizes=sizes)
        if opset >= 18 and "axes" in attrs:
            attrs["keep_aspect_ratio_policy"] = data.draw(st.sampled_from(["stretch", "not_larger", "not_smaller"]))
    initializers = {k: v for k, v in initializers.items() if k in inputs}
    check([node("Resize", inputs, **attrs)], x, initializers=initializers, opset=opset)


@given(data=st.data())
def test_resize_tf_crop_and_resize(data):
    """Crop boxes (roi) with extrapolation: extrapolated cells are a constant and get no gradient."""
    opset = data.draw(st.sampled_from([11, 13, 18]))
    mode = data.draw(st.sampled_from(["nearest", "linear"]))
    x = normal(data.draw(st.integers(0, 99)), [1, 2, 3, 4], F32)
    starts = [data.draw(st.sampled_from([-0.2, 0.0, 0.1, 0.3])) for _ in range(2)]
    ends = [data.draw(st.sampled_from([0.6, 0.9, 1.0, 1.2])) for _ in range(2)]
    roi = np.array([0, 0, *starts, 1, 1, *ends], F32)
    sizes = np.array([1, 2, data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))], np.int64)
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=0.5)
    check([node("Resize", ["x", "roi", "scales", "sizes"], **attrs)], x,
          initializers={"roi": roi, "scales": np.array([], F32), "sizes": sizes}, opset=opset)


@given(data=st.data())
def test_resize_10_and_upsample(data):
    """The asymmetric-coordinate forms: Resize-10 and Upsample-9 (scales input), Upsample-7 (attribute)."""
    op, opset = data.draw(st.sampled_from([("Resize", 10), ("Upsample", 9), ("Upsample", 7)]))
    mode = data.draw(st.sampled_from(["nearest", "linear"]))
    shape = [1, data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))]
    allowed = [s for s in SCALES if s >= 1.0] if op == "Upsample" else SCALES  # Upsample only enlarges
    scales = [1.0, 1.0, *[data.draw(st.sampled_from([s for s in allowed if int(s * d) >= 1])) for d in shape[2:]]]
    x = normal(data.draw(st.integers(0, 99)), shape, F32)
    if opset < 9:
        check([node("Upsample", ["x"], mode=mode, scales=scales)], x, opset=opset)
    else:
        check([node(op, ["x", "scales"], mode=mode)], x, initializers={"scales": np.array(scales, F32)}, opset=opset)


def test_nearest_integer_upsampling_sums_blocks():
    """Nearest x(2, 3) upsampling: each input cell's gradient is the sum of its 2x3 block (NumPy)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 3, 2)).astype(F32)
    model = make_model([node("Resize", ["x", "", "scales"], mode="nearest")], {"x": x}, ["y"],
                       initializers={"scales": np.array([1, 1, 2, 3], F32)}, opset=13)
    v = rng.standard_normal((1, 2, 6, 6)).astype(F32)
    _, g = run_vjp(model, x, v)
    np.testing.assert_allclose(g, v.reshape(1, 2, 3, 2, 2, 3).sum(axis=(3, 5)), rtol=1e-5)
