"""Localisation metrics against values worked out by hand on tiny maps, their invariances and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.core.errors import InputError, InputTypeError

# sum 10; the maximum 4 at (1, 1), then 3 at (1, 0), 2 at (0, 2), 1 at (0, 1)
MAP = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
# not a rectangle: (0, 2) and (1, 1); its bounding box is rows 0-1, columns 1-2
DIAGONAL = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)


def test_mass_accuracy_by_hand() -> None:
    assert gs.relevance_mass_accuracy(MAP, DIAGONAL) == pytest.approx((2 + 4) / 10)
    top_row = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]])  # 0/1 integers work as a mask
    assert gs.relevance_mass_accuracy(MAP, top_row) == pytest.approx(3 / 10)


def test_rank_accuracy_by_hand() -> None:
    # K = 2: the two largest are 4 (in the region) and 3 (outside)
    assert gs.relevance_rank_accuracy(MAP, DIAGONAL) == 0.5
    assert gs.relevance_rank_accuracy(MAP, MAP >= 3) == 1.0
    assert gs.relevance_rank_accuracy(MAP, [[1, 0, 0], [0, 0, 1], [0, 0, 0]]) == 0.0


def test_rank_accuracy_shares_ties() -> None:
    # K = 1 place, three pixels tie at the top and one of them is in the region: 1/3
    tied = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert gs.relevance_rank_accuracy(tied, np.array([[1, 0], [0, 0]])) == pytest.approx(1 / 3)
    # K = 2: 5 is above the threshold 1 (in the region); one place left for three tied pixels, one in the region
    tied = np.array([[5.0, 1.0], [1.0, 1.0]])
    assert gs.relevance_rank_accuracy(tied, np.array([[1, 1], [0, 0]])) == pytest.approx((1 + 1 / 3) / 2)


def test_rank_accuracy_matches_a_sort_without_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.random((7, 9))
        mask = rng.random((7, 9)) < 0.3
        mask[0, 0] = True
        k = int(mask.sum())
        top = np.argsort(values.ravel())[::-1][:k]
        assert gs.relevance_rank_accuracy(values, mask) == pytest.approx(mask.ravel()[top].mean())


def test_pointing_game_by_hand() -> None:
    assert gs.pointing_game(MAP, DIAGONAL) == 1.0  # the maximum (1, 1) is in the region
    top_row = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    assert gs.pointing_game(MAP, top_row) == 0.0
    assert gs.pointing_game(MAP, top_row, tolerance=1) == 1.0  # (0, 1) is one pixel from (1, 1)
    assert gs.pointing_game(MAP, [[0, 0, 1], [0, 0, 0], [0, 0, 0]], tolerance=1.4) == 0.0  # sqrt(2) away
    assert gs.pointing_game(MAP, [[0, 0, 1], [0, 0, 0], [0, 0, 0]], tolerance=1.5) == 1.0


def test_pointing_game_tolerance_matches_distances() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.random((8, 10))
        mask = np.zeros((8, 10), dtype=bool)
        mask[rng.integers(8), rng.integers(10)] = True
        tolerance = float(rng.uniform(0, 6))
        peak = np.unravel_index(values.argmax(), values.shape)
        rows, cols = np.nonzero(mask)
        distance = np.sqrt((rows - peak[0]) ** 2 + (cols - peak[1]) ** 2).min()
        assert gs.pointing_game(values, mask, tolerance=tolerance) == float(distance <= tolerance)


def test_pointing_game_shares_tied_maxima() -> None:
    tied = np.array([[2.0, 2.0], [2.0, 2.0]])
    assert gs.pointing_game(tied, np.array([[1, 0], [0, 0]])) == 0.25


def test_energy_pointing_game_uses_the_bounding_box() -> None:
    # the box rows 0-1, columns 1-2 holds 1 + 2 + 4 + 0 = 7 of 10
    assert gs.energy_pointing_game(MAP, DIAGONAL) == pytest.approx(7 / 10)
    assert gs.energy_pointing_game(MAP, (0, 1, 2, 3)) == pytest.approx(7 / 10)
    assert gs.relevance_mass_accuracy(MAP, (0, 1, 2, 3)) == pytest.approx(7 / 10)


def test_forbidden_share_and_the_combined_metrics() -> None:
    corner = np.zeros((3, 3), dtype=bool)
    corner[1, 0] = True
    assert gs.forbidden_share(MAP, corner) == pytest.approx(3 / 10)
    metrics = gs.localisation_metrics(MAP, DIAGONAL, corner)
    assert metrics == pytest.approx({"mass_accuracy": 0.6, "rank_accuracy": 0.5, "pointing_game": 1.0,
                                     "energy_pointing_game": 0.7, "forbidden_share": 0.3})
    assert math.isnan(gs.localisation_metrics(MAP, DIAGONAL)["forbidden_share"])


def test_box_mask() -> None:
    expected = np.zeros((3, 4), dtype=bool)
    expected[1:3, 0:2] = True
    np.testing.assert_array_equal(gs.box_mask((3, 4), (1, 0, 3, 2)), expected)


def test_a_zero_map_has_no_mass_and_chance_level_ranks() -> None:
    zero = np.zeros((4, 4))
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    assert math.isnan(gs.relevance_mass_accuracy(zero, mask))
    assert math.isnan(gs.energy_pointing_game(zero, mask))
    assert gs.relevance_rank_accuracy(zero, mask) == pytest.approx(4 / 16)
    assert gs.pointing_game(zero, mask) == pytest.approx(4 / 16)


@pytest.mark.parametrize("scale", [2.0**-7, 0.37, 1.0, 3.7, 2.0**9])
def test_positive_scaling_changes_nothing(scale: float) -> None:
    rng = np.random.default_rng(2)
    values = rng.random((12, 12)) ** 3
    region = rng.random((12, 12)) < 0.25
    forbidden = rng.random((12, 12)) < 0.1
    before = gs.localisation_metrics(values, region, forbidden)
    after = gs.localisation_metrics(values * scale, region, forbidden)
    assert after == pytest.approx(before, rel=1e-12)
    assert after["rank_accuracy"] == before["rank_accuracy"]
    assert after["pointing_game"] == before["pointing_game"]


def test_inputs_are_not_modified() -> None:
    values, mask = MAP.copy(), DIAGONAL.copy()
    gs.localisation_metrics(values, mask, mask)
    gs.pointing_game(values, mask, tolerance=2)
    np.testing.assert_array_equal(values, MAP)
    np.testing.assert_array_equal(mask, DIAGONAL)


@pytest.mark.parametrize(("saliency", "region", "error", "words"), [
    (MAP, np.ones((3, 4), dtype=bool), InputError, "shape"),
    (MAP, np.zeros((3, 3), dtype=bool), InputError, "empty"),
    (np.where(MAP == 4, np.nan, MAP), DIAGONAL, InputError, "NaN"),
    (np.where(MAP == 4, np.inf, MAP), DIAGONAL, InputError, "inf"),
    (-MAP, DIAGONAL, InputError, "negative"),
    (MAP, DIAGONAL * 2, InputError, "0 and 1"),
    (MAP[None], DIAGONAL, InputError, "(H, W)"),
    (np.zeros((0, 3)), DIAGONAL, InputError, "(H, W)"),
    ("map", DIAGONAL, InputTypeError, "NumPy array"),
    (MAP.astype(complex), DIAGONAL, InputTypeError, "dtype"),
    (MAP, "mask", InputTypeError, "binary mask"),
    (MAP, None, InputTypeError, "binary mask"),
    (MAP, (0, 0, 0, 3), InputError, "box"),
    (MAP, (0, 0, 4, 3), InputError, "box"),
    (MAP, (0.0, 0, 2, 2), InputTypeError, "four integers"),
])
def test_bad_inputs_raise_typed_errors(saliency: object, region: object, error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        gs.relevance_mass_accuracy(saliency, region)


@pytest.mark.parametrize(("tolerance", "error"), [(-1, InputError), (math.nan, InputError), ("2", InputTypeError),
                                                  (True, InputTypeError)])
def test_bad_tolerance(tolerance: object, error: type) -> None:
    with pytest.raises(error, match="tolerance"):
        gs.pointing_game(MAP, DIAGONAL, tolerance=tolerance)  # type: ignore[arg-type]
