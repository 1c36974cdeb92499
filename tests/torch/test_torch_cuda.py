"""TorchBackend on a CUDA GPU (skipped without one): same results as the CPU, mixed precision, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import ModelSpec, assert_close, assert_same_state, build, fd_vjp, model_state, random_input

from gradsal.backends.torch import TorchBackend

pytestmark = pytest.mark.cuda


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def test_float64_cuda_vjp_matches_finite_differences() -> None:
    spec = ModelSpec((2, 6, 6), ("conv_bn_relu", "residual", "maxpool"), (), 3, seed=1)
    model = build(spec)
    x = random_input(spec, 2, 0)
    cotangent = np.random.default_rng(1).normal(size=(2, 3))
    expected = fd_vjp(model, x, cotangent)
    gpu_model = build(spec).cuda()
    _, grad = TorchBackend(gpu_model, batch_size=1).vjp(x, cotangent)
    assert isinstance(grad, np.ndarray) and grad.dtype == np.float64
    assert_close(grad, expected, rtol=1e-5)


def test_cuda_equals_cpu_in_float32() -> None:
    model = _cnn()
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    cotangent = np.eye(5, dtype=np.float32)[[0, 1, 2, 3]]
    cpu = TorchBackend(model)
    gpu = TorchBackend(model, device="cuda")  # a device copy; the user's model stays on the CPU
    assert next(model.parameters()).device.type == "cpu" and gpu.model is not model
    for a, b in [(cpu.vjp(x, cotangent), gpu.vjp(x, cotangent)),
                 (cpu.jvp(x, np.ones_like(x)), gpu.jvp(x, np.ones_like(x))),
                 (cpu.layer_vjp(x, "4", cotangent), gpu.layer_vjp(x, "4", cotangent)),
                 (cpu.with_relu_rule("guided").vjp(x, cotangent), gpu.with_relu_rule("guided").vjp(x, cotangent))]:
        np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_returns_float32_close_to_float32(dtype) -> None:
    model = _cnn().cuda()
    x = np.random.default_rng(1).normal(size=(8, 3, 16, 16)).astype(np.float32)
    cotangent = np.eye(5, dtype=np.float32)[np.arange(8) % 5]
    before = model_state(model)
    out_lp, grad_lp = TorchBackend(model, dtype=dtype).vjp(x, cotangent)
    out32, grad32 = TorchBackend(model).vjp(x, cotangent)
    assert out_lp.dtype == np.float32 and grad_lp.dtype == np.float32
    scale = np.abs(grad32).max()
    np.testing.assert_allclose(grad_lp, grad32, atol=0.05 * scale)
    np.testing.assert_allclose(out_lp, out32, atol=0.05 * np.abs(out32).max())
    assert_same_state(before, model_state(model))


def test_chunks_on_the_gpu() -> None:
    model = _cnn().cuda()
    x = np.random.default_rng(2).normal(size=(9, 3, 16, 16)).astype(np.float32)
    cotangent = np.ones((9, 5), np.float32)
    whole = TorchBackend(model).vjp(x, cotangent)[1]
    chunked = TorchBackend(model, batch_size=4).vjp(x, cotangent)[1]
    np.testing.assert_allclose(whole, chunked, rtol=1e-4, atol=1e-6)
    assert torch.cuda.memory_allocated() < 64 * 2**20  # nothing kept alive after the call
