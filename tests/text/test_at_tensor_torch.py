"""at_tensor on a torch model: the model as a function of its embedding, against Captum and autograd."""

from __future__ import annotations

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.backends import TensorBackend, at_tensor

torch = pytest.importorskip("torch")
from text_helpers import PAD, forward_from_embedding, sample_ids  # noqa: E402

from gradsal.reference_models import load_text_classifier  # noqa: E402

STEPS = 32


@pytest.fixture(scope="module")
def net64():
    return load_text_classifier("torch").double()


def test_integrated_gradients_match_captums_layer_integrated_gradients(net64) -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="Captum (the test extra) is the reference here")
    ids = sample_ids(2)
    layer_ig = captum_attr.LayerIntegratedGradients(net64, net64.embedding)
    for i in range(len(ids)):
        one = at_tensor(net64, ids[i:i + 1])
        ours = gs.integrated_gradients(one, one.value, target=1, baseline=one.baseline(token_id=PAD), n_steps=STEPS)
        theirs = layer_ig.attribute(torch.from_numpy(ids[i:i + 1]), baselines=torch.full((1, ids.shape[1]), PAD),
                                    target=1, n_steps=STEPS, method="gausslegendre").detach().numpy()
        # Captum multiplies by its quadrature weights in float32: agreement to ~1e-7 relative, not 1e-15
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(gs.token_scores(ours), theirs.sum(-1), rtol=0, atol=1e-6 * scale)


def test_completeness_at_the_embedding(net64) -> None:
    ids = sample_ids(1)
    at = at_tensor(net64, ids)
    base = at.baseline(token_id=PAD)
    scores_sum = {}
    for steps in (8, 64):
        attributions, delta = gs.integrated_gradients(at, at.value, target=0, baseline=base, n_steps=steps,
                                                      return_delta=True)
        scores_sum[steps] = gs.token_scores(attributions).sum()
    ids_t = torch.from_numpy(ids)
    with torch.no_grad():  # the output change, computed here without the backend
        gain = (forward_from_embedding(torch, net64, torch.from_numpy(at.value), ids_t)
                - forward_from_embedding(torch, net64, torch.from_numpy(base), ids_t))[0, 0].item()
    # Gauss-Legendre converges fast on this smooth path: 64 points leave rounding, 8 points the rule's error
    assert abs(scores_sum[64] - gain) < 1e-9 * max(1.0, abs(gain))
    assert abs(delta[0]) < 1e-9 * max(1.0, abs(gain))
    assert abs(scores_sum[8] - gain) < 1e-2 * abs(gain)


def test_gradient_at_the_embedding_against_autograd_and_finite_differences(net64) -> None:
    ids = sample_ids(2)
    at = at_tensor(net64, ids)
    v = np.random.default_rng(0).standard_normal((2, 2))
    grad = gs.vanilla_gradient(at, at.value, target=v)
    embedded = torch.from_numpy(at.value).requires_grad_(True)
    out = forward_from_embedding(torch, net64, embedded, torch.from_numpy(ids))
    (reference,) = torch.autograd.grad(out, embedded, torch.from_numpy(v))
    np.testing.assert_allclose(grad, reference.numpy(), rtol=1e-12, atol=1e-14)
    # and central differences of the written-out forward, float64, along a few random directions
    rng = np.random.default_rng(1)
    for _ in range(3):
        u = rng.standard_normal(at.value.shape)
        h = 1e-5
        with torch.no_grad():
            plus = forward_from_embedding(torch, net64, torch.from_numpy(at.value + h * u), torch.from_numpy(ids))
            minus = forward_from_embedding(torch, net64, torch.from_numpy(at.value - h * u), torch.from_numpy(ids))
        numeric = ((plus - minus).numpy() * v).sum() / (2 * h)
        assert abs(numeric - (grad * u).sum()) < 1e-7 * max(1.0, abs(numeric))


