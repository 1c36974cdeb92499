"""Vanilla gradients and gradient x input against hand-derived gradients of closed-form NumPy models."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import Linear, linear, mlp, quadratic
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@st.composite
def model_and_input(draw):
    """A closed-form model (linear, quadratic or tanh/softplus MLP) with random weights and a batch."""
    kind = draw(st.sampled_from(["linear", "quadratic", "mlp"]))
    d, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    model = {"linear": lambda: linear(d, k, seed), "quadratic": lambda: quadratic(d, k, seed),
             "mlp": lambda: mlp(d, 5, k, seed)}[kind]()
    x = draw(arrays(np.float64, (n, d), elements=finite))
    return model, x


def test_linear_gradient_is_the_weight_column() -> None:
    W = np.array([[1.0, -2.0], [3.0, 0.5], [0.0, 4.0]])
    model = Linear(W, np.zeros(2))
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])
    backend = FunctionBackend(model.f, model.grad)
    # f = x W: class 0 for the first row (1 + 6 = 7 vs -2 + 1 + 12 = 11 -> class 1), class 1 for the second
    np.testing.assert_array_equal(gs.vanilla_gradient(backend, x), [[-2.0, 0.5, 4.0], [-2.0, 0.5, 4.0]])
    np.testing.assert_array_equal(gs.vanilla_gradient(backend, x, 0), [[1.0, 3.0, 0.0], [1.0, 3.0, 0.0]])
    np.testing.assert_array_equal(gs.gradient_x_input(backend, x, 0), [[1.0, 6.0, 0.0], [-1.0, 0.0, 0.0]])


def test_quadratic_gradient_is_a_x() -> None:
    A = np.array([[[2.0, 1.0], [1.0, 3.0]]])  # f = x0^2 + x0 x1 + 1.5 x1^2
    model = quadratic(2, 1, 0)
    model.A = A
    x = np.array([[1.0, 2.0], [0.5, -1.0]])
    grad = gs.vanilla_gradient(FunctionBackend(model.f, model.grad), x)
    np.testing.assert_allclose(grad, [[2 + 2, 1 + 6], [1 - 1, 0.5 - 3]])


@pytest.mark.parametrize("exact", [True, False])
def test_mlp_gradient_matches_hand_derivation(exact: bool) -> None:
    model = mlp(4, 6, 3, seed=1)
    x = np.random.default_rng(2).normal(size=(5, 4))
    backend = FunctionBackend(model.f, model.grad if exact else None)
    target = [0, 1, 2, 1, 0]
    expected = model.grad(x, np.eye(3)[target])
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, target), expected, rtol=1e-7, atol=1e-9)


@given(model_and_input())
def test_vanilla_equals_closed_form_for_random_models(case) -> None:
    model, x = case
    outputs = model.f(x)
    expected = model.grad(x, np.eye(outputs.shape[1])[outputs.argmax(axis=1)])
    got = gs.vanilla_gradient(FunctionBackend(model.f, model.grad), x)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gs.gradient_x_input(FunctionBackend(model.f, model.grad), x), expected * x,
                               rtol=1e-12, atol=1e-12)


@given(model_and_input())
def test_finite_difference_backend_matches_closed_form(case) -> None:
    model, x = case
    cotangent = np.random.default_rng(0).normal(size=model.f(x).shape)
    _, grad = FunctionBackend(model.f).vjp(x, cotangent)
    np.testing.assert_allclose(grad, model.grad(x, cotangent), rtol=1e-6, atol=1e-6)


@given(model_and_input())
def test_closed_form_gradients_pass_the_checker(case) -> None:
    model, x = case
    report = gs.check_gradients(FunctionBackend(model.f, model.grad), x)
    assert report.passed, str(report)
    assert report.mode == "coordinates"
    assert report.n_checks == x.size


def test_float32_input_gives_float32_attributions() -> None:
    model = mlp(3, 4, 2, seed=0)
    x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    grad = gs.vanilla_gradient(FunctionBackend(model.f, model.grad), x)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, model.grad(x.astype(np.float64), np.eye(2)[model.f(x).argmax(1)]), rtol=1e-6)


def test_plain_callable_is_wrapped_automatically() -> None:
    model = linear(3, 2, seed=4)
    x = np.random.default_rng(5).normal(size=(3, 3))
    got = gs.vanilla_gradient(model.f, x, 1)
    np.testing.assert_allclose(got, np.tile(model.W[:, 1], (3, 1)), rtol=1e-8)
