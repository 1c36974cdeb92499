"""No side effects: after any backend call the model and the input are exactly as they were."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch_helpers import assert_same_state, build, model_specs, model_state, random_input

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend

CALLS = ("forward", "vjp", "jvp", "layer_vjp", "guided", "deconvnet", "randomized", "bad_cotangent")


def _call(backend: TorchBackend, name: str, x: np.ndarray, n_out: int) -> None:
    cotangent = np.ones((len(x), n_out))
    if name == "forward":
        backend.forward(x)
    elif name == "vjp":
        backend.vjp(x, cotangent)
    elif name == "jvp":
        backend.jvp(x, np.ones_like(x))
    elif name == "layer_vjp":
        backend.layer_vjp(x, "0", cotangent)
    elif name in ("guided", "deconvnet"):
        backend.with_relu_rule(name).vjp(x, cotangent)
    elif name == "randomized":
        weighted = [n for n, m in backend.model.named_children() if any(True for _ in m.parameters())]
        backend.randomized(weighted[:1], seed=3).vjp(x, cotangent)
    else:  # an error raised in the middle of a call must restore everything too
        with pytest.raises(gs.InputError):
            backend.vjp(x, np.ones((len(x), n_out + 1)))


@given(spec=model_specs(), call=st.sampled_from(CALLS), train=st.booleans(),
       frozen=st.lists(st.booleans(), min_size=8, max_size=8), hook=st.booleans(),
       batch_size=st.sampled_from([None, 1]))
def test_calls_leave_model_and_input_unchanged(spec, call, train, frozen, hook, batch_size) -> None:
    model = build(spec)
    if train:
        model.train()
        model.append(nn.Dropout(0.1))
    for param, off in zip(model.parameters(), frozen, strict=False):
        param.requires_grad_(not off)
    if hook:
        model[0].register_forward_hook(lambda module, inputs, output: None)
    x = random_input(spec, 2, spec.seed)
    x_before = x.copy()
    before = model_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training-mode and no-ReLU warnings are tested elsewhere
        try:
            _call(TorchBackend(model, batch_size=batch_size), call, x, spec.n_out)
        except gs.BackendError as exc:  # batch-norm in training mode refuses one value per channel
            assert train and "more than 1 value per channel" in str(exc)
    assert_same_state(before, model_state(model))
    np.testing.assert_array_equal(x, x_before)
    assert x.flags.writeable


class _InplaceOnInput(nn.Module):
    """Writes to its input: gradsal must hand it a private copy, not the user's array."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x.clamp_(min=0))


def test_model_writing_to_its_input_never_writes_to_the_users_array() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    x_before = x.copy()
    backend = TorchBackend(_InplaceOnInput())
    backend.forward(x)
    backend.jvp(x, np.ones_like(x))
    backend.layer_vjp(x, "linear", np.ones((4, 2), np.float32))
    with pytest.raises(gs.BackendError, match="in-place"):  # autograd refuses in-place on the input leaf
        backend.vjp(x, np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(x, x_before)


def test_identity_model_output_does_not_alias_the_input() -> None:
    x = np.ones((2, 3), np.float32)
    outputs, _ = TorchBackend(lambda t: t).vjp(x, np.ones_like(x))
    outputs[...] = 5
    assert (x == 1).all()


def test_read_only_and_strided_inputs_are_accepted() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    base = np.random.default_rng(1).normal(size=(4, 6))
    strided = base[::2, ::2]
    read_only = strided.copy()
    read_only.flags.writeable = False
    expected = strided @ model.weight.detach().numpy().T + model.bias.detach().numpy()
    for x in (strided, read_only, strided.astype(">f8")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_allclose(TorchBackend(model).forward(x), expected, rtol=1e-13)
