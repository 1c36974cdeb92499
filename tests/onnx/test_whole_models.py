"""Whole models exported from PyTorch give the same gradients through OnnxBackend as through TorchBackend.

MLPs and CNNs (residual blocks, depthwise inverted-residual blocks with squeeze-excitation and
HardSwish, a small attention block with LayerNormalization and Softmax) are exported with
``torch.onnx.export`` (TorchScript exporter, opset 17, 13 and 11) and explained both ways: the reference
is torch autograd on the original module (``gradsal.backends.torch.TorchBackend``), which shares nothing
with the ONNX gradient graphs. Relative error (max |difference| / max |reference|) <= 1e-4 in float32,
for the vanilla gradient, the JVP, guided backprop / deconvnet and Grad-CAM's layer gradients; plus
symbolic batch and image sizes through one backend, and optimised vs unoptimised onnxruntime sessions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from gradsal.backends.onnx import LogitsWarning, OnnxBackend  # noqa: E402
from gradsal.backends.torch import TorchBackend  # noqa: E402
from gradsal.reference_models import architectures  # noqa: E402

TOLERANCE = 1e-4
IMAGE = (2, 3, 16, 16)


# ------------------------------------------------------------------------------------------- models
def _randomize_batch_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so that the export's BN folding matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                c = norm.num_features
                norm.running_mean.copy_(0.3 * torch.randn(c, generator=generator))
                norm.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                norm.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=generator))
                norm.bias.copy_(0.3 * torch.randn(c, generator=generator))


class Mlp(nn.Module):
    def __init__(self, n_in: int = 10, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class SmallResNet(nn.Module):
    """Conv stem, max-pool, one residual block, a last Conv (the Grad-CAM layer), global pool, Linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem, self.relu, self.pool = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.block = ResidualBlock(8)
        self.last = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.stem(x)))
        h = self.relu(self.last(self.block(h)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand + HardSwish, depthwise 3x3 + ReLU6, squeeze-excite, 1x1 project."""

    def __init__(self, c: int, expand: int = 3) -> None:
        super().__init__()
        e = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e),
                                       nn.ReLU6())
        self.se = SqueezeExcite(e)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class SmallMobileNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.Hardswish())
        self.block = InvertedResidual(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


class AttentionNet(nn.Module):
    """Patch embedding (strided Conv), pre-norm multi-head self-attention and GELU MLP, mean-pooled head."""

    def __init__(self, dim: int = 16, heads: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        q, k, v = self.qkv(self.norm1(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        t = t + self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(dim=1))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (Mlp, (3, 10)),
    "resnet": (SmallResNet, IMAGE),
    "mobilenet": (SmallMobileNet, IMAGE),
    "attention": (AttentionNet, IMAGE),
}


@functools.cache
def module(name: str) -> nn.Module:
    factory, _ = MODELS[name]
    torch.manual_seed(sum(map(ord, name)))
    model = factory().eval()
    _randomize_batch_norms(model, seed=1)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``exported(name, opset=17, dynamic=True)``: the path of the model's ONNX export (made once)."""
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple, Path] = {}

    def export(name: str, opset: int = 17, dynamic: bool = True, softmax: bool = False) -> Path:
        key = (name, opset, dynamic, softmax)
        if key not in cache:
            shape = MODELS[name][1]
            # eval() on the wrapper too: the exporter restores the wrapper's mode onto every submodule
            net = nn.Sequential(module(name), nn.Softmax(dim=1)).eval() if softmax else module(name)
            axes = {0: "batch"} if len(shape) == 2 else {0: "batch", 2: "height", 3: "width"}
            path = folder / f"{name}_{opset}_{dynamic}_{softmax}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(net, (torch.zeros(shape),), str(path), opset_version=opset, input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": axes} if dynamic else None,
                                  dynamo=False)
            cache[key] = path
        return cache[key]

    return export


def inputs(name: str, shape: tuple[int, ...] | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random input and a random cotangent for the model's output at that input."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape or MODELS[name][1]).astype(np.float32)
    with torch.no_grad():
        n_out = module(name)(torch.from_numpy(x)).shape
    return x, rng.standard_normal(tuple(n_out)).astype(np.float32)


def assert_relative(actual: np.ndarray, expected: np.ndarray, what: str, tolerance: float = TOLERANCE) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())
    assert error <= tolerance, f"{what}: relative error {error:.3g} > {tolerance}"


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(MODELS))
def test_vanilla_gradient_and_jvp_match_torch(name: str, exported) -> None:
    backend = OnnxBackend(exported(name))
    reference = TorchBackend(module(name))
    x, v = inputs(name)
    y, g = backend.vjp(x, v)
    y_ref, g_ref = reference.vjp(x, v)
    assert_relative(y, y_ref, f"{name} output")
    assert_relative(g, g_ref, f"{name} J^T v")
    u = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    assert_relative(backend.jvp(x, u)[1], reference.jvp(x, u)[1], f"{name} J u")


