"""Straight-through differentiation of quantised models, against the float network's gradient.

The straight-through gradient of a quantised model is the gradient of the float network it approximates,
with the dequantised weights: checked exactly (float32 rounding) against closed forms and torch autograd in
float64 on that network, and against the original float model's gradient (OnnxBackend.vjp of the float
model, itself tested against finite differences) within the quantisation error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from quantised_models import DYNAMIC_WEIGHT, dynamically_quantised_matmul

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend, StraightThroughWarning

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")

RNG = np.random.default_rng(11)
# The straight-through gradient against the float model's: the median over samples of their relative L2
# distance. Weights are quantised to 8 bits (each off by at most half a step, range / 510) and activations
# too (QDQ), which moves a gradient by about 1% (measured median over 20 draws: 0.6% dynamic, 1.0% QDQ);
# but where a pre-activation lies within the quantisation error of zero the two networks' ReLU masks
# differ and one sample's gradient moves by up to 25% (measured), hence a median, and 3%.
FLOAT_MODEL_RTOL = 0.03
SAMPLES = 8


def test_the_default_refuses_naming_the_opt_in() -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(gs.UnsupportedOperatorError, match=r"quantised: DynamicQuantizeLinear, MatMulInteger.*"
                                                          r"quantised='straight_through'"):
        OnnxBackend(dynamically_quantised_matmul()).vjp(x, np.ones((2, 2), np.float32))
    with pytest.raises(gs.InputError, match="quantised must be"):
        OnnxBackend(dynamically_quantised_matmul(), quantised="ste")


def test_a_dynamic_matmul_is_differentiated_as_its_dequantised_float_matmul() -> None:
    # y ~ x @ W with W = (Wq - 128) * 0.01: J^T v = v @ W^T and J u = u @ W (closed form)
    model = dynamically_quantised_matmul()
    before = model.SerializeToString()
    with pytest.warns(StraightThroughWarning, match="gradients are those of the float network"):
        backend = OnnxBackend(model, quantised="straight_through")
    assert model.SerializeToString() == before  # the caller's model is not rewritten
    weight = (DYNAMIC_WEIGHT.astype(np.float64) - 128) * 0.01
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    v = RNG.standard_normal((4, 2)).astype(np.float32)
    u = RNG.standard_normal((4, 3)).astype(np.float32)
    output, grad = backend.vjp(x, v)
    np.testing.assert_array_equal(output, backend.forward(x))  # the quantised model's own output
    np.testing.assert_allclose(grad, v @ weight.T, rtol=1e-5, atol=1e-6)
    output, product = backend.jvp(x, u)
    np.testing.assert_array_equal(output, backend.forward(x))
    np.testing.assert_allclose(product, u @ weight, rtol=1e-5, atol=1e-6)


def test_a_quantize_dequantize_pair_is_the_identity_inside_its_range() -> None:
    # y = tanh(DQ(Q(x))) with int8, scale 0.02: the float network is tanh(clip(x, -2.56, 2.54)), whose
    # gradient is 1 - tanh(x)^2 inside the range and 0 where the quantiser saturates
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Tanh", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                              [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = RNG.uniform(-4, 4, (3, 5)).astype(np.float32)
    x[0, :2] = [-3.0, 3.0]  # surely saturated
    v = RNG.standard_normal((3, 5)).astype(np.float32)
    with pytest.raises(gs.UnsupportedOperatorError, match="QuantizeLinear"):
        OnnxBackend(model).vjp(x, v)
    with pytest.warns(StraightThroughWarning):
        backend = OnnxBackend(model, quantised="straight_through")
    _, grad = backend.vjp(x, v)
    inside = (x > -2.56) & (x < 2.54)
    np.testing.assert_allclose(grad, v * (1 - np.tanh(x.astype(np.float64)) ** 2) * inside, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- a torch model quantised by onnxruntime
class _ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def float_and_quantised(tmp_path_factory: pytest.TempPathFactory) -> tuple[_ConvNet, Path, dict[bool, Path], Path]:
    torch.manual_seed(3)
    net = _ConvNet().eval()
    folder = tmp_path_factory.mktemp("quantised")
    float_path, qdq_path = folder / "f.onnx", folder / "qdq.onnx"
    dynamic_paths = {per_channel: folder / f"dynamic_{per_channel}.onnx" for per_channel in (False, True)}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation, onnxruntime's pre-processing advice
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 2, 8, 8),), str(float_path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        for per_channel, dynamic_path in dynamic_paths.items():  # per channel: the MatMul's scale per column
            quantization.quantize_dynamic(str(float_path), str(dynamic_path), per_channel=per_channel,
                                          weight_type=quantization.QuantType.QUInt8)
        quantization.quantize_static(str(float_path), str(qdq_path), _Calibration(),
                                     quant_format=quantization.QuantFormat.QDQ)
    return net, float_path, dynamic_paths, qdq_path


class _Calibration(quantization.CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(5)
        # enough samples that the test inputs (same distribution) rarely leave the calibrated ranges, where
        # the quantiser saturates and the clipped straight-through gradient is zero (8 samples: 12% off)
        self.batches = iter([{"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)} for _ in range(64)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _dequantised(model: onnx.ModelProto, name: str) -> np.ndarray:
    values = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in model.graph.initializer}
    return (values[f"{name}_quantized"] - values[f"{name}_zero_point"]) * values[f"{name}_scale"]


def _median_relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median([np.linalg.norm(ai - bi) / np.linalg.norm(bi) for ai, bi in zip(a, b, strict=True)]))


def _samples(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((SAMPLES, 2, 8, 8)).astype(np.float32),
            rng.standard_normal((SAMPLES, 5)).astype(np.float32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantisation_gives_the_float_network_gradient(float_and_quantised, per_channel: bool) -> None:
    net, float_path, dynamic_paths, _ = float_and_quantised
    dynamic_path = dynamic_paths[per_channel]
    x, v = _samples(1)
    with pytest.warns(StraightThroughWarning, match="2 quantised pattern"):
        backend = OnnxBackend(str(dynamic_path), quantised="straight_through")
    output, grad = backend.vjp(x, v)
    np.testing.assert_array_equal(output, backend.forward(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StraightThroughWarning)  # said once, not again by a twin
        assert backend.randomized("fc.bias", seed=0).forward(x).shape == output.shape

    # exact: torch autograd in float64 on the float network with the dequantised weights
    quantised = onnx.load(str(dynamic_path))
    twin = _ConvNet().double()
    with torch.no_grad():
        twin.conv.weight.copy_(torch.from_numpy(_dequantised(quantised, "conv.weight")))
        twin.conv.bias.copy_(net.conv.bias.double())
        twin.fc.weight.copy_(torch.from_numpy(_dequantised(quantised, "fc.weight_Transposed").T))
        twin.fc.bias.copy_(net.fc.bias.double())
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    (twin(xt) * torch.from_numpy(v.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-6)

    # within the quantisation error: the float model's own gradient
    _, float_grad = OnnxBackend(str(float_path)).vjp(x, v)
    assert _median_relative(grad, float_grad) < FLOAT_MODEL_RTOL


def test_qdq_quantisation_gives_the_float_network_gradient(float_and_quantised) -> None:
    _, float_path, _, qdq_path = float_and_quantised
    x, v = _samples(2)
    with pytest.raises(gs.UnsupportedOperatorError, match="quantised='straight_through'"):
        OnnxBackend(str(qdq_path)).vjp(x, v)
    with pytest.warns(StraightThroughWarning):
        backend = OnnxBackend(str(qdq_path), quantised="straight_through")
    output, grad = backend.vjp(x, v)
    np.testing.assert_array_equal(output, backend.forward(x))
    _, float_grad = OnnxBackend(str(float_path)).vjp(x, v)
    assert _median_relative(grad, float_grad) < FLOAT_MODEL_RTOL
