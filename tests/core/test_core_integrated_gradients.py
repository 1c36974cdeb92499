"""Integrated Gradients: quadrature rules, completeness, baselines, against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import linear, mlp, quadratic
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.core.attribution import INTEGRATION_METHODS, gaussian_blur, make_baseline

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("method", INTEGRATION_METHODS)
@pytest.mark.parametrize("n_steps", [2, 3, 7, 50])
def test_rule_weights_sum_to_one_and_positions_lie_on_the_path(method: str, n_steps: int) -> None:
    alphas, weights = gs.integration_rule(method, n_steps)
    assert len(alphas) == len(weights) == n_steps
    assert abs(weights.sum() - 1.0) <= 4e-16
    assert np.all((alphas >= 0) & (alphas <= 1)) and np.all(weights > 0)


def test_rule_positions_by_hand() -> None:
    np.testing.assert_allclose(gs.integration_rule("riemann_left", 4)[0], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(gs.integration_rule("riemann_right", 4)[0], [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(gs.integration_rule("riemann_middle", 4)[0], [0.125, 0.375, 0.625, 0.875])
    alphas, weights = gs.integration_rule("riemann_trapezoid", 3)
    np.testing.assert_allclose(alphas, [0, 0.5, 1])
    np.testing.assert_allclose(weights, [0.25, 0.5, 0.25])
    # 2-point Gauss-Legendre on [0, 1]: 1/2 -+ 1/(2 sqrt 3), equal weights
    alphas, weights = gs.integration_rule("gausslegendre", 2)
    np.testing.assert_allclose(alphas, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)])
    np.testing.assert_allclose(weights, [0.5, 0.5])


@pytest.mark.parametrize("method", INTEGRATION_METHODS)
@given(n=st.integers(1, 4), d=st.integers(1, 5), n_steps=st.integers(2, 9), seed=st.integers(0, 999),
       data=st.data())
def test_every_rule_is_exact_on_a_linear_model(method, n, d, n_steps, seed, data) -> None:
    model = linear(d, 3, seed)
    x = data.draw(arrays(np.float64, (n, d), elements=finite))
    base = data.draw(arrays(np.float64, (n, d), elements=finite))
    backend = FunctionBackend(model.f, model.grad)
    attributions, delta = gs.integrated_gradients(backend, x, 2, baseline=base, n_steps=n_steps, method=method,
                                                  return_delta=True)
    np.testing.assert_allclose(attributions, (x - base) * model.W[:, 2], rtol=1e-12, atol=1e-12)
    gain = model.f(x)[:, 2] - model.f(base)[:, 2]
    np.testing.assert_allclose(attributions.sum(axis=1), gain, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(delta, 0.0, atol=1e-11)


@pytest.mark.parametrize("method", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_quadratic_closed_form(method: str) -> None:
    # f = 1/2 x^T A x, baseline 0: grad(a x) = a A x, integral = A x / 2, so IG = x * (A x) / 2 exactly
    # for every rule that integrates a linear function of alpha exactly
    model = quadratic(4, 1, seed=3)
    x = np.random.default_rng(0).normal(size=(3, 4))
    got = gs.integrated_gradients(FunctionBackend(model.f, model.grad), x, 0, n_steps=3, method=method)
    np.testing.assert_allclose(got, x * (x @ model.A[0]) / 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", INTEGRATION_METHODS)
@given(seed=st.integers(0, 999))
def test_completeness_gap_shrinks_as_steps_grow(method, seed) -> None:
    # the integrand I(a) = <grad f(a x), x> (baseline 0) is smooth; every rule's error is at most about
    # TV(I) / (n - 1), with TV the total variation of I on [0, 1], measured here on a fine grid
    model = mlp(5, 8, 3, seed)
    x = np.random.default_rng(seed).normal(size=(2, 5)) * 2
    grid = np.linspace(0, 1, 2001)
    v = np.eye(3)[[1, 1]]
    path = (grid[:, None, None] * x).reshape(-1, 5)
    integrand = (model.grad(path, np.tile(v, (len(grid), 1))) * np.tile(x, (len(grid), 1))).sum(axis=1)
    integrand = integrand.reshape(len(grid), 2)
    variation = np.abs(np.diff(integrand, axis=0)).sum(axis=0)
    backend = FunctionBackend(model.f, model.grad)
    for n in (4, 16, 256):
        _, gap = gs.integrated_gradients(backend, x, 1, n_steps=n, method=method, return_delta=True)
        assert np.all(np.abs(gap) <= 1.01 * variation / (n - 1) + 1e-12), (n, gap, variation)
    assert np.abs(gap).max() <= 1e-2 * max(variation.max(), 1e-10)


def test_delta_is_measured_on_the_explained_output() -> None:
    model = quadratic(3, 2, seed=5)
    x = np.random.default_rng(1).normal(size=(2, 3))
    cotangent = np.array([[1.0, -1.0], [0.5, 2.0]])  # a difference of outputs, a weighted sum
    attributions, delta = gs.integrated_gradients(FunctionBackend(model.f, model.grad), x, cotangent,
                                                  n_steps=4, method="gausslegendre", return_delta=True)
    expected = x * np.einsum("nk,kde,ne->nd", cotangent, model.A, x) / 2
    np.testing.assert_allclose(attributions, expected, rtol=1e-12)
    explained = ((model.f(x) - model.f(np.zeros_like(x))) * cotangent).sum(axis=1)
    np.testing.assert_allclose(delta, attributions.sum(axis=1) - explained, atol=1e-12)
    np.testing.assert_allclose(delta, 0.0, atol=1e-12)


def test_baseline_forms_are_equivalent() -> None:
    model = linear(12, 2, seed=0)
    backend = FunctionBackend(lambda x: model.f(x), lambda x, v: model.grad(x, v))
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 2))
    channel_means = np.array([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1)
    full = np.broadcast_to(channel_means, x.shape).copy()
    reference = gs.integrated_gradients(backend, x, 0, baseline=full, method="riemann_middle", n_steps=2)
    for baseline in (channel_means, full[0], full[:1]):
        np.testing.assert_allclose(
            gs.integrated_gradients(backend, x, 0, baseline=baseline, method="riemann_middle", n_steps=2),
            reference, rtol=1e-12)
    scalar = gs.integrated_gradients(backend, x, 0, baseline=0.25, method="riemann_middle", n_steps=2)
    np.testing.assert_allclose(scalar, (x - 0.25) * model.W[:, 0].reshape(3, 2, 2), rtol=1e-12)


def test_blur_baseline_matches_scipy_gaussian_filter() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(3).normal(size=(2, 3, 9, 11))
    # scipy's "reflect" mirrors with the edge repeated, like numpy's "symmetric"; truncate=3 sigma, radius 6
    expected = ndimage.gaussian_filter(x, sigma=(0, 0, 2.0, 2.0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x, 2.0), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(make_baseline("blur", x, blur_sigma=2.0), expected, rtol=1e-12, atol=1e-12)
    constant = np.full((1, 1, 5, 5), 0.7)
    np.testing.assert_allclose(gaussian_blur(constant), constant)
    tabular = np.random.default_rng(4).normal(size=(2, 8))
    np.testing.assert_allclose(gaussian_blur(tabular, 1.0),
                               ndimage.gaussian_filter(tabular, sigma=(0, 1.0), mode="reflect", truncate=3.0))


def test_uniform_baseline_is_seeded_and_within_each_samples_range() -> None:
    x = np.random.default_rng(5).normal(size=(3, 2, 4, 4)) * np.array([1, 10, 100]).reshape(3, 1, 1, 1)
    first = make_baseline("uniform", x, seed=7)
    np.testing.assert_array_equal(first, make_baseline("uniform", x, seed=7))
    assert not np.array_equal(first, make_baseline("uniform", x, seed=8))
    for sample, noise in zip(x, first, strict=True):
        assert sample.min() <= noise.min() and noise.max() <= sample.max()
    model = linear(32, 2, seed=1)
    backend = FunctionBackend(model.f, model.grad)
    a = gs.integrated_gradients(backend, x, 0, baseline="uniform", seed=3)
    np.testing.assert_array_equal(a, gs.integrated_gradients(backend, x, 0, baseline="uniform", seed=3))


def test_blur_baseline_on_a_linear_model_is_exact() -> None:
    model = linear(2 * 6 * 6, 2, seed=9)
    backend = FunctionBackend(model.f, model.grad)
    x = np.random.default_rng(6).normal(size=(2, 2, 6, 6))
    got, delta = gs.integrated_gradients(backend, x, 1, baseline="blur", blur_sigma=1.0, return_delta=True)
    np.testing.assert_allclose(got, (x - gaussian_blur(x, 1.0)) * model.W[:, 1].reshape(2, 6, 6), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(delta, 0.0, atol=1e-10)


class PathRecorder:
    """f(x) = sum sin(x) per row (elementwise arithmetic: the same per row for any chunk size); records the
    rows it is given. ``alias``: returns a gradient that is a view of its input (for f = 1/2 |x|^2)."""

    def __init__(self, alias: bool = False) -> None:
        self.alias = alias
        self.rows: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1)
        return (0.5 * (z * z) if self.alias else np.sin(z)).sum(axis=1, keepdims=True)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.rows.append(x.copy())
        return self.forward(x), (x if self.alias else np.cos(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alias", [False, True])
@given(n=st.integers(1, 3), batch_size=st.integers(1, 11), n_steps=st.integers(1, 5), seed=st.integers(0, 99))
def test_path_points_are_rounded_once_and_chunking_changes_nothing(dtype, alias, n, batch_size, n_steps,
                                                                   seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 3)).astype(dtype)
    base = rng.normal(size=(1, 2, 1))

    def run(rows: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        backend = PathRecorder(alias)
        result = gs.integrated_gradients(backend, x, 0, baseline=base, n_steps=n_steps, method="riemann_middle",
                                         batch_size=rows, return_delta=True)
        assert max(len(r) for r in backend.rows) <= rows
        return result, np.concatenate(backend.rows)

    (whole, whole_delta), whole_rows = run(10**6)
    (chunked, chunked_delta), chunked_rows = run(batch_size)
    # the points b + alpha_k (x - b), computed in float64 and rounded once to x's dtype, copy-major
    alphas, _ = gs.integration_rule("riemann_middle", n_steps)
    full = np.broadcast_to(base, x.shape)
    expected = np.concatenate([(full + a * (x.astype(np.float64) - full)).astype(dtype) for a in alphas])
    np.testing.assert_array_equal(whole_rows, expected)
    np.testing.assert_array_equal(chunked_rows, expected)
    assert whole.dtype == dtype
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(chunked_delta, whole_delta)
