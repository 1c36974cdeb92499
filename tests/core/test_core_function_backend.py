"""FunctionBackend: finite-difference VJP/JVP against closed forms, validation of what f returns, the plugin."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import linear, mlp, quadratic
from hypothesis import given
from hypothesis import strategies as st

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend, plugin


def test_is_a_backend_with_jvp() -> None:
    backend = FunctionBackend(np.tanh)
    assert isinstance(backend, gs.GradientBackend) and isinstance(backend, gs.SupportsJVP)
    assert not isinstance(backend, gs.SupportsLayers) and not isinstance(backend, gs.SupportsReluRule)
    assert "finite differences" in repr(backend)


@given(seed=st.integers(0, 999), n=st.integers(1, 3), shape=st.sampled_from([(3,), (2, 3), (2, 2, 2)]))
def test_finite_difference_jvp_matches_closed_form(seed, n, shape) -> None:
    d = int(np.prod(shape))
    model = mlp(d, 4, 2, seed)
    rng = np.random.default_rng(seed)
    x, tangent = rng.normal(size=(n, *shape)), rng.normal(size=(n, *shape))
    outputs, product = FunctionBackend(model.f).jvp(x, tangent)
    # J t = sigmoid(z2) * (((1 - h^2) * (t W1)) W2)
    z1 = x.reshape(n, -1) @ model.W1 + model.b1
    h = np.tanh(z1)
    z2 = h @ model.W2 + model.b2
    expected = 1 / (1 + np.exp(-z2)) * (((1 - h**2) * (tangent.reshape(n, -1) @ model.W1)) @ model.W2)
    np.testing.assert_allclose(product, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(outputs, model.f(x))


def test_jvp_of_a_zero_tangent_is_zero() -> None:
    _, product = FunctionBackend(np.sin).jvp(np.ones((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(product, 0.0)


def test_user_jvp_and_grad_are_used() -> None:
    model = linear(3, 2, 0)
    calls = []

    def jvp(x, t):
        calls.append("jvp")
        return t @ model.W

    backend = FunctionBackend(model.f, model.grad, jvp=jvp)
    x, t = np.ones((2, 3)), np.eye(3)[:2]
    np.testing.assert_allclose(backend.jvp(x, t)[1], t @ model.W)
    np.testing.assert_allclose(backend.vjp(x, np.ones((2, 2)))[1], np.ones((2, 2)) @ model.W.T)
    assert calls == ["jvp"]


def test_float32_finite_differences() -> None:
    model = quadratic(4, 2, seed=1)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    cotangent = np.ones((3, 2), np.float32)
    _, grad = FunctionBackend(lambda z: model.f(z).astype(np.float32)).vjp(x, cotangent)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, model.grad(x.astype(np.float64), cotangent), rtol=2e-3, atol=2e-3)


def test_eps_controls_the_step() -> None:
    # f = x^3: the central difference with step h is 3 x^2 + h^2 exactly (at |x| <= 1, h = eps)
    backend = FunctionBackend(lambda z: z**3, eps=0.1)
    _, grad = backend.vjp(np.array([[0.5]]), np.ones((1, 1)))
    np.testing.assert_allclose(grad, [[3 * 0.25 + 0.01]], rtol=1e-12)
    with pytest.raises(gs.InputError, match="relative step"):
        FunctionBackend(np.sin, eps=0.0)


def test_finite_differences_respect_the_memory_budget() -> None:
    calls = []

    def f(z):
        calls.append(len(z))
        return z.sum(axis=1, keepdims=True)

    with gs.memory_budget(8 * 10 * 32 * 4):  # 4 rows of 10 float64 per call
        _, grad = FunctionBackend(f).vjp(np.ones((2, 10)), np.ones((2, 1)))
    np.testing.assert_allclose(grad, 1.0)
    assert max(calls) <= 4 and sum(calls[1:]) == 2 * 10 * 2


@pytest.mark.parametrize(("f", "phrase"), [
    (lambda z: z.sum(), "one row per sample"),
    (lambda z: z[:1], "one row per sample"),
    (lambda z: z > 0, "real numbers"),
    (lambda z: "scores", "real numbers"),
    (lambda z: 1 / 0, "ZeroDivisionError"),
])
def test_what_f_returns_is_checked(f, phrase: str) -> None:
    with pytest.raises(gs.BackendError, match=phrase) as info:
        FunctionBackend(f).forward(np.ones((2, 3)))
    assert isinstance(info.value, RuntimeError)


def test_grad_and_jvp_results_are_checked() -> None:
    backend = FunctionBackend(lambda z: z * 2, grad=lambda z, v: v[:, :1], jvp=lambda z, t: t[:1])
    with pytest.raises(gs.BackendError, match="grad returned"):
        backend.vjp(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(gs.BackendError, match="jvp returned"):
        backend.jvp(np.ones((2, 3)), np.ones((2, 3)))


def test_construction_errors() -> None:
    with pytest.raises(gs.InputTypeError, match="callable"):
        FunctionBackend(np.sin, grad=3)
    with pytest.raises(gs.InputTypeError, match="needs a function"):
        FunctionBackend(None)
    with pytest.raises(gs.InputTypeError, match="astype"):
        FunctionBackend(np.sin).forward(np.ones((2, 2), dtype=int))


def test_integer_outputs_become_float() -> None:
    assert FunctionBackend(lambda z: np.ones((len(z), 2), dtype=int)).forward(np.ones((3, 1))).dtype == np.float64


def test_plugin_accepts_plain_callables_only() -> None:
    assert plugin.name == "numpy" and plugin.priority == 100 and plugin.extra is None
    assert plugin.accepts(np.tanh) and plugin.accepts(lambda z: z) and plugin.accepts(FunctionBackend(np.sin).forward)
    assert not plugin.accepts(dict) and not plugin.accepts("model.onnx") and not plugin.accepts(np.ones(3))
    assert isinstance(gs.as_backend(np.tanh), FunctionBackend)


def test_plugin_rejects_torch_modules() -> None:
    nn = pytest.importorskip("torch.nn")
    assert not plugin.accepts(nn.Linear(2, 2))
    assert not plugin.accepts(nn.ReLU())
