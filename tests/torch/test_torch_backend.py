"""TorchBackend's protocol methods against independent references: finite differences of the raw module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch_helpers import (
    assert_close,
    build,
    fd_jvp,
    fd_vjp,
    model_specs,
    random_input,
    torch_forward,
)

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend, plugin


@given(spec=model_specs(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_vjp_matches_finite_differences(spec, n, seed) -> None:
    model = build(spec)
    x = random_input(spec, n, seed)
    cotangent = np.random.default_rng(seed + 1).normal(size=(n, spec.n_out))
    outputs, grad = TorchBackend(model).vjp(x, cotangent)
    assert grad.dtype == np.float64 and grad.shape == x.shape
    np.testing.assert_allclose(outputs, torch_forward(model, x), rtol=1e-12, atol=1e-12)
    assert_close(grad, fd_vjp(model, x, cotangent))


@given(spec=model_specs(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_jvp_matches_finite_differences_and_the_vjp(spec, n, seed) -> None:
    model = build(spec)
    rng = np.random.default_rng(seed)
    x = random_input(spec, n, seed)
    tangent = rng.normal(size=x.shape)
    cotangent = rng.normal(size=(n, spec.n_out))
    backend = TorchBackend(model)
    outputs, product = backend.jvp(x, tangent)
    np.testing.assert_allclose(outputs, torch_forward(model, x), rtol=1e-12, atol=1e-12)
    assert_close(product, fd_jvp(model, x, tangent))
    _, pulled = backend.vjp(x, cotangent)
    # <J u, v> = <u, J^T v>, per sample
    np.testing.assert_allclose((product * cotangent).sum(axis=1),
                               (tangent * pulled).reshape(n, -1).sum(axis=1), rtol=1e-9, atol=1e-10)


class _CubeWithoutForwardAD(torch.autograd.Function):
    """x**3 with a backward but no jvp: forward-mode AD cannot go through it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class _CubeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3).double()

    def forward(self, x):
        return self.linear(_CubeWithoutForwardAD.apply(x))


def test_jvp_falls_back_to_double_vjp_without_forward_ad() -> None:
    torch.manual_seed(0)
    model = _CubeNet()
    rng = np.random.default_rng(0)
    x, tangent = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    with pytest.raises(RuntimeError):  # the premise: torch's forward mode refuses this model
        torch.func.jvp(model, (torch.as_tensor(x),), (torch.as_tensor(tangent),))
    _, product = TorchBackend(model).jvp(x, tangent)
    assert_close(product, fd_jvp(model, x, tangent))


@given(spec=model_specs(kinds=("cnn",)), seed=st.integers(0, 1000))
def test_layer_vjp_matches_hooks_and_finite_differences_of_the_tail(spec, seed) -> None:
    model = build(spec)
    x = random_input(spec, 2, seed)
    cotangent = np.random.default_rng(seed).normal(size=(2, spec.n_out))
    head, tail = model[:1], model[1:]  # layer "0" is the first conv/residual block
    activation, grad = TorchBackend(model).layer_vjp(x, "0", cotangent)
    expected_activation = torch_forward(head, x)
    np.testing.assert_allclose(activation, expected_activation, rtol=1e-12, atol=1e-12)
    assert_close(grad, fd_vjp(tail, expected_activation, cotangent))


def test_layer_vjp_sees_the_activation_before_an_inplace_relu() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8, 2)).double()
    x = np.random.default_rng(1).normal(size=(3, 1, 4, 4))
    cotangent = np.eye(2)[[0, 1, 0]]
    activation, grad = TorchBackend(model).layer_vjp(x, "0", cotangent)
    conv_out = torch_forward(model[0], x)
    assert (conv_out < 0).any()  # the premise: the in-place ReLU would have changed it
    np.testing.assert_allclose(activation, conv_out, rtol=1e-12)
    assert_close(grad, fd_vjp(model[1:], conv_out, cotangent))


