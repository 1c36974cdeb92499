"""to_saliency_map and rank_features: the literature recipes by hand, and property-based invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gradsal.core as gs

values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
images = arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
                elements=values)
SIGNS = ["abs", "positive", "negative", "signed", "square"]
REDUCTIONS = ["max", "mean", "sum", "l2", "max_abs", None]
NORMALIZATIONS = ["minmax", "percentile", "symmetric"]


def test_simonyan_recipe_is_max_over_channels_of_abs_scaled_to_unit_range() -> None:
    grad = np.zeros((1, 3, 2, 2))
    grad[0, :, 0, 0] = [1.0, -4.0, 2.0]   # max |.| = 4
    grad[0, :, 0, 1] = [0.5, 0.0, -1.0]   # 1
    grad[0, :, 1, 0] = [2.0, 2.0, 2.0]    # 2
    grad[0, :, 1, 1] = [0.0, 0.0, 0.0]    # 0
    np.testing.assert_allclose(gs.to_saliency_map(grad), [[[1.0, 0.25], [0.5, 0.0]]])


def test_positive_gradient_recipe() -> None:
    grad = np.zeros((1, 2, 1, 3))
    grad[0, :, 0, 0] = [-5.0, 1.0]   # positive max 1
    grad[0, :, 0, 1] = [3.0, -9.0]   # 3
    grad[0, :, 0, 2] = [-1.0, -2.0]  # 0
    np.testing.assert_allclose(gs.to_saliency_map(grad, sign="positive"), [[[1 / 3, 1.0, 0.0]]])
    np.testing.assert_allclose(gs.to_saliency_map(grad, sign="negative"), [[[3 / 7, 1.0, 0.0]]])  # 5, 9, 2 min-maxed


def test_reductions_by_hand() -> None:
    a = np.array([3.0, -4.0]).reshape(1, 2, 1, 1)
    kwargs = {"normalize": None}
    assert gs.to_saliency_map(a, sign="signed", reduce="sum", **kwargs).item() == -1.0
    assert gs.to_saliency_map(a, sign="signed", reduce="mean", **kwargs).item() == -0.5
    assert gs.to_saliency_map(a, sign="signed", reduce="max", **kwargs).item() == 3.0
    assert gs.to_saliency_map(a, sign="signed", reduce="max_abs", **kwargs).item() == -4.0
    assert gs.to_saliency_map(a, sign="signed", reduce="l2", **kwargs).item() == 5.0
    assert gs.to_saliency_map(a, sign="square", reduce="sum", **kwargs).item() == 25.0


def test_signed_maps_keep_zero_and_sign() -> None:
    a = np.array([[[-2.0, 0.0, 1.0]]])  # (N, H, W) already one value per pixel
    for normalize in NORMALIZATIONS:
        got = gs.to_saliency_map(a, sign="signed", reduce=None, normalize=normalize, percentile=100)
        np.testing.assert_allclose(got, [[[-1.0, 0.0, 0.5]]])


def test_percentile_saturates_outliers() -> None:
    a = np.concatenate([np.linspace(0, 1, 99), [100.0]]).reshape(1, 1, 100)
    got = gs.to_saliency_map(a, reduce=None, normalize="percentile", percentile=99.0)
    top = np.percentile(a, 99.0)
    np.testing.assert_allclose(got, np.clip(a / top, 0, 1))
    assert got.max() == 1.0 and got[0, 0, 98] == pytest.approx(1 / top)


def test_channel_axis_last() -> None:
    nchw = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    np.testing.assert_allclose(gs.to_saliency_map(nchw.transpose(0, 2, 3, 1), channel_axis=-1),
                               gs.to_saliency_map(nchw))


@given(images, st.sampled_from(SIGNS), st.sampled_from(REDUCTIONS), st.sampled_from(NORMALIZATIONS))
def test_range_and_shape(attributions, sign, reduce, normalize) -> None:
    got = gs.to_saliency_map(attributions, sign=sign, reduce=reduce, normalize=normalize)
    n, c, h, w = attributions.shape
    assert got.shape == ((n, h, w) if reduce is not None else (n, c, h, w))
    assert np.isfinite(got).all()
    low = -1.0 if sign == "signed" else 0.0
    assert got.min() >= low and got.max() <= 1.0
    peaks = np.abs(got).reshape(n, -1).max(axis=1)
    assert np.all((peaks == 1.0) | (peaks == 0.0))  # every sample reaches the top, or is constant (zeros)


@given(images, st.floats(1e-3, 1e3), st.sampled_from(["abs", "positive", "negative", "signed"]),
       st.sampled_from(["max", "mean", "sum", "l2", "max_abs"]))
def test_minmax_is_invariant_to_positive_scaling(attributions, factor, sign, reduce) -> None:
    base = gs.to_saliency_map(attributions, sign=sign, reduce=reduce)
    np.testing.assert_allclose(gs.to_saliency_map(attributions * factor, sign=sign, reduce=reduce), base,
                               rtol=1e-9, atol=1e-9)


@given(images, st.sampled_from(["max", "mean", "sum", "max_abs", None]))
def test_sign_handling(attributions, reduce) -> None:
    positive_of_negated = gs.to_saliency_map(-attributions, sign="positive", reduce=reduce, normalize=None)
    np.testing.assert_array_equal(positive_of_negated,
                                  gs.to_saliency_map(attributions, sign="negative", reduce=reduce, normalize=None))
    odd = "max_abs" if reduce == "max" else reduce  # max(-a) is not -max(a); the others commute with negation
    signed = gs.to_saliency_map(attributions, sign="signed", reduce=odd, normalize="symmetric")
    np.testing.assert_allclose(gs.to_saliency_map(-attributions, sign="signed", reduce=odd, normalize="symmetric"),
                               -signed, atol=1e-12)
    absolute = gs.to_saliency_map(attributions, sign="abs", reduce=reduce)
    np.testing.assert_allclose(gs.to_saliency_map(-attributions, sign="abs", reduce=reduce), absolute)


def test_constant_maps_give_zeros_without_nan() -> None:
    for fill in (0.0, 3.0, -2.0):
        a = np.full((2, 3, 4, 4), fill)
        for sign in SIGNS:
            for normalize in NORMALIZATIONS:
                got = gs.to_saliency_map(a, sign=sign, normalize=normalize)
                assert np.isfinite(got).all()
                if normalize == "minmax" and sign != "signed":
                    np.testing.assert_array_equal(got, 0.0)


def test_float32_stays_float32() -> None:
    assert gs.to_saliency_map(np.ones((1, 1, 2, 2), np.float32)).dtype == np.float32
    assert gs.to_saliency_map(np.ones((1, 1, 2, 2), np.int64)).dtype == np.float64


@pytest.mark.parametrize(("kwargs", "error", "phrase"), [
    ({"sign": "absolute"}, gs.InputError, "use one of"),
    ({"reduce": "median"}, gs.InputError, "use one of"),
    ({"normalize": "zscore"}, gs.InputError, "use one of"),
    ({"percentile": 0}, gs.InputError, r"\(0, 100\]"),
    ({"channel_axis": 4}, gs.InputError, "per-sample axis"),
])
def test_bad_options(kwargs, error, phrase) -> None:
    with pytest.raises(error, match=phrase):
        gs.to_saliency_map(np.ones((1, 2, 3, 3)), **kwargs)


def test_bad_attributions() -> None:
    with pytest.raises(gs.InputError, match="NaN"):
        gs.to_saliency_map(np.full((1, 1, 2, 2), np.nan))
    with pytest.raises(gs.InputTypeError, match="real-valued"):
        gs.to_saliency_map(np.ones((1, 1, 2, 2), dtype=complex))
    with pytest.raises(gs.InputError, match=r"\[None\]"):
        gs.to_saliency_map(np.ones(3))


def test_rank_features_one_sample_and_a_batch() -> None:
    ranked = gs.rank_features(np.array([0.1, -0.5, 0.3, 0.0]), ["a", "b", "c", "d"])
    assert ranked == [("b", -0.5), ("c", 0.3), ("a", 0.1), ("d", 0.0)]
    assert ranked[0].name == "b" and ranked[0].value == -0.5
    assert gs.rank_features(np.array([[0.1, -0.5, 0.3]]), "xyz", top_k=2) == [("y", -0.5), ("z", 0.3)]
    batch = np.array([[1.0, -2.0], [-3.0, 0.0]])  # mean |a|: 2, 1
    assert gs.rank_features(batch, ["p", "q"]) == [("p", 2.0), ("q", 1.0)]
    tie = gs.rank_features(np.array([1.0, -1.0, 1.0]), ["first", "second", "third"])
    assert [name for name, _ in tie] == ["first", "second", "third"]


def test_rank_features_errors() -> None:
    with pytest.raises(gs.InputError, match="one name per feature"):
        gs.rank_features(np.ones(3), ["a", "b"])
    with pytest.raises(gs.InputError, match=r"\(D,\) or a batch"):
        gs.rank_features(np.ones((2, 2, 2)), ["a", "b"])
    with pytest.raises(gs.InputError, match="at least 1"):
        gs.rank_features(np.ones(2), ["a", "b"], top_k=0)
    with pytest.raises(gs.InputError, match="NaN"):
        gs.rank_features(np.array([np.nan, 1.0]), ["a", "b"])
