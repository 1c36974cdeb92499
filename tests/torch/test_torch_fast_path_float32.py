"""The fast path's float32 configurations (channels-last, torch.compile, both) against plain float32
torch autograd on the unmodified model, element by element at 1e-5.

The rank-correlation checks in test_torch_fast_path.py compare saliency maps (|gradient|, ranked), which
cannot see a gradient scaled by 1.01 or negated. Where the fast path keeps float32 its gradient must be
the model's own up to summation order: a random cotangent of mixed signs is pulled back here, and the
outputs, VJP, JVP and the methods built on them are compared with raw ``torch.autograd`` calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend
from gradsal.reference_models import holdout_split, load_digits_cnn

FLOAT32_CONFIGS = {
    "channels_last": dict(channels_last=True),
    "compile": dict(compile={"backend": "aot_eager"}),
    "channels_last+compile": dict(channels_last=True, compile={"backend": "aot_eager"}),
    "fast": dict(fast=True),  # float32 only where the CPU has no bf16 (else skipped)
}
RTOL, ATOL_SCALE = 1e-5, 1e-6  # float32 summation order (channels-last kernels) only


@pytest.fixture(scope="module")
def digits():
    x, _ = holdout_split("digits_cnn")
    model = load_digits_cnn()
    rng = np.random.default_rng(0)
    x = x[:4]
    v = rng.standard_normal((len(x), 10)).astype(np.float32)
    u = rng.standard_normal(x.shape).astype(np.float32)
    return model, x, v, u


def _backend(model, config: str) -> TorchBackend:
    backend = TorchBackend(model, **FLOAT32_CONFIGS[config])
    if backend._amp_dtype is not None:
        pytest.skip("fast=True chose bf16 on this CPU: not a float32 configuration")
    return backend


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max(), err_msg=what)


def _autograd_vjp(model, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, requires_grad=True)
    out = model(xt)
    (grad,) = torch.autograd.grad(out, xt, torch.tensor(v))
    return out.detach().numpy(), grad.numpy()


@pytest.mark.parametrize("config", list(FLOAT32_CONFIGS))
def test_vjp_and_jvp_equal_float32_autograd(digits, config: str) -> None:
    model, x, v, u = digits
    backend = _backend(model, config)
    out_ref, grad_ref = _autograd_vjp(model, x, v)
    out, grad = backend.vjp(x, v)
    _close(out, out_ref, "outputs")
    _close(grad, grad_ref, "VJP")
    _, jvp_ref = torch.func.jvp(model, (torch.tensor(x),), (torch.tensor(u),))
    _close(backend.jvp(x, u)[1], jvp_ref.detach().numpy(), "JVP")


@pytest.mark.parametrize("config", ["channels_last", "compile"])
def test_methods_equal_float32_autograd(digits, config: str) -> None:
    """Vanilla gradient and gradient x input of the logit difference 0 - 1 (signed: mixed signs), and
    integrated gradients from a zero baseline with two Gauss-Legendre nodes, each by raw autograd."""
    model, x, _, _ = digits
    backend = _backend(model, config)
    weights = np.zeros((len(x), 10), np.float32)
    weights[:, 0], weights[:, 1] = 1.0, -1.0
    _, grad_ref = _autograd_vjp(model, x, weights)
    _close(gs.vanilla_gradient(backend, x, weights), grad_ref, "vanilla gradient")
    _close(gs.gradient_x_input(backend, x, weights), grad_ref * x, "gradient x input")
    nodes = (np.array([-1, 1]) / np.sqrt(3) + 1) / 2  # Gauss-Legendre, 2 nodes on [0, 1], weights 1/2
    path = sum(0.5 * _autograd_vjp(model, (a * x).astype(np.float32), weights)[1] for a in nodes)
    ig = gs.integrated_gradients(backend, x, weights, baseline=0.0, n_steps=2, method="gausslegendre")
    _close(ig, (path * x).astype(np.float32), "integrated gradients")
