"""check_gradients has power: on a smooth image-shaped model it passes the true gradient and fails each of
eight corruptions, in float32 and float64; its gates are pinned where a loosened one lets an error through."""

from __future__ import annotations

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.core.gradcheck_power import CORRUPTIONS, gradient_check_power


class TinyImageNet:
    """``W2 tanh(W1 vec(x))`` on (3, 12, 12) images, with its closed-form gradient (independent of gradsal)."""

    def __init__(self, seed: int = 0, classes: int = 4) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((3 * 12 * 12, 24)) / 12
        self.w2 = rng.standard_normal((24, classes))

    def f(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x.reshape(len(x), -1).astype(np.float64) @ self.w1) @ self.w2

    def grad(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        hidden = np.tanh(x.reshape(len(x), -1).astype(np.float64) @ self.w1)
        return (((cotangent @ self.w2.T) * (1 - hidden**2)) @ self.w1.T).reshape(x.shape)


def image(dtype: type) -> np.ndarray:
    rows, cols = np.mgrid[0:12, 0:12] / 12
    channels = [np.sin(3 * rows + c) * np.cos(2 * cols - c) for c in range(3)]
    return np.stack(channels)[None].astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_true_gradient_passes_and_every_corruption_fails(dtype) -> None:
    model = TinyImageNet()
    f = (lambda x: model.f(x).astype(np.float32)) if dtype == np.float32 else model.f
    reports = gradient_check_power(FunctionBackend(f, model.grad), image(dtype))
    assert reports["correct"].passed, reports["correct"]
    assert reports["correct"].precision == np.dtype(dtype).name
    for name in CORRUPTIONS:
        assert reports[name].verdict == "FAILED", f"{name}: {reports[name]}"


def test_the_report_says_what_it_could_detect_and_what_it_cost() -> None:
    model = TinyImageNet()
    report = gs.check_gradients(FunctionBackend(model.f, model.grad), image(np.float64))
    text = str(report)
    assert "PASSED in float64" in text and "would have failed" in text and "forward rows" in text
    assert [f.name for f in report.families] == ["gradient", "channels", "support", "uniform"]
    assert report.detectable < 1e-4
    assert report.n_forward <= 130  # about 100 forward passes for one image


def test_a_float64_gradient_off_by_3e_5_fails_and_one_off_by_1e_6_passes() -> None:
    model = TinyImageNet(seed=3)
    x = image(np.float64)
    for factor, passes in ((1 + 3e-5, False), (1 - 3e-5, False), (1 + 1e-6, True)):
        backend = FunctionBackend(model.f, lambda z, v, k=factor: k * model.grad(z, v))
        assert gs.check_gradients(backend, x).passed is passes, factor


def test_a_float32_gradient_off_by_5_percent_fails() -> None:
    model = TinyImageNet(seed=4)
    backend = FunctionBackend(lambda z: model.f(z).astype(np.float32), lambda z, v: 1.05 * model.grad(z, v))
    report = gs.check_gradients(backend, image(np.float32))
    assert report.verdict == "FAILED" and "gradient direction" in report.worst


def test_the_kink_rule_does_not_set_aside_a_smooth_functions_wrong_gradient() -> None:
    # a steep quadratic: one-sided differences disagree by 2ch at step h and by ch at h/2 (a ratio of 1/2, not
    # the ~1 of a kink), so a 30% error in one coordinate must fail rather than be set aside as a kink
    curvature = 1e4

    def wrong(z: np.ndarray, v: np.ndarray) -> np.ndarray:
        grad = 2 * curvature * z * v[:, :1]
        grad[:, 2] *= 1.3
        return grad

    backend = FunctionBackend(lambda z: curvature * (z**2).sum(axis=1, keepdims=True), wrong)
    report = gs.check_gradients(backend, np.array([[0.3, -0.5, 0.8, 1.1]]), target=0, eps=1e-2)
    assert report.verdict == "FAILED" and report.n_nonsmooth == 0, report
    assert "coordinate 2" in report.worst


def test_a_zero_gradient_of_a_model_that_depends_on_x_never_passes() -> None:
    model = TinyImageNet(seed=5)
    backend = FunctionBackend(model.f, lambda z, v: np.zeros_like(z))
    for nudge in ("auto", 0.0):
        assert gs.check_gradients(backend, image(np.float64), nudge=nudge).verdict == "FAILED"


def test_bad_power_arguments() -> None:
    model = TinyImageNet()
    with pytest.raises(gs.InputError, match="corruptions"):
        gradient_check_power(FunctionBackend(model.f, model.grad), image(np.float64), corruptions=["typo"])
    with pytest.raises(gs.InputError, match="nudge"):
        gs.check_gradients(FunctionBackend(model.f, model.grad), image(np.float64), nudge=-1.0)


class VjpOnly:
    """forward and vjp from plain functions (no jvp: the finite differences alone judge)."""

    def __init__(self, f, grad) -> None:
        self.f, self.grad = f, grad

    def forward(self, x):
        return self.f(x)

    def vjp(self, x, cotangent):
        return self.f(x), self.grad(x, cotangent)


def test_differences_drowned_in_rounding_are_inconclusive_not_passed() -> None:
    # a float32 output of 10,000 moves by about 1e-3 per rounding step: a slope of 1e-2 spread over 432
    # pixels is below what any step of the ladder can resolve, so the check must say it cannot judge
    weights = np.random.default_rng(0).standard_normal((3 * 12 * 12, 1))

    def f(x: np.ndarray) -> np.ndarray:
        return (1e4 + 1e-2 * (x.reshape(len(x), -1).astype(np.float64) @ weights)).astype(np.float32)

    report = gs.check_gradients(VjpOnly(f, lambda z, v: (1e-2 * v @ weights.T).reshape(z.shape)), image(np.float32),
                                target=0)
    assert report.verdict == "INCONCLUSIVE" and not report.passed, report
    assert "cannot judge" in str(report)