def test_every_method_runs_and_the_value_is_the_embedding(net64) -> None:
    ids = sample_ids(2)
    at = at_tensor(net64, ids, "embedding")
    assert isinstance(at, TensorBackend) and at.name == "embedding output"
    np.testing.assert_array_equal(at.value, net64.embedding.weight.detach().numpy()[ids])
    x = at.value
    assert gs.gradient_x_input(at, x).shape == x.shape
    one = at.sample(1)
    assert gs.smoothgrad(one, one.value, n_samples=4, seed=0).shape == one.value.shape
    with pytest.raises(gs.InputError, match=r"sample\(i\)"):
        gs.smoothgrad(at, x, n_samples=4, seed=0, batch_size=3)


def test_baselines_in_embedding_space(net64) -> None:
    ids = sample_ids(1)
    at = at_tensor(net64, ids)
    table = net64.embedding.weight.detach().numpy()
    keep = int(ids[0, 0])
    expected = table[np.where(ids == keep, ids, 5)]
    np.testing.assert_array_equal(at.baseline(token_id=5, keep=[keep]), expected)
    np.testing.assert_array_equal(at.baseline(), np.zeros(at.value.shape))
    np.testing.assert_array_equal(at.baseline(np.ones(at.value.shape[-1])), np.ones(at.value.shape))
    with pytest.raises(gs.InputError, match="broadcast"):
        at.baseline(np.ones(3))
    with pytest.raises(gs.InputTypeError, match="token_id"):
        at.baseline(token_id=1.5)


def test_the_hook_is_removed_and_the_inputs_are_not_changed(net64) -> None:
    ids = sample_ids(1)
    before = ids.copy()
    at = at_tensor(net64, ids)
    gs.vanilla_gradient(at, at.value)
    assert not net64.embedding._forward_hooks and not net64.embedding._forward_pre_hooks
    np.testing.assert_array_equal(ids, before)
    assert all(p.grad is None for p in net64.parameters())


def test_module_input_and_errors(net64) -> None:
    ids = sample_ids(1)
    at = at_tensor(net64, ids, "head", where="input")  # the pooled features: a linear function of them
    grad = gs.vanilla_gradient(at, at.value, target=1)
    np.testing.assert_allclose(grad, np.broadcast_to(net64.head.weight.detach().numpy()[1], grad.shape))
    with pytest.raises(gs.ModelError, match=r"no submodule 'embeding'.*'embedding'"):
        at_tensor(net64, ids, "embeding")
    with pytest.raises(gs.InputError, match="shape"):
        at.forward(np.ones((1, 3)))
    with pytest.raises(gs.UnsupportedModelError, match=r"torch\.nn\.Module"):
        at_tensor(object(), ids)


def test_layers_jvp_and_grad_cam_agree_with_the_onnx_export() -> None:
    pytest.importorskip("onnxruntime")
    net = load_text_classifier("torch")
    ids = sample_ids(1)
    at_torch, at_onnx = at_tensor(net, ids), at_tensor(load_text_classifier("onnx"), {"input_ids": ids})
    x = at_torch.value
    v = np.array([[0.3, -1.0]])
    conv_torch = at_torch.layer_vjp(x, "conv", v)
    conv_onnx = at_onnx.layer_vjp(x, "/conv/Conv_output_0", v)
    for ours, theirs in zip(conv_torch, conv_onnx, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    u = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    for at in (at_torch, at_onnx):  # <J u, v> = <u, J^T v>
        _, jv = at.jvp(x, u)
        _, grad = at.vjp(x, v)
        assert abs(float((jv * v).sum()) - float((grad * u).sum())) < 1e-4
    maps = [gs.grad_cam(at, x, target=1, layer=layer, channel_axis=2)
            for at, layer in ((at_torch, "embedding"), (at_onnx, at_onnx.name))]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-6)
    assert maps[0].shape == (1, ids.shape[1])
