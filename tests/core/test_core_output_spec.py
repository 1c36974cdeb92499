"""An explicit target needs the output's shape: a one-row probe, run once per backend and input shape."""

from __future__ import annotations

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend


class Counting:
    """A linear model ``x W`` (optionally softmaxed) counting its forward calls."""

    def __init__(self, softmax: bool = False) -> None:
        self.weight = np.random.default_rng(0).standard_normal((5, 3))
        self.softmax, self.forward_calls = softmax, 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.forward_calls += 1
        logits = x @ self.weight
        if not self.softmax:
            return logits
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.forward(x), cotangent @ self.weight.T


def test_the_probe_runs_once_and_the_gradient_is_still_exact() -> None:
    model, x = Counting(), np.random.default_rng(1).standard_normal((4, 5))
    first = gs.vanilla_gradient(model, x, target=2)
    calls_after_first = model.forward_calls
    second = gs.vanilla_gradient(model, x, target=2)
    assert model.forward_calls - calls_after_first == 1  # the VJP's own forward, no probe
    np.testing.assert_allclose(first, np.broadcast_to(model.weight[:, 2], x.shape))
    np.testing.assert_array_equal(first, second)
    gs.vanilla_gradient(model, 2.0 * x, target=1)  # another input of the same shape: no new probe
    assert model.forward_calls - calls_after_first == 2


def test_a_new_input_shape_is_probed_again() -> None:
    backend = FunctionBackend(lambda x: x.reshape(len(x), -1)[:, :2] * 3.0, lambda x, c: np.pad(
        3.0 * c, ((0, 0), (0, x[0].size - 2))).reshape(x.shape))
    assert gs.vanilla_gradient(backend, np.ones((2, 4)), target=1).shape == (2, 4)
    grad = gs.vanilla_gradient(backend, np.ones((2, 2, 3)), target=0)
    np.testing.assert_allclose(grad.reshape(2, -1)[:, 0], 3.0)


def test_the_probability_warning_is_given_on_every_call() -> None:
    model, x = Counting(softmax=True), np.random.default_rng(2).standard_normal((3, 5))
    for _ in range(2):
        with pytest.warns(gs.ProbabilityOutputWarning):
            gs.vanilla_gradient(model, x, target=0)