@pytest.mark.parametrize("name", ["mlp", "resnet"])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_relu_rules_match_torch(name: str, rule: str, exported) -> None:
    x, v = inputs(name, seed=2)
    g = OnnxBackend(exported(name)).with_relu_rule(rule).vjp(x, v)[1]
    g_ref = TorchBackend(module(name)).with_relu_rule(rule).vjp(x, v)[1]
    assert_relative(g, g_ref, f"{name} {rule} backprop")
    assert not np.allclose(g, TorchBackend(module(name)).vjp(x, v)[1], rtol=1e-2)  # the rule changed something


@pytest.mark.parametrize("name, tensor, torch_layer", [
    ("resnet", "/last/Conv_output_0", "last"),  # the usual Grad-CAM layer: the last Conv
    ("resnet", "/block/conv2/Conv_output_0", "block.bn2"),  # a Conv with batch-norm folded in by the export
    ("mobilenet", "/block/depthwise/depthwise.0/Conv_output_0", "block.depthwise.1"),  # depthwise Conv + BN
    ("attention", "/embed/Conv_output_0", "embed"),
])
def test_grad_cam_layer_gradients_match_torch(name: str, tensor: str, torch_layer: str, exported) -> None:
    backend = OnnxBackend(exported(name))
    assert tensor in backend.layer_names()
    x, v = inputs(name, seed=3)
    activation, grad = backend.layer_vjp(x, tensor, v)
    activation_ref, grad_ref = TorchBackend(module(name)).layer_vjp(x, torch_layer, v)
    assert_relative(activation, activation_ref, f"{name} activation at {tensor}")
    assert_relative(grad, grad_ref, f"{name} layer gradient at {tensor}")
    # Grad-CAM before its final ReLU: with random weights and cotangent the clipped map can be all zero
    # (it is for resnet), which would compare nothing
    signed = (grad.mean(axis=(2, 3), keepdims=True) * activation).sum(axis=1)
    signed_ref = (grad_ref.mean(axis=(2, 3), keepdims=True) * activation_ref).sum(axis=1)
    assert np.abs(signed_ref).max() > 0
    assert_relative(signed, signed_ref, f"{name} Grad-CAM map before its ReLU", tolerance=1e-3)


@pytest.mark.parametrize("name", ["resnet", "attention"])
def test_symbolic_batch_and_image_size_through_one_backend(name: str, exported) -> None:
    backend = OnnxBackend(exported(name))
    assert backend.input_shape == ("batch", 3, "height", "width")
    reference = TorchBackend(module(name))
    for shape in [(2, 3, 16, 16), (1, 3, 24, 20)]:
        x, v = inputs(name, shape, seed=4)
        assert_relative(backend.vjp(x, v)[1], reference.vjp(x, v)[1], f"{name} at {shape}")
    assert len(backend._shared.cache) == 2


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "attention"])
def test_optimised_and_unoptimised_sessions_give_the_same_gradients(name: str, exported) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x, v = inputs(name, seed=5)
    unoptimised = OnnxBackend(exported(name), session_options=options).vjp(x, v)[1]
    optimised = OnnxBackend(exported(name)).vjp(x, v)[1]
    assert_relative(optimised, unoptimised.astype(np.float64), f"{name} ENABLE_ALL vs DISABLE_ALL", 1e-5)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("name", list(MODELS))
def test_older_opset_exports_match_torch(name: str, opset: int, exported) -> None:
    x, v = inputs(name, seed=6)
    g = OnnxBackend(exported(name, opset=opset)).vjp(x, v)[1]
    assert_relative(g, TorchBackend(module(name)).vjp(x, v)[1], f"{name} at opset {opset}")


@pytest.mark.parametrize("family", ["small_resnet", "small_mobilenet", "ocr_style", "detector_style"])
def test_reference_model_families_match_torch(family: str, tmp_path: Path) -> None:
    """The benchmark's four families (gradsal.reference_models.architectures), random weights, batch 1."""
    torch.manual_seed(0)
    net = getattr(architectures, family)().eval()
    _randomize_batch_norms(net, seed=2)
    x = np.random.default_rng(8).standard_normal((1, *net.input_shape)).astype(np.float32)
    path = tmp_path / f"{family}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), str(path), opset_version=17, input_names=["input"],
                          output_names=["output"], dynamo=False)
    reference = TorchBackend(net)
    v = np.random.default_rng(9).standard_normal(reference.forward(x).shape).astype(np.float32)
    y, g = OnnxBackend(path).vjp(x, v)
    y_ref, g_ref = reference.vjp(x, v)
    assert_relative(y, y_ref, f"{family} output")
    assert_relative(g, g_ref, f"{family} J^T v")


def test_static_export_with_softmax_explains_the_logits(exported) -> None:
    path = exported("resnet", dynamic=False, softmax=True)
    with pytest.warns(LogitsWarning, match="Softmax"):
        backend = OnnxBackend(path)
    x, v = inputs("resnet", seed=7)
    assert_relative(backend.vjp(x, v)[1], TorchBackend(module("resnet")).vjp(x, v)[1], "logits of a Softmax model")
    probabilities = OnnxBackend(path, explain_logits=False).forward(x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
