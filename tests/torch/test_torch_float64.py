"""TorchBackend.float64(): a float64 copy for strict gradient checks, the user's module untouched."""

from __future__ import annotations

import numpy as np
import torch

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3))


def test_float64_copy_computes_in_float64_and_leaves_the_module_alone() -> None:
    model = small_cnn()
    x = np.random.default_rng(0).random((2, 3, 8, 8))
    cotangent = np.eye(3)[[0, 2]]
    double = TorchBackend(model).float64()
    outputs, grads = double.vjp(x, cotangent)
    assert outputs.dtype == np.float64 and grads.dtype == np.float64
    assert next(model.parameters()).dtype == torch.float32
    reference_model = small_cnn().double()  # the same seed: the same weights, converted independently
    point = torch.tensor(x, requires_grad=True)
    (reference_model(point) * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(grads, point.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_the_check_runs_in_float64_and_catches_a_3e_5_error() -> None:
    backend = TorchBackend(small_cnn())
    x = np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32)
    report = gs.check_gradients(backend, x)
    assert report.passed and report.precision == "float64" and report.detectable < 3e-5, report
    assert gs.check_gradients(backend, x, precision="model").precision == "float32"

    class Scaled:
        def __init__(self, base: TorchBackend) -> None:
            self.base = base

        def forward(self, z):
            return self.base.forward(z)

        def vjp(self, z, v):
            outputs, grads = self.base.vjp(z, v)
            return outputs, grads * (1 + 3e-5)

        def float64(self):
            return Scaled(self.base.float64())

    assert gs.check_gradients(Scaled(backend), x).verdict == "FAILED"


def test_a_plain_callable_has_no_float64_copy() -> None:
    assert TorchBackend(lambda t: t.sum(dim=1, keepdim=True)).float64() is None
