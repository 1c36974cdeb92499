"""Guided backprop and deconvnet through three ReLUs, against the rule applied by hand at every ReLU.

f(x) = W4 r3, r_k = relu(z_k), z_k = W_k r_{k-1} + b_k (r_0 = x). Backwards from R_4 = v:
R_{k-1}' = W_k^T (R_k * mask_k), the mask being [z_k > 0] (standard), [R_k > 0][z_k > 0] (guided,
Springenberg et al. 2015) or [R_k > 0] (deconvnet). Weights and inputs are small integers set by hand,
so every value is exact in float64. The test first checks that this network tells the full rule apart
from the rule applied at one ReLU only (any one of the three), so that a rule skipped at a deeper ReLU
cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend

W1 = np.array([[1, -1, 2], [-2, 1, 1], [1, 2, -1], [0, -1, 1]], float)
B1 = np.array([0.5, -0.5, 0.5, 1.5])
W2 = np.array([[1, -2, 1, 1], [2, 1, -1, -1], [-1, 1, 2, -2], [1, 1, 1, 1]], float)
B2 = np.array([-0.5, 0.5, 0.5, -1.5])
W3 = np.array([[2, -1, 1, -1], [-1, 2, -1, 1], [1, 1, -2, 1]], float)
B3 = np.array([0.5, -0.5, 1.5])
W4 = np.array([[1, -2, 1], [-1, 1, 2]], float)
LAYERS = [(W1, B1), (W2, B2), (W3, B3)]
X = np.array([[1, 2, -1], [-2, 1, 1], [2, -1, 2], [0.5, 1.5, -0.5]])
V = np.array([[1, -1], [-1, 2], [2, 1], [1, 1]], float)


class ThreeReLUs(nn.Module):
    """Three ReLUs, each called another way (module, functional, in place), as real models mix them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(w.shape[1], w.shape[0]).double() for w, _ in LAYERS)
        self.head = nn.Linear(3, 2, bias=False).double()
        with torch.no_grad():
            for layer, (w, b) in zip((self.fc1, self.fc2, self.fc3), LAYERS, strict=True):
                layer.weight.copy_(torch.tensor(w))
                layer.bias.copy_(torch.tensor(b))
            self.head.weight.copy_(torch.tensor(W4))
        self.relu = nn.ReLU()

    def forward(self, x):
        r1 = self.relu(self.fc1(x))
        r2 = F.relu(self.fc2(r1))
        r3 = self.fc3(r2).relu_()
        return self.head(r3)


def rule_by_hand(x: np.ndarray, v: np.ndarray, rules: tuple[str, str, str]) -> np.ndarray:
    """J^T v with ``rules[k]`` at ReLU k+1 (NumPy, float64)."""
    pre_activations, r = [], x
    for w, b in LAYERS:
        z = r @ w.T + b
        pre_activations.append(z)
        r = np.maximum(z, 0)
    upstream = v @ W4
    for (w, _), z, rule in zip(reversed(LAYERS), reversed(pre_activations), reversed(rules), strict=True):
        mask = {"standard": z > 0, "guided": (upstream > 0) & (z > 0), "deconvnet": upstream > 0}[rule]
        upstream = (upstream * mask) @ w
    return upstream


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_network_separates_the_rule_at_each_relu(rule: str) -> None:
    """The full rule differs from the rule at any single ReLU, the others standard, and from the plain
    gradient: the network below can see a rule skipped anywhere."""
    full = rule_by_hand(X, V, (rule,) * 3)
    for only in range(3):
        partial = tuple(rule if k == only else "standard" for k in range(3))
        assert np.abs(full - rule_by_hand(X, V, partial)).max() >= 1.0, f"rule at ReLU {only + 1} only"
    for skipped in range(3):
        partial = tuple("standard" if k == skipped else rule for k in range(3))
        assert np.abs(full - rule_by_hand(X, V, partial)).max() >= 1.0, f"rule skipped at ReLU {skipped + 1}"


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_torch_rule_at_every_relu(rule: str) -> None:
    model = ThreeReLUs()
    outputs, grad = TorchBackend(model).with_relu_rule(rule).vjp(X, V)
    np.testing.assert_allclose(grad, rule_by_hand(X, V, (rule,) * 3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outputs, model(torch.tensor(X)).detach().numpy(), rtol=1e-14)


def test_torch_methods_at_every_relu() -> None:
    """gs.guided_backprop / gs.deconvnet with per-sample targets: v is the one-hot of the target."""
    model, targets = ThreeReLUs(), np.array([0, 1, 1, 0])
    one_hot = np.eye(2)[targets]
    np.testing.assert_allclose(gs.guided_backprop(model, X, targets),
                               rule_by_hand(X, one_hot, ("guided",) * 3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gs.deconvnet(model, X, targets),
                               rule_by_hand(X, one_hot, ("deconvnet",) * 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["guided", "deconvnet", "standard"])
def test_onnx_rule_at_every_relu(rule: str) -> None:
    """The same network as an ONNX graph (MatMul, Add, Relu) through OnnxBackend.with_relu_rule."""
    pytest.importorskip("onnxruntime")
    helper = pytest.importorskip("onnx.helper")
    numpy_helper = pytest.importorskip("onnx.numpy_helper")
    from gradsal.backends.onnx import OnnxBackend

    nodes, initializers, previous = [], [], "x"
    for k, (w, b) in enumerate(LAYERS, start=1):
        initializers += [numpy_helper.from_array(w.T.copy(), f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes += [helper.make_node("MatMul", [previous, f"w{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"z{k}"]),
                  helper.make_node("Relu", [f"z{k}"], [f"r{k}"])]
        previous = f"r{k}"
    initializers.append(numpy_helper.from_array(W4.T.copy(), "w4"))
    nodes.append(helper.make_node("MatMul", [previous, "w4"], ["y"]))
    graph = helper.make_graph(nodes, "three_relus", [helper.make_tensor_value_info("x", 11, ["batch", 3])],
                              [helper.make_tensor_value_info("y", 11, ["batch", 2])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    backend = OnnxBackend(model)
    _, grad = (backend if rule == "standard" else backend.with_relu_rule(rule)).vjp(X, V)
    np.testing.assert_allclose(grad, rule_by_hand(X, V, (rule,) * 3), rtol=1e-12, atol=1e-12)
