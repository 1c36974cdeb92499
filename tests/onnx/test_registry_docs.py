"""The ONNX rule registry against the issue's operator list and README.md, and opset forms pinned down.

- every operator the issue requires has a reverse-mode (VJP) and a forward-mode (JVP) rule;
- the operators it names as constants / piecewise constant are classified so (Range: differentiable in
  start and delta only, see ``test_constants_and_fallback.py``);
- the tables of README.md's "## ONNX operators" section name exactly ``supported_operators()``;
- deterministic finite-difference checks of forms the hypothesis ``ci`` profile may never draw:
  BatchNormalization-15 (``training_mode=0``), Resize-19 (nearest and linear) and Clip-13/17 with both
  bounds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from harness import assert_gradients_match, make_model, run_vjp
from onnx import helper

from gradsal.backends.onnx import supported_operators
from gradsal.backends.onnx.rules import registry as _rules

README = Path(__file__).resolve().parents[2] / "README.md"
F32, F64 = np.float32, np.float64

REQUIRED = (
    "Conv", "ConvTranspose", "BatchNormalization", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Pow",
    "Sqrt", "Exp", "Log", "Abs", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Clip", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softmax", "LogSoftmax", "Erf", "Gelu", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "Flatten", "Reshape", "Transpose", "Squeeze",
    "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Expand", "Pad", "Resize", "Upsample", "Identity",
    "Dropout", "Cast", "Where", "LayerNormalization",
)


# ------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("op", REQUIRED)
def test_required_operator_has_vjp_and_jvp_rules(op: str) -> None:
    supported = supported_operators()  # loads the rule modules
    rules = _rules.rules_for(op)
    assert rules is not None and op in supported, f"{op} has no rule"
    assert rules.vjp is not None, f"{op} has no VJP rule"
    assert rules.jvp is not None, f"{op} has no JVP rule"
    assert op not in _rules.SHAPE_ONLY_OPS and op not in _rules.NON_DIFFERENTIABLE_OPS


def test_known_constant_and_piecewise_constant_operators() -> None:
    supported_operators()
    assert {"Shape", "Constant", "ConstantOfShape", "Size", "EyeLike"} <= _rules.SHAPE_ONLY_OPS
    assert {"Equal", "Greater", "Less", "ArgMax", "Round"} <= _rules.NON_DIFFERENTIABLE_OPS
    for op in ("Shape", "Constant", "ConstantOfShape", "Equal"):
        assert _rules.rules_for(op) is None, f"{op} is classified non-differentiable but has a rule"
    # Range is shape arithmetic off the path, and start + i delta on it: never through its limit
    rules = _rules.rules_for("Range")
    assert "Range" not in _rules.SHAPE_ONLY_OPS
    assert rules is not None and rules.vjp is not None and rules.jvp is not None and rules.differentiable == (0, 2)


def test_no_operator_is_both_ruled_and_classified_non_differentiable() -> None:
    supported = set(supported_operators())
    assert not supported & _rules.SHAPE_ONLY_OPS
    assert not supported & _rules.NON_DIFFERENTIABLE_OPS
    assert _rules.RANDOM_OPS <= _rules.SHAPE_ONLY_OPS


def test_every_registered_vjp_rule_has_a_jvp_rule() -> None:
    for op in supported_operators():
        rules = _rules.rules_for(op)
        assert rules is not None and rules.jvp is not None, f"{op} has a VJP rule but no JVP rule"


# ------------------------------------------------------------------------------------------- README
def readme_table_operators(text: str) -> list[str]:
    """The operators named (in backticks) in the first column of the tables of "## ONNX operators"."""
    section = re.search(r"^## ONNX operators\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert section is not None, "README.md has no '## ONNX operators' section"
    names = []
    for line in section.group(1).splitlines():
        if not line.startswith("|"):
            continue
        first = line.strip("|").split("|")[0].strip()
        if first == "Operator" or set(first) <= set("-: "):
            continue  # the header row and the separator row
        found = re.findall(r"`([A-Za-z][A-Za-z0-9]*)`", first)
        assert found, f"a README table row names no operator in its first column: {line!r}"
        names.extend(found)
    return names


def test_readme_tables_name_exactly_the_supported_operators() -> None:
    listed = readme_table_operators(README.read_text(encoding="utf-8"))
    duplicates = sorted({op for op in listed if listed.count(op) > 1})
    assert not duplicates, f"README.md lists these operators twice: {duplicates}"
    supported = set(supported_operators())
    assert not supported - set(listed), f"supported but missing from README.md: {sorted(supported - set(listed))}"
    assert not set(listed) - supported, f"in README.md but not supported: {sorted(set(listed) - supported)}"


def test_readme_parser_reads_multi_operator_rows() -> None:
    text = ("## ONNX operators\n\n| Operator | Opsets | VJP rule |\n|---|---|---|\n"
            "| `Add`, `Sub` | any | `g` and ±`g` |\n| `Exp` | any | `g` y |\n\n## Layout\n| `NotThis` | x | y |\n")
    assert readme_table_operators(text) == ["Add", "Sub", "Exp"]


# ------------------------------------------------------------------------ opset forms, deterministic
def node(op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: object):
    return helper.make_node(op, inputs, outputs or ["y"], **attrs)


@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (1, 2, 3, 2)], ids=["rank2", "rank3", "rank4"])
def test_batch_normalization_opset15_inference(shape: tuple[int, ...], epsilon: float) -> None:
    """BatchNormalization-15 with ``training_mode=0``, the inference form:
    y = scale (x - mean) / sqrt(var + epsilon) + bias."""
    rng = np.random.default_rng(3)
    channels = shape[1]
    params = {"scale": rng.standard_normal(channels), "bias": rng.standard_normal(channels),
              "mean": rng.standard_normal(channels), "var": rng.random(channels) + 0.2}
    x = rng.standard_normal(shape)
    bn = node("BatchNormalization", ["x", *params], epsilon=epsilon, momentum=0.9, training_mode=0)
    model = make_model([bn], {"x": x}, ["y"], initializers=params, opset=15)
    assert_gradients_match(model, x)


RESIZE_19 = [
    ("nearest", "asymmetric", "floor", [1.0, 1.0, 2.0, 1.5], None),
    ("nearest", "half_pixel", "round_prefer_ceil", [1.0, 1.0, 0.5, 2.5], None),
    ("nearest", "half_pixel_symmetric", "round_prefer_floor", None, [1, 2, 5, 3]),
    ("nearest", "tf_half_pixel_for_nn", "ceil", None, [1, 2, 2, 7]),
    ("linear", "half_pixel", None, [1.0, 1.0, 2.0, 1.5], None),
    ("linear", "align_corners", None, None, [1, 2, 5, 6]),
    ("linear", "half_pixel_symmetric", None, [1.0, 1.0, 0.75, 2.0], None),
    ("linear", "pytorch_half_pixel", None, None, [1, 2, 1, 3]),
]


@pytest.mark.parametrize(("mode", "coordinates", "nearest_mode", "scales", "sizes"), RESIZE_19,
                         ids=[f"{m}-{c}-{'scales' if s else 'sizes'}" for m, c, _, s, _ in RESIZE_19])
def test_resize_opset19(mode: str, coordinates: str, nearest_mode: str | None, scales: list[float] | None,
                        sizes: list[int] | None) -> None:
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 4)).astype(F32)
    attrs: dict[str, object] = {"mode": mode, "coordinate_transformation_mode": coordinates}
    if nearest_mode is not None:
        attrs["nearest_mode"] = nearest_mode
    if scales is not None:
        inputs, initializers = ["x", "", "scales"], {"scales": np.array(scales, F32)}
    else:
        inputs, initializers = ["x", "", "", "sizes"], {"sizes": np.array(sizes, np.int64)}
    model = make_model([node("Resize", inputs, **attrs)], {"x": x}, ["y"], initializers=initializers, opset=19)
    assert_gradients_match(model, x)


def test_resize_opset19_axes_and_aspect_ratio_policy() -> None:
    """Resize-18+ ``axes`` with ``keep_aspect_ratio_policy="not_larger"`` on sizes, at opset 19."""
    x = np.random.default_rng(6).standard_normal((1, 2, 3, 4)).astype(F32)
    resize = node("Resize", ["x", "", "", "sizes"], mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger",
                  coordinate_transformation_mode="half_pixel")
    model = make_model([resize], {"x": x}, ["y"], initializers={"sizes": np.array([6, 6], np.int64)}, opset=19)
    assert_gradients_match(model, x)


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize(("low", "high"), [(-0.4, 0.6), (0.0, 0.2), (-1.0, -0.2)])
def test_clip_with_both_bounds(opset: int, low: float, high: float) -> None:
    """Clip(x, low, high) with both bound inputs: x is 0.1 off every multiple of 0.2, so no element sits
    within the finite-difference step of a bound; the gradient is 1 strictly inside the bounds, else 0."""
    x = (np.arange(-7, 7).reshape(2, 7) * 0.2 + 0.1).astype(F64)
    bounds = {"low": np.array(low, F64), "high": np.array(high, F64)}
    model = make_model([node("Clip", ["x", "low", "high"])], {"x": x}, ["y"], initializers=bounds, opset=opset)
    assert_gradients_match(model, x)
    _, grad = run_vjp(model, x, np.ones_like(x))
    np.testing.assert_array_equal(grad, ((x > low) & (x < high)).astype(F64))
