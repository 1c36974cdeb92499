"""The same checks through TorchBackend and OnnxBackend on the shipped digits CNN give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sanity_models import edge_explanation

pytest.importorskip("torch.nn")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend
from gradsal.backends.torch import TorchBackend
from gradsal.core.faithfulness import deletion_curve, insertion_curve
from gradsal.core.sanity import compare_methods, input_invariance, model_randomization_test
from gradsal.reference_models import holdout_split, load_digits_cnn

# The same layers, top to bottom: torch module names and the ONNX export's node names.
TORCH_LAYERS = ["classifier", "block3.0", "block2.0", "block1.0"]
ONNX_LAYERS = ["/classifier/Gemm", "/block3/block3.0/Conv", "/block2/block2.0/Conv", "/block1/block1.0/Conv"]


@pytest.fixture(scope="module")
def backends() -> dict[str, gs.GradientBackend]:
    return {"torch": TorchBackend(load_digits_cnn("torch")), "onnx": OnnxBackend(load_digits_cnn("onnx"))}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return holdout_split("digits_cnn")[0][:6]


def test_gradient_maps_agree(backends: dict, digits: np.ndarray) -> None:
    torch_map = gs.to_saliency_map(gs.vanilla_gradient(backends["torch"], digits))
    onnx_map = gs.to_saliency_map(gs.vanilla_gradient(backends["onnx"], digits))
    np.testing.assert_allclose(onnx_map, torch_map, atol=1e-5)


@pytest.mark.parametrize("score", ["explained", "probability"])
def test_deletion_and_insertion_aucs_agree(backends: dict, digits: np.ndarray, score: str) -> None:
    """Each backend ranks pixels by its own gradient map and scores with its own forward pass."""
    results = {}
    for name, backend in backends.items():
        saliency = gs.to_saliency_map(gs.vanilla_gradient(backend, digits))
        results[name] = (deletion_curve(backend, digits, saliency, score=score),
                         insertion_curve(backend, digits, saliency, score=score))
    for torch_curve, onnx_curve in zip(results["torch"], results["onnx"], strict=True):
        np.testing.assert_array_equal(torch_curve.fractions, onnx_curve.fractions)
        np.testing.assert_allclose(onnx_curve.scores, torch_curve.scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(onnx_curve.auc, torch_curve.auc, rtol=1e-4, atol=1e-5)


def test_compare_methods_tables_agree(backends: dict, digits: np.ndarray) -> None:
    tables = {name: compare_methods(backend, digits, methods=["vanilla_gradient", "integrated_gradients"],
                                    method_kwargs={"integrated_gradients": {"n_steps": 16}}, score="probability")
              for name, backend in backends.items()}
    for torch_row, onnx_row in zip(tables["torch"].rows, tables["onnx"].rows, strict=True):
        assert torch_row.method == onnx_row.method
        assert onnx_row.deletion.mean_auc == pytest.approx(torch_row.deletion.mean_auc, rel=1e-4, abs=1e-6)
        assert onnx_row.insertion.mean_auc == pytest.approx(torch_row.insertion.mean_auc, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(("name", "layers"), [("torch", TORCH_LAYERS), ("onnx", ONNX_LAYERS)])
def test_randomisation_flags_edges_and_passes_the_gradient(backends: dict, digits: np.ndarray, name: str,
                                                           layers: list[str]) -> None:
    edges = model_randomization_test(backends[name], digits, edge_explanation, layers=layers)
    assert edges.flagged and edges.summary_spearman == pytest.approx(1.0)
    gradient = model_randomization_test(backends[name], digits, "vanilla_gradient", layers=layers)
    assert not gradient.flagged, gradient.to_text()
    assert gradient.steps[-1].mean_spearman < gradient.steps[0].mean_spearman  # more layers, less similarity


@pytest.mark.parametrize(("name", "cam_layer"), [("torch", "block3.2"), ("onnx", "/block3/block3.2/Relu_output_0")])
def test_input_invariance_on_the_reference_cnn(backends: dict, digits: np.ndarray, name: str, cam_layer: str) -> None:
    """Kindermans et al. (2017): float32 model, shift 0.3 (not exact in binary), ReLUs and max-pooling."""
    backend = backends[name]
    for method, options in [("vanilla_gradient", None), ("guided_backprop", None), ("grad_cam", {"layer": cam_layer})]:
        assert input_invariance(backend, digits, method, shift=0.3, method_kwargs=options).invariant, method
    for method in ("gradient_x_input", "integrated_gradients"):
        assert not input_invariance(backend, digits, method, shift=0.3).invariant, method
    moved = input_invariance(backend, digits, "integrated_gradients", shift=0.3,
                             method_kwargs={"n_steps": 16}, shifted_method_kwargs={"n_steps": 16, "baseline": 0.3})
    assert moved.invariant, moved
