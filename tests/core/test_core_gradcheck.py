"""check_gradients: passes on correct gradients, FAILS on wrong ones (negative controls), fails loudly on NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from core_models import linear, mlp, quadratic
from hypothesis import given
from hypothesis import strategies as st

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend


class VjpOnly:
    """A minimal backend (no jvp) from a model with a closed-form gradient, optionally corrupted."""

    def __init__(self, model, corrupt=None) -> None:
        self.model, self.corrupt = model, corrupt

    def forward(self, x):
        return self.model.f(x)

    def vjp(self, x, cotangent):
        grad = self.model.grad(x, cotangent)
        return self.model.f(x), grad if self.corrupt is None else self.corrupt(grad)


CORRUPTIONS = {
    "scaled": lambda g: 1.05 * g,
    "sign flipped": lambda g: -g,
    "one coordinate off": lambda g: g + np.eye(1, g[0].size).reshape(g.shape[1:]) * 0.1,
    "transposed": lambda g: g[:, ::-1],
}


@given(kind=st.sampled_from(["linear", "quadratic", "mlp"]), d=st.integers(2, 8), n=st.integers(1, 3),
       seed=st.integers(0, 999))
def test_correct_gradients_pass(kind, d, n, seed) -> None:
    model = {"linear": linear(d, 3, seed), "quadratic": quadratic(d, 3, seed), "mlp": mlp(d, 5, 3, seed)}[kind]
    x = np.random.default_rng(seed).normal(size=(n, d))
    report = gs.check_gradients(VjpOnly(model), x)
    assert report.passed, str(report)
    assert report.mode == "coordinates" and report.n_checks == n * d and not report.jvp_checked
    assert report.max_abs_error < 1e-6


@given(corruption=st.sampled_from(sorted(CORRUPTIONS)), d=st.integers(2, 8), seed=st.integers(0, 999))
def test_wrong_gradients_fail(corruption, d, seed) -> None:
    model = mlp(d, 6, 3, seed)
    x = np.random.default_rng(seed).normal(size=(2, d)) + 0.5
    wrong = CORRUPTIONS[corruption]
    correct = model.grad(x, np.eye(3)[model.f(x).argmax(axis=1)])
    if np.allclose(wrong(correct), correct, rtol=1e-3, atol=1e-4):  # e.g. a symmetric gradient reversed
        return
    report = gs.check_gradients(VjpOnly(model, wrong), x)
    assert not report.passed, str(report)
    assert "FAILED" in str(report) and "vjp" in report.worst


def test_wrong_gradient_fails_in_direction_mode() -> None:
    model = linear(3 * 5 * 5, 2, seed=0)  # 75 > 64 elements per sample: random directions
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5))
    good = gs.check_gradients(VjpOnly(model), x, n_directions=4)
    assert good.passed and good.mode == "directions" and good.n_checks == 8, str(good)
    bad = gs.check_gradients(VjpOnly(model, lambda g: g * 1.1), x, n_directions=4)
    assert not bad.passed and "gradient direction" in bad.worst


def test_float32_quadratic_in_direction_mode() -> None:
    model = quadratic(70, 1, seed=2)
    x = np.random.default_rng(3).normal(size=(3, 70)).astype(np.float32)
    report = gs.check_gradients(FunctionBackend(model.f, model.grad), x, target=0)
    assert report.passed, str(report)
    assert report.precision == "float32" and report.jvp_checked
    assert [f.name for f in report.families] == ["gradient", "support", "uniform"]
    assert report.detectable < 0.03  # a 3% error along the gradient would have failed


def test_jvp_inconsistent_with_vjp_fails() -> None:
    model = linear(4, 2, seed=4)
    x = np.random.default_rng(5).normal(size=(2, 4))
    honest = FunctionBackend(model.f, model.grad, jvp=lambda z, t: t @ model.W)
    report = gs.check_gradients(honest, x)
    assert report.passed and report.jvp_checked, str(report)
    lying = FunctionBackend(model.f, model.grad, jvp=lambda z, t: 2 * t @ model.W)
    report = gs.check_gradients(lying, x)
    assert not report.passed and "(jvp)" in report.worst


def test_nan_gradient_fails_loudly() -> None:
    model = linear(3, 2, seed=0)
    report = gs.check_gradients(VjpOnly(model, lambda g: g * np.nan), np.ones((1, 3)))
    assert not report.passed and "NaN" in report.worst and np.isnan(report.max_abs_error)
    assert "FAILED" in str(report)


def test_nan_output_fails_loudly() -> None:
    with np.errstate(invalid="ignore"):
        report = gs.check_gradients(FunctionBackend(np.log, lambda z, v: v / z), np.array([[-1.0, 2.0]]),
                                    target=np.ones(2))
    assert not report.passed and "forward" in report.worst


def test_nan_in_finite_differences_fails() -> None:
    # sqrt is finite at x = 0 but the backward step x - h leaves its domain: NaN must not pass silently
    backend = FunctionBackend(lambda z: np.sqrt(np.abs(z) * (z >= 0) + np.where(z < 0, np.nan, 0)),
                              lambda z, v: v * 0.0)
    report = gs.check_gradients(backend, np.array([[0.0, 1.0]]), target=np.ones(2))
    assert not report.passed and "NaN" in report.worst


def test_defaults_by_dtype_and_user_tolerances() -> None:
    model = linear(3, 2, seed=1)
    x = np.full((1, 3), 10.0)
    r64 = gs.check_gradients(VjpOnly(model), x)
    r32 = gs.check_gradients(VjpOnly(model), x.astype(np.float32))
    assert r64.eps == pytest.approx(1e-5) and r32.eps == pytest.approx(1e-2)
    assert r64.rtol < r32.rtol and r64.atol < r32.atol
    custom = gs.check_gradients(VjpOnly(model), x, eps=1e-4, rtol=0.5, atol=0.25)
    assert (custom.eps, custom.rtol, custom.atol) == (1e-4, 0.5, 0.25)
    strict = gs.check_gradients(VjpOnly(model, lambda g: g * 1.001), x, rtol=0.0, atol=0.0)
    assert not strict.passed
    loose = gs.check_gradients(VjpOnly(model, lambda g: g * 1.001), x, rtol=0.01)
    assert loose.passed


def test_report_is_frozen_and_readable() -> None:
    report = gs.check_gradients(VjpOnly(linear(2, 2, 0)), np.ones((1, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.passed = False  # type: ignore[misc]
    text = str(report)
    assert "PASSED" in text and "coordinates" in text and "max abs error" in text


def test_bad_arguments() -> None:
    backend = VjpOnly(linear(2, 2, 0))
    with pytest.raises(gs.InputError, match="eps"):
        gs.check_gradients(backend, np.ones((1, 2)), eps=0.0)
    with pytest.raises(gs.InputError, match="n_directions"):
        gs.check_gradients(backend, np.ones((1, 2)), n_directions=0)
    with pytest.raises(gs.InputError, match="NaN"):
        gs.check_gradients(backend, np.array([[np.nan, 1.0]]))


def test_chunked_check_equals_unchunked() -> None:
    model = mlp(5, 4, 2, seed=9)
    x = np.random.default_rng(9).normal(size=(3, 5))
    whole = gs.check_gradients(FunctionBackend(model.f, model.grad), x)
    chunked = gs.check_gradients(FunctionBackend(model.f, model.grad), x, batch_size=2)
    # BLAS may round a matrix product differently for another number of rows, so compare loosely
    assert whole.passed and chunked.passed
    assert dataclasses.replace(whole, max_abs_error=0, max_rel_error=0, worst="") == dataclasses.replace(
        chunked, max_abs_error=0, max_rel_error=0, worst="")
    assert chunked.max_abs_error == pytest.approx(whole.max_abs_error, rel=1e-3)
