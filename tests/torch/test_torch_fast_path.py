"""TorchBackend's opt-in fast path (autocast, channels-last, torch.compile) and batch_size="auto".

Fidelity is measured as issue 7 states it: the Spearman rank correlation, per image, of the fast path's
saliency maps with the fp32 maps on the shipped digits CNN, at least 0.99. On a CPU without bf16 hardware
``fast=True`` means channels-last only, so the bf16 part is forced with ``dtype=`` (emulated, slow but
exact in what it computes) and torch.compile is exercised with the ``aot_eager`` backend (AOTAutograd's
forward/backward split without a C++ compiler); the CUDA test runs the real thing where a GPU exists.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import assert_same_state, model_state

import gradsal.core as gs
from gradsal.backends.torch import FastPathFidelityWarning, TorchBackend
from gradsal.reference_models import holdout_split, load_digits_cnn

N_IMAGES = 6
MIN_SPEARMAN = 0.99


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable").astype(np.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def _min_map_spearman(result: np.ndarray, reference: np.ndarray) -> float:
    maps, ref_maps = gs.to_saliency_map(result), gs.to_saliency_map(reference)
    return min(_spearman(m, r) for m, r in zip(maps, ref_maps, strict=True))


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    x, labels = holdout_split("digits_cnn")
    return load_digits_cnn(), x[:N_IMAGES], labels[:N_IMAGES]


METHODS = {
    "vanilla": lambda backend, x, t: gs.vanilla_gradient(backend, x, t),
    "smoothgrad": lambda backend, x, t: gs.smoothgrad(backend, x, t, n_samples=8, seed=0),
    "ig": lambda backend, x, t: gs.integrated_gradients(backend, x, t, n_steps=8),
}
CPU_FAST = {
    "bf16": dict(fast=True, dtype=torch.bfloat16),
    "bf16+compile": dict(fast=True, dtype=torch.bfloat16, compile={"backend": "aot_eager"}),
    "fast": dict(fast=True),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("config", list(CPU_FAST))
def test_fast_path_maps_match_fp32(digits, method: str, config: str) -> None:
    model, x, labels = digits
    reference = METHODS[method](TorchBackend(model), x, labels)
    result = METHODS[method](TorchBackend(model, **CPU_FAST[config]), x, labels)
    assert result.dtype == np.float32 and result.shape == x.shape and result.flags.c_contiguous
    assert _min_map_spearman(result, reference) >= MIN_SPEARMAN


def test_float32_layers_are_what_keeps_bf16_faithful(digits) -> None:
    """bf16 everywhere reroutes max-pool gradients; "auto" keeps the layers up to the last max-pool in fp32."""
    model, x, labels = digits
    reference = gs.vanilla_gradient(TorchBackend(model), x, labels)
    everywhere = gs.vanilla_gradient(TorchBackend(model, dtype=torch.bfloat16), x, labels)
    backend = TorchBackend(model, dtype=torch.bfloat16, float32_layers="auto")
    kept = gs.vanilla_gradient(backend, x, labels)
    assert _min_map_spearman(kept, reference) >= MIN_SPEARMAN > _min_map_spearman(everywhere, reference)
    names = [name for name, m in backend.model.named_modules() if hasattr(m, "_gradsal_autocast_device")]
    assert names == ["block1.0", "block1.1", "block1.2", "block1.3", "block2.0", "block2.1", "block2.2", "block2.3"]
    assert [n for n, _ in backend.model.named_modules()] == [n for n, _ in model.named_modules()]
    assert type(backend.model.block1[0]).__name__ == "Conv2d"


@pytest.mark.parametrize("config", list(CPU_FAST))
def test_fast_path_leaves_the_model_untouched(digits, config: str) -> None:
    model, x, labels = digits
    before = model_state(model)
    classes = [type(m) for m in model.modules()]
    strides = {name: p.stride() for name, p in model.named_parameters()}
    backend = TorchBackend(model, **CPU_FAST[config])
    gs.smoothgrad(backend, x, labels, n_samples=2, seed=0)
    gs.grad_cam(backend, x, labels, layer="block3")
    backend.jvp(x, np.ones_like(x))
    backend.with_relu_rule("guided").vjp(x, np.eye(10, dtype=np.float32)[labels])
    backend.randomized(["block3.0"], seed=1).vjp(x, np.eye(10, dtype=np.float32)[labels])
    assert backend.model is not model  # channels-last and float32 layers work on a copy
    assert_same_state(before, model_state(model))
    assert [type(m) for m in model.modules()] == classes
    assert {name: p.stride() for name, p in model.named_parameters()} == strides
    assert all(p.is_contiguous() for p in model.parameters())
    assert "forward" not in vars(model)


def test_fast_path_other_methods_agree(digits) -> None:
    """jvp, layer gradients and the ReLU rules run the eager model, under the same autocast and layout."""
    model, x, labels = digits
    # the eager reference takes the fast path's own autocast and layout: bf16 where the CPU has it
    plain = TorchBackend(model, fast=True, compile=False)
    fast = TorchBackend(model, fast=True, compile={"backend": "aot_eager"})
    cam_plain = gs.grad_cam(plain, x, labels, layer="block3")
    cam_fast = gs.grad_cam(fast, x, labels, layer="block3")
    np.testing.assert_allclose(cam_fast, cam_plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast.jvp(x, x)[1], plain.jvp(x, x)[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gs.guided_backprop(fast, x, labels), gs.guided_backprop(plain, x, labels),
                               rtol=1e-4, atol=1e-6)


def test_fast_defaults_follow_the_hardware(digits) -> None:
    model, _, _ = digits
    backend = TorchBackend(model, fast=True)
    assert backend._channels_last and backend._float32_layers == "auto"
    assert backend._compiled is None  # compile is on by default on CUDA only
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert backend._amp_dtype == (torch.bfloat16 if bf16 else None)
    plain = TorchBackend(model)
    assert plain._amp_dtype is None and not plain._channels_last and plain._compiled is None
    assert plain.model is model


@pytest.mark.parametrize("kwargs, error", [
    (dict(batch_size="big"), gs.InputError),
    (dict(batch_size=0), gs.InputError),
    (dict(memory_budget=0), gs.InputError),
    (dict(compile="yes"), gs.InputTypeError),
    (dict(fast=1), gs.InputTypeError),
    (dict(dtype=torch.bfloat16, float32_layers="block1"), gs.InputTypeError),
    (dict(dtype=torch.bfloat16, float32_layers=["no_such_layer"]), gs.ModelError),
])
def test_bad_fast_path_options(digits, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        TorchBackend(digits[0], **kwargs)


# ----------------------------------------------------------------------------- batch_size="auto"
def test_auto_chunk_fits_the_budget_and_matches_an_explicit_batch_size(digits) -> None:
    model, x, labels = digits
    probe = TorchBackend(model)
    with probe._call_context():
        one, two = probe._probe_bytes(x[:1]), probe._probe_bytes(x[:2])
    per_row = two - one
    budget = one + int(2.5 * per_row)  # room for 3 rows, not 4
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(len(inputs[0])))
    try:
        auto = TorchBackend(model, batch_size="auto", memory_budget=budget)
        assert auto.auto_batch_size(x) == 3
        seen.clear()
        result = gs.smoothgrad(auto, x, labels, n_samples=3, seed=0)
    finally:
        handle.remove()
    assert max(seen) == 3  # the core sends 18-row chunks, the backend splits them into 3s
    with probe._call_context():
        assert probe._probe_bytes(x[:3]) <= budget < probe._probe_bytes(x[:4])
    explicit = gs.smoothgrad(TorchBackend(model, batch_size=3), x, labels, n_samples=3, seed=0)
    np.testing.assert_array_equal(result, explicit)
    whole = gs.smoothgrad(TorchBackend(model), x, labels, n_samples=3, seed=0)
    np.testing.assert_allclose(result, whole, rtol=1e-5, atol=1e-6)


def test_auto_chunk_default_budget_and_small_batches(digits) -> None:
    model, x, labels = digits
    auto = TorchBackend(model, batch_size="auto")
    assert auto.auto_batch_size(x[:1]) == 1  # one row: no probe
    assert auto._auto_rows == {}
    with gs.memory_budget(64 * 2**20):
        assert auto.auto_batch_size(x) == len(x)  # 64 MiB holds the whole (small) batch
    np.testing.assert_array_equal(gs.vanilla_gradient(auto, x, labels),
                                  gs.vanilla_gradient(TorchBackend(model, batch_size=len(x)), x, labels))
    tiny = TorchBackend(model, batch_size="auto", memory_budget=1)
    assert tiny.auto_batch_size(x) == 1  # nothing fits: one row at a time
    np.testing.assert_allclose(gs.vanilla_gradient(tiny, x, labels), gs.vanilla_gradient(auto, x, labels),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_fast_path_maps_match_fp32(digits, method: str) -> None:
    model, x, labels = digits
    reference = METHODS[method](TorchBackend(model, device="cuda"), x, labels)
    fast = TorchBackend(model, device="cuda", fast=True)
    assert fast._compiled is not None and fast._amp_dtype in (torch.bfloat16, None)
    result = METHODS[method](fast, x, labels)
    assert _min_map_spearman(result, reference) >= MIN_SPEARMAN


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_auto_chunk_measures_the_allocator(digits) -> None:
    model, x, labels = digits
    auto = TorchBackend(model, device="cuda", batch_size="auto", memory_budget=2**30)
    rows = auto.auto_batch_size(x)
    assert 1 <= rows <= len(x)
    np.testing.assert_array_equal(gs.vanilla_gradient(auto, x, labels),
                                  gs.vanilla_gradient(TorchBackend(model, device="cuda", batch_size=rows), x, labels))


def _chaotic_net() -> nn.Module:
    """A randomly initialised deep tanh net with large weights: its input gradient is chaotic, so bf16
    rounding reorders it completely (the random-weight ResNet-50's behaviour in miniature)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(10):
        linear = nn.Linear(64, 64)
        nn.init.normal_(linear.weight, std=3.0 / 8.0)
        layers += [linear, nn.Tanh()]
    layers.append(nn.Linear(64, 3))
    return nn.Sequential(*layers).eval()


def test_fidelity_check_keeps_bf16_where_the_maps_agree(digits) -> None:
    model, x, labels = digits
    backend = TorchBackend(model, fast=True, dtype=torch.bfloat16, fidelity=MIN_SPEARMAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathFidelityWarning)
        fast = gs.vanilla_gradient(backend, x, labels)
    assert backend._amp_dtype == torch.bfloat16
    assert _min_map_spearman(fast, gs.vanilla_gradient(TorchBackend(model), x, labels)) >= MIN_SPEARMAN


def test_fidelity_check_falls_back_to_float32_where_the_maps_disagree() -> None:
    model = _chaotic_net()
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    emulated = TorchBackend(model, dtype=torch.bfloat16)  # no check: bf16 really does scramble this one
    assert _min_map_spearman(gs.vanilla_gradient(emulated, x, 0), gs.vanilla_gradient(TorchBackend(model), x, 0)) \
        < MIN_SPEARMAN
    backend = TorchBackend(model, fast=True, dtype=torch.bfloat16, fidelity=MIN_SPEARMAN)
    with pytest.warns(FastPathFidelityWarning, match="runs in float32 from now on"):
        first = gs.vanilla_gradient(backend, x, 0)
    reference = gs.vanilla_gradient(TorchBackend(model), x, 0)
    np.testing.assert_allclose(first, reference, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gs.vanilla_gradient(backend, x, 0), reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [2.0, -1.5, True, "high"])
def test_fidelity_must_be_a_correlation(bad) -> None:
    with pytest.raises(gs.InputError, match="fidelity"):
        TorchBackend(nn.Linear(2, 2), fidelity=bad)


def test_fidelity_check_gets_the_same_typed_errors_as_vjp() -> None:
    """The check runs before the first VJP: bad inputs must fail there with vjp's own typed errors."""
    backend = TorchBackend(_chaotic_net(), fast=True, dtype=torch.bfloat16, fidelity=MIN_SPEARMAN)
    with pytest.raises(gs.InputError, match="non-empty batch"):
        backend.vjp(np.float32(1.0), np.ones((1, 3), np.float32))
    with pytest.raises(gs.InputTypeError, match="floating-point"):
        backend.vjp(np.ones((2, 1, 8, 8), np.int64), np.ones((2, 3), np.float32))
    with pytest.raises(gs.InputError, match="one cotangent row per input"):
        backend.vjp(np.ones((2, 1, 8, 8), np.float32), np.ones((3, 3), np.float32))
