"""Guided backprop and deconvnet (Springenberg et al. 2015) against the rule derived by hand.

For f(x) = W2 relu(W1 x + b1) + b2 and a cotangent v, let z = W1 x + b1 and R = W2^T v. Then
  standard:  J^T v = W1^T (R * [z > 0])
  guided:            W1^T (R * [R > 0] * [z > 0])
  deconvnet:         W1^T (R * [R > 0])
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch_helpers import assert_same_state, model_state

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend

RELU_CALLS = {
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu,
    "F.relu(inplace)": lambda: (lambda t: F.relu(t, inplace=True)),
    "F.relu_": lambda: F.relu_,
    "torch.relu": lambda: torch.relu,
    "Tensor.relu": lambda: (lambda t: t.relu()),
    "Tensor.relu_": lambda: (lambda t: t.relu_()),
}


class OneHidden(nn.Module):
    def __init__(self, n_in: int, n_hidden: int, n_out: int, relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden).double()
        self.fc2 = nn.Linear(n_hidden, n_out).double()
        self.relu = relu

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def hand_rule(model: OneHidden, x: np.ndarray, cotangent: np.ndarray, rule: str) -> np.ndarray:
    w1, b1 = model.fc1.weight.detach().numpy(), model.fc1.bias.detach().numpy()
    w2 = model.fc2.weight.detach().numpy()
    z = x @ w1.T + b1
    upstream = cotangent @ w2
    mask = {"standard": z > 0, "guided": (upstream > 0) & (z > 0), "deconvnet": upstream > 0}[rule]
    return (upstream * mask) @ w1


@pytest.mark.parametrize("relu_call", list(RELU_CALLS))
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rule_matches_the_hand_derivation_for_every_relu_spelling(rule, relu_call) -> None:
    torch.manual_seed(0)
    model = OneHidden(5, 7, 3, RELU_CALLS[relu_call]())
    rng = np.random.default_rng(0)
    x, cotangent = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    _, grad = TorchBackend(model).with_relu_rule(rule).vjp(x, cotangent)
    np.testing.assert_allclose(grad, hand_rule(model, x, cotangent, rule), rtol=1e-12, atol=1e-12)
    assert not np.allclose(grad, hand_rule(model, x, cotangent, "standard"))  # the rule changed something


@given(n_in=st.integers(1, 5), n_hidden=st.integers(1, 8), n_out=st.integers(1, 4), seed=st.integers(0, 10**6),
       rule=st.sampled_from(["standard", "guided", "deconvnet"]))
def test_rule_property_over_random_nets(n_in, n_hidden, n_out, seed, rule) -> None:
    torch.manual_seed(seed)
    model = OneHidden(n_in, n_hidden, n_out, nn.ReLU())
    rng = np.random.default_rng(seed)
    x, cotangent = rng.normal(size=(3, n_in)), rng.normal(size=(3, n_out))
    before = model_state(model)
    backend = TorchBackend(model)
    outputs, grad = backend.with_relu_rule(rule).vjp(x, cotangent)
    np.testing.assert_allclose(grad, hand_rule(model, x, cotangent, rule), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(outputs, backend.forward(x), rtol=1e-14)
    assert_same_state(before, model_state(model))
    # the mode is gone: the plain backend gives the true gradient again
    np.testing.assert_allclose(backend.vjp(x, cotangent)[1], hand_rule(model, x, cotangent, "standard"),
                               rtol=1e-10, atol=1e-12)


def test_guided_backprop_through_a_cnn_is_a_masked_gradient() -> None:
    # Guided backprop only ever zeroes what the true gradient would pass; with a single ReLU and a
    # one-hot cotangent into a positive linear head its result equals the true gradient.
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 3, padding=1).double()
    head = nn.Linear(2 * 4 * 4, 1).double()
    with torch.no_grad():
        head.weight.abs_()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4))
    backend = TorchBackend(model)
    cotangent = np.ones((2, 1))
    np.testing.assert_allclose(backend.with_relu_rule("guided").vjp(x, cotangent)[1],
                               backend.vjp(x, cotangent)[1], rtol=1e-12)


def test_model_without_relu_warns_that_nothing_changed() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = np.ones((1, 3), np.float32)
    with pytest.warns(UserWarning, match="No ReLU was intercepted"):
        TorchBackend(model).with_relu_rule("guided").vjp(x, np.ones((1, 2), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchBackend(nn.Sequential(nn.Linear(3, 4), nn.ReLU())).with_relu_rule("guided").vjp(
            x, np.ones((1, 4), np.float32))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_relus_cannot_be_rerouted() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(gs.UnsupportedModelError, match="eager"):
        TorchBackend(scripted).with_relu_rule("guided")
