"""Model randomisation (Adebayo 2018), input invariance (Kindermans 2017), IG completeness, compare_methods."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sanity_models import Blobs, QuadrantNet, RandomizableMLP, affine_backend, edge_explanation
from scipy import stats

import gradsal.core as gs
from gradsal.core import BackendError, InputError, MissingCapabilityError
from gradsal.core.sanity import (
    compare_methods,
    completeness,
    input_invariance,
    model_randomization_test,
    shifted_backend,
)

SIZE = 12


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    return Blobs.make(4, SIZE).images


@pytest.fixture(scope="module")
def mlp() -> RandomizableMLP:
    return RandomizableMLP.random(SIZE * SIZE, seed=0)


# ----------------------------------------------------------------------------- randomisation
def test_an_input_edge_detector_is_flagged_and_the_gradient_passes(blobs: np.ndarray, mlp: RandomizableMLP) -> None:
    edges = model_randomization_test(mlp, blobs, edge_explanation, layers=list(mlp.LAYERS))
    assert edges.flagged
    for step in edges.steps:
        np.testing.assert_allclose(step.spearman, 1.0)
        np.testing.assert_allclose(step.ssim, 1.0)
    gradient = model_randomization_test(mlp, blobs, "vanilla_gradient", layers=list(mlp.LAYERS))
    assert not gradient.flagged
    assert gradient.summary_spearman < 0.5
    assert [s.randomized_layers for s in gradient.steps] == [("dense2",), ("dense2", "dense1")]


def test_step_numbers_are_spearman_and_ssim_of_the_two_maps(blobs: np.ndarray, mlp: RandomizableMLP) -> None:
    """Recompute one step independently: gradients by hand, scipy's Spearman of max_c |g|."""
    result = model_randomization_test(mlp, blobs, "vanilla_gradient", 1, layers=["dense2"], seed=3)
    cotangent = np.tile(np.eye(3)[1], (len(blobs), 1))
    original = np.abs(mlp.vjp(blobs, cotangent)[1]).max(axis=1)
    randomized = np.abs(mlp.randomized(["dense2"], 3).vjp(blobs, cotangent)[1]).max(axis=1)
    expected = [stats.spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(original, randomized, strict=True)]
    np.testing.assert_allclose(result.steps[0].spearman, expected, atol=1e-12)
    scaled = (randomized - randomized.min(axis=(1, 2), keepdims=True)) / np.ptp(randomized, axis=(1, 2),
                                                                               keepdims=True)
    np.testing.assert_allclose(result.steps[0].map, scaled, atol=1e-12)
    assert result.steps[0].ssim.shape == (len(blobs),)


def test_independent_mode_randomises_one_layer_at_a_time(blobs: np.ndarray, mlp: RandomizableMLP) -> None:
    result = model_randomization_test(mlp, blobs, edge_explanation, layers=["dense1", "dense2"], mode="independent")
    assert [s.randomized_layers for s in result.steps] == [("dense1",), ("dense2",)]
    assert result.flagged
    gradient = model_randomization_test(mlp, blobs, layers=["dense1", "dense2"], mode="independent")
    assert gradient.summary_spearman == pytest.approx(min(s.mean_spearman for s in gradient.steps))
    assert "dense1" in gradient.to_text() and gradient.as_dict()["mode"] == "independent"


def test_the_target_is_resolved_on_the_original_model(blobs: np.ndarray, mlp: RandomizableMLP) -> None:
    seen = []

    def recorder(backend: object, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        seen.append(np.array(target))
        return edge_explanation(backend, x, target)

    model_randomization_test(mlp, blobs, recorder, layers=list(mlp.LAYERS))
    predicted = np.eye(3)[mlp.forward(blobs).argmax(axis=1)]
    for target in seen:
        np.testing.assert_array_equal(target, predicted)


def test_randomisation_needs_the_capability(blobs: np.ndarray) -> None:
    with pytest.raises(MissingCapabilityError, match="randomized"):
        model_randomization_test(affine_backend(np.ones((SIZE * SIZE, 2)), np.zeros(2)), blobs, layers=["x"])


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"layers": []}, InputError), ({"layers": [3]}, InputError), ({"mode": "sequential"}, InputError),
    ({"threshold": 2.0}, InputError), ({"method": "lrp"}, InputError), ({"layers": ["dense9"]}, BackendError),
])
def test_bad_randomisation_arguments(blobs: np.ndarray, mlp: RandomizableMLP, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        model_randomization_test(mlp, blobs, **{"layers": ["dense1"], **kwargs})


def test_a_small_torch_cnn_passes_with_the_gradient_and_fails_with_edges(blobs: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from gradsal.backends.torch import TorchBackend

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 3)).double()
    backend = TorchBackend(model)
    layers = ["5", "2", "0"]
    assert model_randomization_test(backend, blobs, edge_explanation, layers=layers).flagged
    gradient = model_randomization_test(backend, blobs, layers=layers)
    assert not gradient.flagged, gradient.to_text()


# ----------------------------------------------------------------------------- input invariance
@pytest.fixture(scope="module")
def quadrant() -> tuple[gs.GradientBackend, np.ndarray]:
    net = QuadrantNet.random((2, 8, 8), seed=2)
    return net.backend(), np.random.default_rng(2).random((3, 2, 8, 8))


def test_shifted_backend_computes_f_of_x_minus_c(quadrant: tuple) -> None:
    backend, x = quadrant
    shifted = shifted_backend(backend, 0.75)
    np.testing.assert_allclose(shifted.forward(x + 0.75), backend.forward(x), rtol=1e-12)
    cotangent = np.ones((len(x), 4))
    np.testing.assert_allclose(shifted.vjp(x + 0.75, cotangent)[1], backend.vjp(x, cotangent)[1], rtol=1e-12)