def test_chunks_give_the_same_result_as_one_batch() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    rng = np.random.default_rng(2)
    x, cotangent, tangent = rng.normal(size=(7, 3)), rng.normal(size=(7, 2)), rng.normal(size=(7, 3))
    whole, chunked = TorchBackend(model), TorchBackend(model, batch_size=3)
    for a, b in [(whole.vjp(x, cotangent), chunked.vjp(x, cotangent)),
                 (whole.jvp(x, tangent), chunked.jvp(x, tangent)),
                 (whole.layer_vjp(x, "1", cotangent), chunked.layer_vjp(x, "1", cotangent))]:
        np.testing.assert_allclose(a[0], b[0], rtol=1e-13)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-13)
    np.testing.assert_allclose(whole.forward(x), chunked.forward(x), rtol=1e-13)


def test_dtype_follows_the_model_parameters() -> None:
    torch.manual_seed(3)
    model32 = nn.Linear(3, 2)
    x64 = np.random.default_rng(3).normal(size=(2, 3))
    cotangent = np.ones((2, 2))
    out, grad = TorchBackend(model32).vjp(x64, cotangent)
    assert out.dtype == np.float32 and grad.dtype == np.float32
    out, grad = TorchBackend(model32.double()).vjp(x64.astype(np.float32), cotangent)
    assert out.dtype == np.float64 and grad.dtype == np.float64
    # a parameterless callable keeps the input's precision
    _, grad = TorchBackend(lambda t: t**2).vjp(x64, np.ones_like(x64))
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, 2 * x64, rtol=1e-15)


def test_bfloat16_autocast_returns_float32_close_to_float32() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = np.random.default_rng(4).normal(size=(4, 6)).astype(np.float32)
    cotangent = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    out16, grad16 = TorchBackend(model, dtype=torch.bfloat16).vjp(x, cotangent)
    out32, grad32 = TorchBackend(model).vjp(x, cotangent)
    assert out16.dtype == np.float32 and grad16.dtype == np.float32
    np.testing.assert_allclose(out16, out32, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(grad16, grad32, rtol=0.05, atol=0.05)


def test_device_copy_only_when_asked_for_another_device() -> None:
    model = nn.Linear(2, 2)
    assert TorchBackend(model).model is model
    assert TorchBackend(model, device="cpu").model is model


def test_output_selects_the_tensor_to_explain() -> None:
    torch.manual_seed(5)

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2).double(), nn.Linear(3, 4).double()

        def forward(self, x):
            return {"aux": self.a(x), "logits": self.b(x)}

    model = TwoHeads()
    x = np.random.default_rng(5).normal(size=(2, 3))
    cotangent = np.random.default_rng(6).normal(size=(2, 4))
    _, grad = TorchBackend(model, output=lambda out: out["logits"]).vjp(x, cotangent)
    np.testing.assert_allclose(grad, cotangent @ model.b.weight.detach().numpy(), rtol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_plugin_accepts_modules_without_importing_torch_for_others() -> None:
    assert plugin.accepts(nn.Linear(1, 1))
    assert plugin.accepts(torch.jit.script(nn.Linear(1, 1)))
    assert not plugin.accepts(lambda x: x)
    assert plugin.name == "torch" and plugin.extra == "torch"
    assert isinstance(gs.as_backend(nn.Linear(1, 1)), TorchBackend)


def test_backend_satisfies_the_capability_protocols() -> None:
    backend = TorchBackend(nn.Linear(2, 2))
    for protocol in (gs.GradientBackend, gs.SupportsJVP, gs.SupportsLayers, gs.SupportsReluRule,
                     gs.SupportsRandomization):
        assert isinstance(backend, protocol), protocol
    assert backend.with_relu_rule("standard") is backend


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_module_runs() -> None:
    torch.manual_seed(6)
    eager = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    scripted = torch.jit.script(eager)
    x = np.random.default_rng(7).normal(size=(2, 3))
    cotangent = np.ones((2, 2))
    assert_close(TorchBackend(scripted).vjp(x, cotangent)[1], fd_vjp(eager, x, cotangent))
