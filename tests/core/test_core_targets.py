"""Target resolution: None / int / ints / float cotangent, the probability warning, and target errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from core_models import linear

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.core.targets import ProbabilityOutputWarning, cotangent_from_target, looks_like_probabilities


@pytest.fixture
def model():
    return linear(4, 3, seed=0)


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(5, 4))


def test_none_is_the_argmax_per_sample(model, x) -> None:
    backend = FunctionBackend(model.f, model.grad)
    predicted = model.f(x).argmax(axis=1)
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x), model.W[:, predicted].T)


def test_int_ints_and_integer_arrays(model, x) -> None:
    backend = FunctionBackend(model.f, model.grad)
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, 2), np.tile(model.W[:, 2], (5, 1)))
    classes = [0, 2, 1, 1, 0]
    expected = model.W[:, classes].T
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, classes), expected)
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, np.array(classes, dtype=np.int32)), expected)
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, np.int64(2)), np.tile(model.W[:, 2], (5, 1)))


def test_float_cotangent_explains_weighted_outputs(model, x) -> None:
    backend = FunctionBackend(model.f, model.grad)
    difference = np.array([1.0, -1.0, 0.0])  # logit 0 minus logit 1, shared by all samples
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, difference),
                               np.tile(model.W[:, 0] - model.W[:, 1], (5, 1)))
    weights = np.random.default_rng(2).normal(size=(5, 3))
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, weights), weights @ model.W.T)


def test_regression_output_none_means_the_output_itself() -> None:
    w = np.array([1.0, -2.0, 0.5])
    backend = FunctionBackend(lambda z: z @ w, lambda z, v: v[:, None] * w)
    x = np.ones((2, 3))
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x), np.tile(w, (2, 1)))
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, np.array([2.0, -1.0])), [2 * w, -w])
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, 3.0), np.tile(3 * w, (2, 1)))
    with pytest.raises(gs.TargetError, match="one value per sample"):
        gs.vanilla_gradient(backend, x, 0)


def test_segmentation_outputs_int_indexes_the_flattened_output() -> None:
    # f(x) = x itself, shaped (N, 2, 3): target 4 is element (1, 1) of each sample; a mask explains a region
    backend = FunctionBackend(lambda z: z.copy(), lambda z, v: v)
    x = np.zeros((2, 2, 3))
    expected = np.zeros((2, 2, 3))
    expected[:, 1, 1] = 1
    np.testing.assert_array_equal(gs.vanilla_gradient(backend, x, 4), expected)
    mask = np.zeros((2, 3))
    mask[0, :2] = 1.0
    np.testing.assert_array_equal(gs.vanilla_gradient(backend, x, mask), np.broadcast_to(mask, (2, 2, 3)))
    x[0, 1, 2] = 5.0  # argmax of sample 0
    none = gs.vanilla_gradient(backend, x)
    assert none[0, 1, 2] == 1 and none[0].sum() == 1 and none[1, 0, 0] == 1


@pytest.mark.parametrize(("target", "phrase"), [
    (3, "between 0 and 2"),
    (-1, "out of range"),
    ([0, 1], "2 indices for a batch of 5"),
    (np.zeros((5, 1), dtype=int), "1-D sequence"),
    (np.zeros((5, 4)), "shaped (5, 3)"),
    (np.zeros(4), "shaped (5, 3)"),
    (True, "boolean"),
    (np.ones((5, 3), dtype=bool), "astype"),
    ("cat", "not understood"),
    (np.array([[np.nan, 0, 0]] * 5), "NaN"),
])
def test_bad_targets_raise_target_error(model, x, target, phrase: str) -> None:
    backend = FunctionBackend(model.f, model.grad)
    with pytest.raises(gs.TargetError, match=phrase.replace("(", r"\(").replace(")", r"\)")) as info:
        gs.vanilla_gradient(backend, x, target)
    assert isinstance(info.value, ValueError) and isinstance(info.value, gs.GradsalError)


def test_probability_outputs_warn() -> None:
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    backend = FunctionBackend(lambda z: softmax(z[:, :3]))
    x = np.random.default_rng(3).normal(size=(2, 3))
    with pytest.warns(ProbabilityOutputWarning, match="logits"):
        gs.vanilla_gradient(backend, x)
    with pytest.warns(ProbabilityOutputWarning):
        gs.vanilla_gradient(backend, x, 1)
    assert issubclass(ProbabilityOutputWarning, UserWarning)


def test_logits_do_not_warn(model, x) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gs.vanilla_gradient(FunctionBackend(model.f, model.grad), x)


def test_looks_like_probabilities_by_hand() -> None:
    assert looks_like_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]]))
    assert not looks_like_probabilities(np.array([[0.2, 0.7], [1.0, 0.0]]))  # a row sums to 0.9
    assert not looks_like_probabilities(np.array([[1.2, -0.2]]))
    assert not looks_like_probabilities(np.array([[1.0]]))  # one output
    assert not looks_like_probabilities(np.array([0.5, 0.5]))  # regression


def test_cotangent_dtype_follows_the_outputs() -> None:
    assert cotangent_from_target(1, 2, (3,), np.float32).dtype == np.float32
    np.testing.assert_array_equal(cotangent_from_target([2, 0], 2, (3,), np.float64), [[0, 0, 1], [1, 0, 0]])
