"""Deletion and insertion curves (Petsiuk et al. 2018), checked against closed forms and the quadrant model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sanity_models import QuadrantNet, affine_backend, flat, quadrant_mask

import gradsal.core as gs
from gradsal.core import InputError, InputTypeError
from gradsal.core.faithfulness import deletion_curve, insertion_curve, perturbation_baseline, plot_curves


@st.composite
def affine_cases(draw: st.DrawFn) -> tuple:
    """An affine model, an input (image or tabular), a map, a step and a baseline."""
    n = draw(st.integers(1, 3))
    image = draw(st.booleans())
    shape = (n, draw(st.integers(1, 2)), draw(st.integers(2, 5)), draw(st.integers(2, 5))) if image else \
        (n, draw(st.integers(2, 12)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape[1:]))
    A, c = rng.normal(size=(size, 3)), rng.normal(size=3)
    x = rng.random(shape)
    unit_shape = (n, *shape[2:]) if image else shape
    saliency = rng.random(unit_shape)
    step = draw(st.sampled_from([0.05, 0.1, 0.25, 0.3, 1.0]))
    baseline = draw(st.sampled_from(["zero", "blur", "mean", 0.5]))
    if baseline == "mean" and not image and n == 1:
        baseline = "zero"
    return A, c, x, saliency, step, baseline


@given(affine_cases())
def test_deletion_plus_insertion_is_constant_for_affine_models(case: tuple) -> None:
    """For affine f, S(where(m, b, x)) + S(where(m, x, b)) = S(x) + S(b) at every step (same mask m)."""
    A, c, x, saliency, step, baseline = case
    backend = affine_backend(A, c)
    target = np.zeros(3)
    target[1] = 1.0
    deletion = deletion_curve(backend, x, saliency, target, step=step, baseline=baseline)
    insertion = insertion_curve(backend, x, saliency, target, step=step, baseline=baseline)
    base = perturbation_baseline(baseline, x)
    expected = (flat(x) @ A + c)[:, 1] + (flat(base) @ A + c)[:, 1]
    np.testing.assert_allclose(deletion.scores + insertion.scores, np.repeat(expected[:, None], len(
        deletion.fractions), axis=1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(deletion.scores[:, 0], (flat(x) @ A + c)[:, 1], rtol=1e-12)
    np.testing.assert_allclose(deletion.scores[:, -1], (flat(base) @ A + c)[:, 1], rtol=1e-12, atol=1e-12)
    assert deletion.fractions[0] == 0 and deletion.fractions[-1] == 1
    np.testing.assert_allclose(deletion.auc, np.trapezoid(deletion.scores, deletion.fractions, axis=1))


@given(st.integers(2, 40), st.sampled_from([0.05, 0.1, 0.2, 0.5]), st.integers(0, 2**16))
def test_the_most_salient_units_go_first(size: int, step: float, seed: int) -> None:
    """With f(x) = <w, x>, x = 1, zero baseline and the map w: after k units, S = sum(w) - (top-k sum of w)."""
    w = np.random.default_rng(seed).permutation(size).astype(float) + 1.0
    backend = affine_backend(w[:, None], np.zeros(1))
    curve = deletion_curve(backend, np.ones((1, size)), w[None], 0, step=step, baseline="zero")
    removed = np.rint(curve.fractions * size).astype(int)
    expected = w.sum() - np.concatenate([[0.0], np.cumsum(np.sort(w)[::-1])])[removed]
    np.testing.assert_allclose(curve.scores[0], expected)
    assert set(removed) == set(np.rint(np.minimum(np.arange(int(np.ceil(1 / step)) + 1) * step, 1) * size))


def test_chunking_changes_nothing_and_inputs_are_not_modified() -> None:
    net = QuadrantNet.random((2, 8, 8), seed=3)
    x = np.random.default_rng(3).random((3, 2, 8, 8))
    saliency = np.random.default_rng(4).random((3, 8, 8))
    x_copy, saliency_copy = x.copy(), saliency.copy()
    whole = deletion_curve(net.backend(), x, saliency, step=0.1, baseline="blur")
    for batch_size in (1, 7):
        chunked = deletion_curve(net.backend(), x, saliency, step=0.1, baseline="blur", batch_size=batch_size)
        # the model's own matrix product may round differently for other batch sizes (BLAS), nothing more
        np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-13)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(saliency, saliency_copy)


def test_forward_calls_are_batched_across_steps_and_samples() -> None:
    calls = []
    net = QuadrantNet.random((1, 8, 8), seed=0)

    def f(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return net.f(x)

    x = np.random.default_rng(0).random((4, 1, 8, 8))
    deletion_curve(gs.as_backend(f), x, np.random.default_rng(1).random((4, 8, 8)), 0, step=0.1, batch_size=16)
    assert calls[1:] == [16, 16, 12]  # a probe for the output shape, then 4 samples x 11 steps in chunks of 16


def test_x_shaped_attributions_are_ranked_by_magnitude_over_channels() -> None:
    """An x-shaped array ranks pixels by max_c |a|; the same values as an (N, H, W) map give the same curve."""
    net = QuadrantNet.random((3, 6, 6), seed=1)
    x = np.random.default_rng(1).random((2, 3, 6, 6))
    attributions = np.random.default_rng(2).normal(size=x.shape)
    from_raw = deletion_curve(net.backend(), x, attributions, step=0.1)
    from_map = deletion_curve(net.backend(), x, np.abs(attributions).max(axis=1), step=0.1)
    np.testing.assert_array_equal(from_raw.scores, from_map.scores)
    signed = deletion_curve(net.backend(), x, -np.abs(attributions).max(axis=1), step=0.1, absolute=True)
    np.testing.assert_array_equal(signed.scores, from_map.scores)


def test_probability_scores_are_the_softmax_of_the_target() -> None:
    A, c = np.random.default_rng(5).normal(size=(10, 4)), np.zeros(4)
    x = np.random.default_rng(6).random((2, 10))
    curve = deletion_curve(affine_backend(A, c), x, np.ones((2, 10)), 2, step=1.0, score="probability")
    logits = x @ A
    expected = np.exp(logits[:, 2]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(curve.scores[:, 0], expected)
    np.testing.assert_allclose(curve.scores[:, 1], 0.25)  # zero input: uniform probabilities
    assert curve.score == "probability"


# ----------------------------------------------------------------------------- the quadrant model
SHAPE = (3, 16, 16)


@pytest.mark.parametrize("seed", range(3))
def test_gradient_and_ig_put_their_mass_in_the_quadrant_the_model_reads(seed: int) -> None:
    net = QuadrantNet.random(SHAPE, seed=seed)
    x = np.random.default_rng(seed).random((4, *SHAPE))
    inside = quadrant_mask(x.shape)
    for attributions in (gs.vanilla_gradient(net.backend(), x),
                         gs.integrated_gradients(net.backend(), x, n_steps=16),
                         gs.vanilla_gradient(gs.as_backend(net.f), x)):  # finite differences: no closed form
        mass = np.abs(attributions)
        share = (mass * inside).reshape(len(x), -1).sum(axis=1) / mass.reshape(len(x), -1).sum(axis=1)
        assert (share > 0.95).all(), share


@pytest.mark.parametrize("seed", range(5))
def test_gradient_ranking_deletes_faster_than_a_random_ranking(seed: int) -> None:
    net = QuadrantNet.random(SHAPE, seed=seed)
    x = np.random.default_rng(seed).random((8, *SHAPE))
    gradient = gs.vanilla_gradient(net.backend(), x)
    random_map = np.random.default_rng(seed + 100).random((len(x), *SHAPE[1:]))
    by_gradient = deletion_curve(net.backend(), x, gradient, step=0.05)
    by_chance = deletion_curve(net.backend(), x, random_map, step=0.05)
    assert by_gradient.mean_auc < by_chance.mean_auc
    insertion = insertion_curve(net.backend(), x, gradient, step=0.05, baseline="zero")
    insertion_by_chance = insertion_curve(net.backend(), x, random_map, step=0.05, baseline="zero")
    assert insertion.mean_auc > insertion_by_chance.mean_auc


def test_gradient_ranking_beats_every_random_ranking_on_a_monotone_model() -> None:
    """Positive weights on the quadrant, x >= 0, zero baseline: the gradient ranking reaches S(0) after 25%
    of the pixels and stays there, while a random ranking still holds quadrant pixels: lower AUC, per sample."""
    rng = np.random.default_rng(7)
    weights = np.zeros((1, 16, 16))
    weights[0, :8, :8] = rng.random((8, 8)) + 0.1
    backend = affine_backend(weights.reshape(-1, 1), np.zeros(1))
    x = rng.random((6, 1, 16, 16))
    by_gradient = deletion_curve(backend, x, gs.vanilla_gradient(backend, x))
    np.testing.assert_allclose(by_gradient.scores[:, by_gradient.fractions >= 0.25], 0.0, atol=1e-12)
    for seed in range(5):
        by_chance = deletion_curve(backend, x, np.random.default_rng(seed).random((6, 16, 16)))
        assert (by_gradient.auc < by_chance.auc).all()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "error"), [
    ({"step": 0.0}, InputError), ({"step": 1.5}, InputError), ({"step": "5%"}, InputTypeError),
    ({"baseline": "black"}, InputError), ({"baseline": np.zeros((2, 2))}, InputError),
    ({"saliency": np.zeros((2, 5, 5))}, InputError), ({"saliency": np.array([["a"]])}, InputTypeError),
    ({"saliency": np.full((2, 4, 4), np.nan)}, InputError), ({"score": "logit"}, InputError),
])
def test_bad_arguments_raise_typed_errors(kwargs: dict, error: type) -> None:
    net = QuadrantNet.random((1, 4, 4))
    arguments = {"saliency": np.zeros((2, 4, 4)), **kwargs}
    with pytest.raises(error):
        deletion_curve(net.backend(), np.zeros((2, 1, 4, 4)), **arguments)


def test_mean_baseline_of_a_single_tabular_row_asks_for_feature_means() -> None:
    with pytest.raises(InputError, match="feature_means"):
        deletion_curve(affine_backend(np.ones((3, 1)), np.zeros(1)), np.ones((1, 3)), np.ones((1, 3)),
                       baseline="mean")


def test_probability_score_needs_class_scores() -> None:
    with pytest.raises(InputError, match="explained"):
        deletion_curve(affine_backend(np.ones((3, 1)), np.zeros(1)), np.ones((1, 3)), np.ones((1, 3)),
                       score="probability")


# ----------------------------------------------------------------------------- plot
def test_plot_curves_writes_a_png_with_both_panels(tmp_path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    net = QuadrantNet.random((1, 8, 8))
    x = np.random.default_rng(0).random((2, 1, 8, 8))
    gradient = gs.vanilla_gradient(net.backend(), x)
    curves = {"gradient": (deletion_curve(net.backend(), x, gradient), insertion_curve(net.backend(), x, gradient))}
    path = plot_curves(curves, tmp_path / "curves.png")
    with image_module.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.width > picture.height > 100
        colours = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 3  # lines and text, not a blank canvas
    with pytest.raises(InputTypeError):
        plot_curves(42, tmp_path / "nothing.png")
