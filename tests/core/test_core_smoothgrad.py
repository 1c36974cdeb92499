"""SmoothGrad, SmoothGrad-squared and VarGrad against closed-form expectations."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import linear, mlp, quadratic
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@given(x=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 5)), elements=finite),
       seed=st.integers(0, 999), n_samples=st.integers(1, 6))
def test_zero_noise_equals_vanilla(x, seed, n_samples) -> None:
    model = mlp(x.shape[1], 4, 3, seed)
    backend = FunctionBackend(model.f, model.grad)
    vanilla = model.grad(x, np.eye(3)[model.f(x).argmax(axis=1)])  # closed form
    kwargs = {"n_samples": n_samples, "noise_level": 0.0, "seed": seed}
    np.testing.assert_allclose(gs.smoothgrad(backend, x, **kwargs), vanilla, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gs.smoothgrad(backend, x, kind="smoothgrad_sq", **kwargs), vanilla**2, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(gs.smoothgrad(backend, x, kind="vargrad", **kwargs), 0.0, atol=1e-15)


def test_linear_model_gradient_is_unchanged_by_noise() -> None:
    model = linear(6, 2, seed=1)
    x = np.random.default_rng(0).normal(size=(3, 6))
    backend = FunctionBackend(model.f, model.grad)
    got = gs.smoothgrad(backend, x, 0, n_samples=20, noise_level=0.5, seed=1)
    np.testing.assert_allclose(got, np.tile(model.W[:, 0], (3, 1)), rtol=1e-12)
    np.testing.assert_allclose(gs.smoothgrad(backend, x, 0, n_samples=20, noise_level=0.5, seed=1, kind="vargrad"),
                               0.0, atol=1e-20)


def test_noise_scale_is_noise_level_times_the_range_of_each_sample() -> None:
    # f = 1/2 |x|^2 has gradient x + e, so VarGrad estimates sigma_i^2 = (noise_level * (max x_i - min x_i))^2
    # and SmoothGrad-squared estimates x^2 + sigma_i^2
    x = np.array([[0.0, 1.0, 2.0, 3.0] * 50, [0.0, 10.0, 5.0, 5.0] * 50])
    backend = FunctionBackend(lambda z: 0.5 * (z**2).sum(axis=1), lambda z, v: v[:, None] * z)
    sigma = 0.2 * np.array([3.0, 10.0])
    variance = gs.smoothgrad(backend, x, n_samples=400, noise_level=0.2, kind="vargrad", seed=0)
    # mean over 200 coordinates of a variance estimate from 400 draws: relative error ~ sqrt(2/400/200) < 1%
    np.testing.assert_allclose(variance.mean(axis=1), sigma**2, rtol=0.03)
    squared = gs.smoothgrad(backend, x, n_samples=400, noise_level=0.2, kind="smoothgrad_sq", seed=0)
    np.testing.assert_allclose((squared - x**2).mean(axis=1), sigma**2, rtol=0.05)
    mean = gs.smoothgrad(backend, x, n_samples=400, noise_level=0.2, seed=0)
    assert np.abs(mean - x).max() < 5 * sigma.max() / np.sqrt(400)


def test_quadratic_smoothgrad_converges_to_the_clean_gradient() -> None:
    # grad = A (x + e): its mean is A x, exactly the vanilla gradient
    model = quadratic(3, 1, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 3))
    backend = FunctionBackend(model.f, model.grad)
    got = gs.smoothgrad(backend, x, 0, n_samples=2000, noise_level=0.1, seed=4)
    spread = 0.1 * np.ptp(x, axis=1, keepdims=True) * np.abs(model.A[0]).sum(axis=1)
    assert np.all(np.abs(got - x @ model.A[0]) <= 5 * spread / np.sqrt(2000))


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_seeded_runs_are_bit_identical_and_seeds_differ(kind: str) -> None:
    model = mlp(4, 6, 3, seed=5)
    backend = FunctionBackend(model.f, model.grad)
    x = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    first = gs.smoothgrad(backend, x, n_samples=7, seed=11, kind=kind)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, gs.smoothgrad(backend, x, n_samples=7, seed=11, kind=kind))
    assert not np.array_equal(first, gs.smoothgrad(backend, x, n_samples=7, seed=12, kind=kind))


class RecordingBackend:
    """f(x) = (sum sin(x), 1/2 |x|^2) per row, elementwise arithmetic only (so every row's result is the
    same for any chunk size); records the rows it is given. ``alias``: the gradient for the second output
    is the input array itself, not a copy (a backend may return a view of its input)."""

    def __init__(self, alias: bool = False) -> None:
        self.alias = alias
        self.rows: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1)
        return np.stack([np.sin(z).sum(axis=1), 0.5 * (z * z).sum(axis=1)], axis=1)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.rows.append(x.copy())
        if self.alias:
            return self.forward(x), x
        v = cotangent.reshape(len(x), 2, *([1] * (x.ndim - 1)))
        return self.forward(x), (v[:, 0] * np.cos(x) + v[:, 1] * x).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_noise_is_gaussian_with_the_documented_sigma_in_the_input_dtype(dtype) -> None:
    # 4000 coordinates x 60 copies = 240000 draws per sample: the sample std is within ~0.15% of sigma
    x = (np.random.default_rng(7).random((3, 4000)) * np.array([[1.0], [4.0], [0.25]])).astype(dtype)
    backend = RecordingBackend()
    gs.smoothgrad(backend, x, 1, n_samples=60, noise_level=0.2, seed=5, batch_size=7)
    rows = np.concatenate(backend.rows)
    assert rows.dtype == dtype and len(rows) == 3 * 60
    noise = rows.astype(np.float64).reshape(60, 3, 4000) - x  # copy-major: copy k of sample i at row 3 k + i
    sigma = 0.2 * (x.max(axis=1).astype(np.float64) - x.min(axis=1))
    np.testing.assert_allclose(noise.std(axis=(0, 2)), sigma, rtol=0.01)
    assert np.all(np.abs(noise.mean(axis=(0, 2))) < 5 * sigma / np.sqrt(60 * 4000))
    z = noise / sigma[:, None]
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.005  # a normal's mass within one sigma
    assert 0.0015 < np.mean(np.abs(z) > 3) < 0.004  # and beyond three (0.0027): the tails are there
    if dtype != np.float16:  # no quantisation coarser than the input dtype's own
        assert np.unique(noise[:, 1]).size > 0.99 * noise[:, 1].size


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("alias", [False, True])
@given(n=st.integers(1, 4), batch_size=st.integers(1, 12), seed=st.integers(0, 99))
def test_float32_results_do_not_depend_on_chunking(kind, alias, n, batch_size, seed) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 2, 3)).astype(np.float32)
    target = np.tile([0.5, 1.0], (n, 1)) if not alias else 1

    def run(rows: int) -> tuple[np.ndarray, np.ndarray]:
        backend = RecordingBackend(alias)
        result = gs.smoothgrad(backend, x, target, n_samples=5, seed=seed, kind=kind, batch_size=rows)
        assert max(len(r) for r in backend.rows) <= rows
        return result, np.concatenate(backend.rows)

    whole, whole_rows = run(10**6)
    chunked, chunked_rows = run(batch_size)
    assert whole.dtype == np.float32
    np.testing.assert_array_equal(chunked_rows, whole_rows)  # the same noisy inputs, in the same order
    np.testing.assert_array_equal(chunked, whole)


def test_running_sums_and_welford_agree_with_a_direct_reduction() -> None:
    # the gradient of 1/2 |x|^2 is the noisy input itself, so the reductions can be checked on the rows
    x = np.random.default_rng(8).normal(size=(2, 50)) + 3.0
    for kind, reduce in [("smoothgrad", lambda g: g.mean(axis=0)), ("smoothgrad_sq", lambda g: (g**2).mean(axis=0)),
                         ("vargrad", lambda g: g.var(axis=0))]:
        backend = RecordingBackend(alias=True)
        got = gs.smoothgrad(backend, x, 1, n_samples=9, noise_level=0.1, seed=2, kind=kind, batch_size=4)
        grads = np.concatenate(backend.rows).reshape(9, 2, 50)
        np.testing.assert_allclose(got, reduce(grads), rtol=1e-12, atol=1e-14)
