"""``randomized``: a re-initialised copy of the named layers, the original model and global RNG untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_same_state, model_state

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend


class _ScaleOnly(nn.Module):
    """A module whose parameter has no ``reset_parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x):
        return x * self.scale


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _ScaleOnly())
    return nn.Sequential(features, nn.Linear(4, 2)).double()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_named_layers_change_and_nothing_else() -> None:
    model = _model()
    before = model_state(model)
    rng_state = torch.random.get_rng_state()
    backend = TorchBackend(model)
    twin = backend.randomized(["0"], seed=7)
    assert_same_state(before, model_state(model))
    assert torch.equal(rng_state, torch.random.get_rng_state())
    old, new = _weights(model), _weights(twin.model)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"0.0.weight", "0.0.bias", "0.2.scale"}
    x = np.random.default_rng(0).normal(size=(2, 3))
    assert not np.allclose(twin.forward(x), backend.forward(x))


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    backend = TorchBackend(_model())
    first = _weights(backend.randomized(["1"], seed=1).model)
    again = _weights(backend.randomized(["1"], seed=1).model)
    other = _weights(backend.randomized(["1"], seed=2).model)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["1.weight"], other["1.weight"])


def test_randomized_keeps_the_backend_settings() -> None:
    """The twin selects the same output, runs in the same row chunks, the same dtype and on the same
    device, and its VJP pulls the cotangent back through that selected output of ITS model."""
    backend = TorchBackend(_model(), output=lambda out: out[:, :1], batch_size=1)
    twin = backend.randomized(["1"], seed=0)
    x = np.random.default_rng(1).normal(size=(3, 3))
    rows: list[int] = []
    handle = twin.model.register_forward_pre_hook(lambda _m, inputs: rows.append(len(inputs[0])))
    try:
        outputs = twin.forward(x)
        _, grad = twin.vjp(x, np.full((3, 1), 2.0))
    finally:
        handle.remove()
    assert rows == [1] * 6  # batch_size=1: three one-row chunks per call
    xt = torch.tensor(x, requires_grad=True)
    selected = twin.model(xt)[:, :1]
    np.testing.assert_array_equal(outputs, selected.detach().numpy())
    assert outputs.dtype == np.float64
    np.testing.assert_allclose(grad, torch.autograd.grad(selected, xt, torch.full((3, 1), 2.0, dtype=torch.float64))[0],
                               rtol=1e-14)
    assert twin.device == backend.device
    assert not np.allclose(outputs, backend.forward(x))  # the twin's own (randomised) model


def test_bad_layer_names() -> None:
    backend = TorchBackend(_model())
    with pytest.raises(gs.ModelError, match="Close matches"):
        backend.randomized(["0.00"], seed=0)
    with pytest.raises(gs.ModelError, match="no parameters"):
        backend.randomized(["0.1"], seed=0)
