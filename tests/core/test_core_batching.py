"""Chunking: every chunk size gives bit-identical results, calls never exceed batch_size, the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import CamNet, ReluNet
from hypothesis import given
from hypothesis import strategies as st

import gradsal.core as gs
from gradsal.core.batching import default_batch_size, stacked_chunks


class RowwiseNet:
    """f(x) = tanh(x W1) W2 with products written as broadcast-and-sum, so each row's arithmetic is the same
    whatever the batch size (a BLAS matrix product may round differently for another number of rows)."""

    def __init__(self, d: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.W1, self.W2 = rng.normal(size=(d, 6)), rng.normal(size=(6, 3))
        self.rows: list[int] = []

    def _hidden(self, x):
        return np.tanh((x.reshape(len(x), -1, 1) * self.W1).sum(axis=1))

    def forward(self, x):
        self.rows.append(len(x))
        return (self._hidden(x)[:, :, None] * self.W2).sum(axis=1)

    def vjp(self, x, cotangent):
        self.rows.append(len(x))
        h = self._hidden(x)
        back = (cotangent[:, None, :] * self.W2).sum(axis=2) * (1 - h**2)
        return (h[:, :, None] * self.W2).sum(axis=1), (back[:, None, :] * self.W1).sum(axis=2).reshape(x.shape)


METHODS = {
    "vanilla": lambda b, x, t, bs: gs.vanilla_gradient(b, x, t, batch_size=bs),
    "gradient_x_input": lambda b, x, t, bs: gs.gradient_x_input(b, x, t, batch_size=bs),
    "smoothgrad": lambda b, x, t, bs: gs.smoothgrad(b, x, t, n_samples=5, seed=3, batch_size=bs),
    "smoothgrad_sq": lambda b, x, t, bs: gs.smoothgrad(b, x, t, n_samples=5, seed=3, kind="smoothgrad_sq",
                                                       batch_size=bs),
    "vargrad": lambda b, x, t, bs: gs.smoothgrad(b, x, t, n_samples=5, seed=3, kind="vargrad", batch_size=bs),
    "ig": lambda b, x, t, bs: gs.integrated_gradients(b, x, t, n_steps=4, batch_size=bs, return_delta=True),
    "ig_uniform": lambda b, x, t, bs: gs.integrated_gradients(b, x, t, n_steps=3, baseline="uniform", seed=1,
                                                              method="riemann_trapezoid", batch_size=bs),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@given(n=st.integers(1, 5), batch_size=st.integers(1, 12), seed=st.integers(0, 99))
def test_chunked_equals_unchunked_bit_for_bit(method, n, batch_size, seed) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 2, 2))
    net = RowwiseNet(4, seed)
    whole = METHODS[method](net, x, None, 10**6)
    net.rows.clear()
    chunked = METHODS[method](net, x, None, batch_size)
    assert max(net.rows) <= batch_size
    for a, b in zip(whole if isinstance(whole, tuple) else [whole],
                    chunked if isinstance(chunked, tuple) else [chunked], strict=True):
        np.testing.assert_array_equal(a, b)


def test_smoothgrad_feeds_all_noisy_rows_in_bounded_chunks() -> None:
    net = RowwiseNet(4, 0)
    x = np.random.default_rng(0).normal(size=(7, 4))
    gs.smoothgrad(net, x, 0, n_samples=500, seed=0, batch_size=64)
    vjp_rows = net.rows[1:]  # the first call is the forward probe for the output shape
    assert sum(vjp_rows) == 7 * 500 and max(vjp_rows) == 64


def test_grad_cam_and_guided_backprop_chunk_invariant() -> None:
    rng = np.random.default_rng(1)
    cam_net = CamNet(rng.normal(size=(3, 2)), rng.normal(size=(3, 4)))
    x = rng.normal(size=(5, 2, 4, 4))
    whole = gs.grad_cam(cam_net, x, layer="features")
    cam_net.calls.clear()
    np.testing.assert_array_equal(gs.grad_cam(cam_net, x, layer="features", batch_size=2), whole)
    assert max(rows for _, rows in cam_net.calls) <= 2
    relu_net = ReluNet(rng.normal(size=(32, 5)), rng.normal(size=(5, 3)))
    np.testing.assert_allclose(gs.guided_backprop(relu_net, x, batch_size=2), gs.guided_backprop(relu_net, x),
                               rtol=1e-12, atol=1e-14)


def test_stacked_chunks_cover_every_row_once_in_copy_major_order() -> None:
    for n, copies, size in [(3, 4, 5), (1, 1, 1), (4, 2, 100), (5, 3, 1)]:
        seen = [(s.copy, i) for chunk in stacked_chunks(n, copies, size) for s in chunk for i in range(s.start, s.stop)]
        assert seen == [(c, i) for c in range(copies) for i in range(n)]
        assert all(sum(s.rows for s in chunk) <= size for chunk in stacked_chunks(n, copies, size))


def test_memory_budget_sets_the_default_batch_size() -> None:
    original = gs.get_memory_budget()
    assert original == 512 * 2**20
    row = 3 * 224 * 224 * 4
    assert default_batch_size(row) == max(1, original // (row * 32))
    with gs.memory_budget(1):
        assert default_batch_size(row) == 1
        net = RowwiseNet(4, 0)
        gs.smoothgrad(net, np.ones((3, 4)), 0, n_samples=4, seed=0)
        assert set(net.rows) == {1}
    assert gs.get_memory_budget() == original
    try:
        gs.set_memory_budget(row * 32 * 10)
        assert default_batch_size(row) == 10
    finally:
        gs.set_memory_budget(original)


def test_memory_budget_restored_after_an_exception() -> None:
    original = gs.get_memory_budget()
    with pytest.raises(RuntimeError), gs.memory_budget(1024):
        raise RuntimeError
    assert gs.get_memory_budget() == original


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1GB", True])
def test_bad_budgets(bad) -> None:
    with pytest.raises(gs.GradsalError, match="memory budget"):
        gs.set_memory_budget(bad)
