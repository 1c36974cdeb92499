"""Tiny random torch models drawn by hypothesis, and independent references (finite differences).

The finite differences here call the torch module directly (never the backend under test), in float64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

FD_STEP = 1e-6


class Residual(nn.Module):
    """x + conv(relu(conv(x))): the residual add of a ResNet block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an MLP (``blocks`` empty, ``hidden`` widths) or a CNN (``blocks`` names)."""

    in_shape: tuple[int, ...]
    blocks: tuple[str, ...]
    hidden: tuple[int, ...]
    n_out: int
    seed: int


def _random_batch_norm(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():
        norm.running_mean.copy_(0.3 * torch.randn(channels, generator=generator))
        norm.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
        norm.weight.copy_(1.0 + 0.3 * torch.randn(channels, generator=generator))
        norm.bias.copy_(0.3 * torch.randn(channels, generator=generator))
    return norm


def build(spec: ModelSpec, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The model the spec describes, in eval mode, with seeded weights and batch-norm statistics."""
    generator = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    layers: list[nn.Module] = []
    if spec.blocks:
        channels, height, width = spec.in_shape
        for block in spec.blocks:
            if block == "conv_bn_relu":
                layers += [nn.Conv2d(channels, 3, 3, padding=1), _random_batch_norm(3, generator), nn.ReLU()]
                channels = 3
            elif block == "residual":
                layers.append(Residual(channels))
            elif block in ("maxpool", "avgpool") and min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2) if block == "maxpool" else nn.AvgPool2d(2))
                height, width = height // 2, width // 2
        layers += [nn.Flatten(), nn.Linear(channels * height * width, spec.n_out)]
    else:
        width_in = spec.in_shape[0]
        for width in spec.hidden:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        layers.append(nn.Linear(width_in, spec.n_out))
    return nn.Sequential(*layers).to(dtype).eval()


@st.composite
def model_specs(draw: st.DrawFn, kinds: tuple[str, ...] = ("mlp", "cnn")) -> ModelSpec:
    """Small MLPs and CNNs (conv, eval batch-norm, ReLU, max/avg pooling, residual add, linear)."""
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**16))
    n_out = draw(st.integers(1, 4))
    if kind == "mlp":
        hidden = tuple(draw(st.lists(st.integers(2, 8), min_size=1, max_size=3)))
        return ModelSpec((draw(st.integers(1, 6)),), (), hidden, n_out, seed)
    size = draw(st.integers(3, 6))
    blocks = draw(st.lists(st.sampled_from(["conv_bn_relu", "residual", "maxpool", "avgpool"]),
                           min_size=1, max_size=3))
    return ModelSpec((draw(st.integers(1, 2)), size, size), tuple(blocks), (), n_out, seed)


def random_input(spec: ModelSpec, n: int, seed: int, dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *spec.in_shape)).astype(dtype)


def torch_forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def fd_vjp(model: nn.Module, x: np.ndarray, cotangent: np.ndarray, step: float = FD_STEP) -> np.ndarray:
    """Central differences of <model(x), cotangent> in every input coordinate, all in one batch."""
    n, dim = len(x), int(np.prod(x.shape[1:]))
    flat = x.reshape(n, 1, dim)
    offsets = step * np.eye(dim)[None]
    plus = (flat + offsets).reshape(n * dim, *x.shape[1:])
    minus = (flat - offsets).reshape(n * dim, *x.shape[1:])
    outputs = torch_forward(model, np.concatenate([plus, minus]))
    diff = (outputs[: n * dim] - outputs[n * dim:]).reshape(n, dim, -1) / (2 * step)
    return np.einsum("ndk,nk->nd", diff, cotangent.reshape(n, -1)).reshape(x.shape)


def fd_jvp(model: nn.Module, x: np.ndarray, tangent: np.ndarray, step: float = FD_STEP) -> np.ndarray:
    """Central difference of the model along ``tangent``."""
    both = torch_forward(model, np.concatenate([x + step * tangent, x - step * tangent]))
    return (both[: len(x)] - both[len(x):]) / (2 * step)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5, atol_scale: float = 1e-6) -> None:
    """Allclose with an absolute tolerance scaled by the expected values' magnitude."""
    atol = atol_scale * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def model_state(model: nn.Module) -> dict[str, object]:
    """Everything a call must leave as it was: tensors, flags, modes, hooks, parameter grads."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, "_backward_pre_hooks", {})))
            for m in model.modules()
        ],
        "grad_hooks": [getattr(p, "_backward_hooks", None) for p in model.parameters()],
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key in ("requires_grad", "grads", "training", "hooks", "grad_hooks"):
        assert before[key] == after[key], key
    state_before, state_after = before["state"], after["state"]
    assert state_before.keys() == state_after.keys()
    for name, value in state_before.items():
        assert torch.equal(value, state_after[name]), name


def double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()
