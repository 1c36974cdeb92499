"""Guided backprop / deconvnet (SupportsReluRule) and Grad-CAM (SupportsLayers) through tiny NumPy backends."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import CamNet, ReluNet, linear

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.core.attribution import resize_linear


@pytest.fixture
def relu_net() -> ReluNet:
    rng = np.random.default_rng(0)
    return ReluNet(rng.normal(size=(5, 8)), rng.normal(size=(8, 3)))


def _rule_by_loop(net: ReluNet, x: np.ndarray, classes: list[int], rule: str) -> np.ndarray:
    """Sum over hidden units j of W1[:, j] * r_j, keeping unit j by the rule (r = back-signal at unit j)."""
    out = np.zeros_like(x)
    for i, c in enumerate(classes):
        for j in range(net.W1.shape[1]):
            pre, back = x[i] @ net.W1[:, j], net.W2[j, c]
            keep = {"guided": pre > 0 and back > 0, "deconvnet": back > 0, "standard": pre > 0}[rule]
            if keep:
                out[i] += back * net.W1[:, j]
    return out


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_relu_rules_by_hand(relu_net: ReluNet, rule: str) -> None:
    x = np.random.default_rng(1).normal(size=(4, 5))
    method = gs.guided_backprop if rule == "guided" else gs.deconvnet
    classes = [0, 2, 1, 2]
    np.testing.assert_allclose(method(relu_net, x, classes), _rule_by_loop(relu_net, x, classes, rule), atol=1e-12)
    predicted = list(relu_net.forward(x).argmax(axis=1))
    np.testing.assert_allclose(method(relu_net, x), _rule_by_loop(relu_net, x, predicted, rule), atol=1e-12)
    # the plain gradient is the standard rule, and guided backprop differs from it here
    np.testing.assert_allclose(gs.vanilla_gradient(relu_net, x, classes),
                               _rule_by_loop(relu_net, x, classes, "standard"), atol=1e-12)


@pytest.fixture
def cam_net() -> CamNet:
    rng = np.random.default_rng(2)
    return CamNet(rng.normal(size=(4, 3)), rng.normal(size=(4, 5)))


def test_grad_cam_by_hand(cam_net: CamNet) -> None:
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 6))
    cam = gs.grad_cam(cam_net, x, [1, 4], layer="features")
    assert cam.shape == (2, 8, 6) and cam.dtype == x.dtype and cam.min() >= 0
    # A = relu(V . pool(x)); dS/dA_k = W[k, c] / (h w) everywhere, so w_k = W[k, c] / 12 and
    # the map before upsampling is relu(sum_k W[k, c] / 12 * A_k) at 4 x 3
    pooled = x.reshape(2, 3, 4, 2, 3, 2).mean(axis=(3, 5))
    activation = np.maximum(np.einsum("kc,nchw->nkhw", cam_net.V, pooled), 0)
    for i, c in enumerate([1, 4]):
        small = np.maximum(sum(cam_net.W[k, c] / 12 * activation[i, k] for k in range(4)), 0)
        np.testing.assert_allclose(cam[i], resize_linear(small[None], (8, 6))[0], atol=1e-12)


def test_bilinear_upsampling_by_hand() -> None:
    # half-pixel centres, x2: outputs sample the input at j/2 - 1/4, clamped at the edges
    a, b, c = 1.0, 5.0, -3.0
    got = resize_linear(np.array([[a, b, c]]), (6,))
    np.testing.assert_allclose(got, [[a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, 0.75 * b + 0.25 * c,
                                      0.25 * b + 0.75 * c, c]])
    two_d = resize_linear(np.array([[[0.0, 1.0], [2.0, 3.0]]]), (4, 4))  # bilinear of a plane is the plane
    np.testing.assert_allclose(two_d[0, 1:3, 1:3], [[0.75, 1.25], [1.75, 2.25]])
    np.testing.assert_allclose(resize_linear(np.ones((1, 3, 2)), (7, 5)), np.ones((1, 7, 5)))


def test_bilinear_upsampling_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(4).normal(size=(2, 5, 7))
    expected = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(13, 9), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(resize_linear(maps, (13, 9)), expected, atol=1e-12)


def test_grad_cam_channel_axis_last(cam_net: CamNet) -> None:
    class ChannelsLast:
        def forward(self, x):
            return cam_net.forward(x.transpose(0, 3, 1, 2))

        def vjp(self, x, cotangent):
            out, grad = cam_net.vjp(x.transpose(0, 3, 1, 2), cotangent)
            return out, grad.transpose(0, 2, 3, 1)

        def layer_vjp(self, x, layer, cotangent):
            activation, grad = cam_net.layer_vjp(x.transpose(0, 3, 1, 2), layer, cotangent)
            return activation.transpose(0, 2, 3, 1), grad.transpose(0, 2, 3, 1)

    x = np.random.default_rng(5).normal(size=(2, 3, 4, 4))
    expected = gs.grad_cam(cam_net, x, 0, layer="features")
    got = gs.grad_cam(ChannelsLast(), x.transpose(0, 2, 3, 1), 0, layer="features", channel_axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_grad_cam_rejects_a_layer_without_space(cam_net: CamNet) -> None:
    class Flat(CamNet):
        def layer_vjp(self, x, layer, cotangent):
            activation, grad = super().layer_vjp(x, layer, cotangent)
            return activation.mean(axis=(2, 3)), grad.mean(axis=(2, 3))

    with pytest.raises(gs.InputError, match="convolutional layer"):
        gs.grad_cam(Flat(cam_net.V, cam_net.W), np.ones((1, 3, 4, 4)), layer="features")


@pytest.mark.parametrize(("method", "capability"), [
    (gs.guided_backprop, "SupportsReluRule"),
    (gs.deconvnet, "SupportsReluRule"),
    (lambda m, x: gs.grad_cam(m, x, layer="conv"), "SupportsLayers"),
])
def test_function_backend_lacks_capabilities(method, capability: str) -> None:
    model = linear(3, 2, 0)
    with pytest.raises(gs.MissingCapabilityError, match=capability) as info:
        method(FunctionBackend(model.f, model.grad), np.ones((1, 3)))
    message = str(info.value)
    assert "FunctionBackend does not have it" in message and "TorchBackend" in message
    assert isinstance(info.value, TypeError)
