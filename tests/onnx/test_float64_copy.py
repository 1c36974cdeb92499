"""OnnxBackend.float64(): a float64 copy where onnxruntime has double kernels, checked against torch in float64."""

from __future__ import annotations

import warnings

import numpy as np
import torch

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend
from gradsal.reference_models import zoo


def onnx_backend(name: str) -> OnnxBackend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OnnxBackend(str(zoo.load_model(name, "onnx")))


def test_the_tabular_mlp_in_float64_matches_torch_autograd_in_float64() -> None:
    backend = onnx_backend("tabular_mlp")
    double = backend.float64()
    x = zoo.sample_tabular().features[:3].astype(np.float64)
    cotangent = np.eye(2)[[0, 1, 1]]
    outputs, grads = double.vjp(x, cotangent)
    assert outputs.dtype == np.float64 and grads.dtype == np.float64
    module = zoo.load_tabular_mlp("torch").double()
    point = torch.tensor(x, requires_grad=True)
    expected = module(point)
    (expected * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(outputs, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads, point.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert backend.forward(x.astype(np.float32)).dtype == np.float32  # the original is unchanged


def test_check_gradients_uses_it_and_says_so() -> None:
    x = zoo.sample_tabular().features[:1].astype(np.float32)
    report = gs.check_gradients(onnx_backend("tabular_mlp"), x)
    assert report.passed and report.precision == "float64" and "float64 version" in str(report), report


def test_a_model_without_double_kernels_stays_in_float32() -> None:
    backend = onnx_backend("digits_cnn")
    assert backend.float64() is None  # onnxruntime has no double Conv on the CPU
    report = gs.check_gradients(backend, zoo.sample_images().images[:1])
    assert report.passed and report.precision == "float32", report