def test_kindermans_invariance_claims(quadrant: tuple) -> None:
    backend, x = quadrant
    shift = np.array([0.5, -1.0]).reshape(2, 1, 1)  # per channel
    assert input_invariance(backend, x, "vanilla_gradient", shift=shift).invariant
    # SmoothGrad's noise scale is each sample's value range: a scalar shift keeps it, a per-channel one need not
    assert input_invariance(backend, x, "smoothgrad", shift=0.5, method_kwargs={"n_samples": 4}).invariant
    product = input_invariance(backend, x, "gradient_x_input", shift=shift)
    assert not product.invariant
    gradient = gs.vanilla_gradient(backend, x)
    assert product.max_abs_difference == pytest.approx(np.abs(gradient * shift).max())  # (x + c) g - x g = c g
    zero_baseline = input_invariance(backend, x, "integrated_gradients", shift=shift)
    assert not zero_baseline.invariant
    moved_baseline = input_invariance(backend, x, "integrated_gradients", shift=shift,
                                      method_kwargs={"baseline": 0.0},
                                      shifted_method_kwargs={"baseline": np.broadcast_to(shift, x.shape[1:])})
    assert moved_baseline.invariant
    assert moved_baseline.as_dict()["invariant"] is True


def test_bad_shift_is_rejected(quadrant: tuple) -> None:
    backend, x = quadrant
    with pytest.raises(InputError, match="broadcast"):
        input_invariance(backend, x, shift=np.zeros(5))


# ----------------------------------------------------------------------------- completeness
def test_completeness_is_exact_on_an_affine_model_and_reports_the_gain() -> None:
    rng = np.random.default_rng(4)
    A, c = rng.normal(size=(6, 3)), rng.normal(size=3)
    x = rng.random((5, 6))
    result = completeness(affine_backend(A, c), x, 0, n_steps=2)
    assert result.passed
    np.testing.assert_allclose(result.output_gain, x @ A[:, 0], rtol=1e-10)  # S(x) - S(0)
    np.testing.assert_allclose(result.delta, 0.0, atol=1e-10)


def test_completeness_fails_with_too_few_steps_on_a_curved_model() -> None:
    net = QuadrantNet.random((1, 8, 8), hidden=4, seed=5)
    x = 4 * np.random.default_rng(5).random((3, 1, 8, 8))
    coarse = completeness(net.backend(), x, method="riemann_left", n_steps=1, rtol=1e-3)
    fine = completeness(net.backend(), x, n_steps=64, rtol=1e-3)
    assert not coarse.passed and fine.passed
    assert (fine.relative_gap < coarse.relative_gap).all()


# ----------------------------------------------------------------------------- compare_methods
def test_compare_methods_table(blobs: np.ndarray, mlp: RandomizableMLP) -> None:
    result = compare_methods(mlp, blobs, methods={"gradient": "vanilla_gradient", "edges": edge_explanation,
                                                  "ig": "integrated_gradients"},
                             method_kwargs={"ig": {"n_steps": 8}}, layers=list(mlp.LAYERS), step=0.1)
    table = result.as_dict()
    assert [row["method"] for row in table["methods"]] == ["gradient", "edges", "ig", "random ranking"]
    rows = {row["method"]: row for row in table["methods"]}
    assert rows["edges"]["randomization_flagged"] is True
    assert rows["gradient"]["randomization_flagged"] is False
    assert rows["random ranking"]["randomization_spearman"] is None
    for row in table["methods"]:
        assert row["time_s"] >= 0
        assert np.isfinite(row["deletion_auc"]) and np.isfinite(row["insertion_auc"])
    text = result.to_text()
    assert "FLAGGED" in text and "deletion AUC" in text and len(text.splitlines()) == 6
    expected = gs.vanilla_gradient(mlp, blobs)
    gradient_row = result.rows[0]
    from gradsal.core.faithfulness import deletion_curve
    np.testing.assert_allclose(gradient_row.deletion.auc, deletion_curve(mlp, blobs, expected, step=0.1).auc)


def test_compare_methods_without_randomisation_notes_why(quadrant: tuple) -> None:
    backend, x = quadrant
    result = compare_methods(backend, x, methods=["vanilla_gradient"], layers=["dense1"], random_reference=False)
    assert len(result.rows) == 1 and result.rows[0].randomization is None
    assert "randomisation skipped" in result.to_text()


def test_compare_methods_rejects_repeated_labels(quadrant: tuple) -> None:
    backend, x = quadrant
    with pytest.raises(InputError, match="repeated"):
        compare_methods(backend, x, methods=["vanilla_gradient", "vanilla_gradient"])
    with pytest.raises(InputError):
        compare_methods(backend, x, methods=[])


def test_tabular_inputs_work_end_to_end() -> None:
    """(N, F) input: features are the units, maps stay (N, F), SSIM runs along the feature axis."""
    mlp = RandomizableMLP.random(20, seed=1)
    x = np.random.default_rng(1).normal(size=(5, 20))
    x_copy = x.copy()
    result = compare_methods(mlp, x, methods=["vanilla_gradient", "gradient_x_input"], layers=["dense2", "dense1"],
                             deletion_baseline="mean", insertion_baseline=0.0, step=0.1)
    assert [row.method for row in result.rows] == ["vanilla_gradient", "gradient_x_input", "random ranking"]
    for row in result.rows[:2]:
        assert row.randomization is not None
        assert all(np.isfinite(step.ssim).all() for step in row.randomization.steps)
        assert row.deletion.scores.shape == (5, 11)
    np.testing.assert_array_equal(x, x_copy)


def test_importing_the_checks_imports_no_framework() -> None:
    code = ("import sys, gradsal.core.sanity, gradsal.core.faithfulness; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
