"""gradsal's methods on torch models, each against a reference computed independently in the test.

References: central finite differences of the raw module (float64), closed-form gradients of a NumPy
twin of the model, the guided/deconvnet rule derived by hand, and Grad-CAM recomputed from hooks with
torch's own bilinear resize.
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
from torch_helpers import (
    ModelSpec,
    assert_close,
    assert_same_state,
    build,
    fd_vjp,
    model_specs,
    model_state,
    random_input,
    torch_forward,
)

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend
from gradsal.backends.torch import TorchBackend
from gradsal.core import attribution, gradcheck

CNN_SPEC = ModelSpec((2, 5, 5), ("conv_bn_relu", "residual", "maxpool", "avgpool"), (), 3, seed=11)


def _one_hot(classes: np.ndarray, n_out: int) -> np.ndarray:
    return np.eye(n_out)[classes]


# ----------------------------------------------------------------------------- finite differences
@given(spec=model_specs(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_check_gradients_passes_through_torch_backend(spec, n, seed) -> None:
    model = build(spec)
    x = random_input(spec, n, seed)
    report = gradcheck.check_gradients(TorchBackend(model), x, n_directions=4)
    assert report.passed, str(report)
    assert report.jvp_checked


class _WrongSquare(torch.autograd.Function):
    """x**2 whose backward forgets the factor 2: a wrong gradient the check must catch."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return x * grad


def test_check_gradients_fails_on_a_wrong_torch_gradient() -> None:
    report = gradcheck.check_gradients(TorchBackend(lambda t: _WrongSquare.apply(t).sum(dim=1, keepdim=True)),
                                       np.random.default_rng(0).normal(size=(2, 3)) + 2.0)
    assert not report.passed


@given(spec=model_specs(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_vanilla_and_gradient_x_input_match_finite_differences(spec, n, seed) -> None:
    model = build(spec)
    x = random_input(spec, n, seed)
    classes = np.random.default_rng(seed).integers(0, spec.n_out, size=n)
    expected = fd_vjp(model, x, _one_hot(classes, spec.n_out))
    assert_close(attribution.vanilla_gradient(model, x, classes), expected)
    assert_close(attribution.gradient_x_input(model, x, classes), x * expected)
    # target=None explains the predicted class
    predicted = torch_forward(model, x).argmax(axis=1)
    assert_close(attribution.vanilla_gradient(model, x), fd_vjp(model, x, _one_hot(predicted, spec.n_out)))


def test_smoothgrad_without_noise_is_the_finite_difference_gradient() -> None:
    model = build(CNN_SPEC)
    x = random_input(CNN_SPEC, 2, 0)
    expected = fd_vjp(model, x, _one_hot(np.array([1, 0]), 3))
    got = attribution.smoothgrad(model, x, [1, 0], n_samples=3, noise_level=0.0, seed=0)
    assert_close(got, expected)


# ----------------------------------------------------------------------------- closed form
class TanhNet(nn.Module):
    """f(x) = W2 tanh(W1 x + b1) + b2, with the closed form J^T v = W1^T ((1 - tanh^2) * W2^T v)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(n_in, n_hidden).double(), nn.Linear(n_hidden, n_out).double()

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def numpy_parts(self):
        return [t.detach().numpy().copy() for t in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)]

    def numpy_forward(self, x: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self.numpy_parts()
        return np.tanh(x @ w1.T + b1) @ w2.T + b2

    def numpy_vjp(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        w1, b1, w2, _ = self.numpy_parts()
        hidden = np.tanh(x @ w1.T + b1)
        return ((cotangent @ w2) * (1 - hidden**2)) @ w1


def _closed_form_ig(net: TanhNet, x: np.ndarray, cotangent: np.ndarray, n_steps: int) -> np.ndarray:
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    total = sum(w * net.numpy_vjp(a * x, cotangent) for a, w in zip(alphas, weights, strict=True))
    return x * total


@given(n_in=st.integers(1, 6), n_hidden=st.integers(1, 8), n_out=st.integers(1, 4), seed=st.integers(0, 10**5))
def test_integrated_gradients_matches_the_closed_form_and_is_complete(n_in, n_hidden, n_out, seed) -> None:
    net = TanhNet(n_in, n_hidden, n_out, seed)
    x = np.random.default_rng(seed).normal(size=(3, n_in))
    classes = np.arange(3) % n_out
    cotangent = _one_hot(classes, n_out)
    attr, delta = attribution.integrated_gradients(net, x, classes, n_steps=24, method="gausslegendre",
                                                   return_delta=True, batch_size=10)
    np.testing.assert_allclose(attr, _closed_form_ig(net, x, cotangent, 24), rtol=1e-9, atol=1e-12)
    gain = ((net.numpy_forward(x) - net.numpy_forward(np.zeros_like(x))) * cotangent).sum(axis=1)
    np.testing.assert_allclose(attr.sum(axis=1), gain, rtol=1e-6, atol=1e-8)  # completeness
    assert np.abs(delta).max() < 1e-6


def _function_backend(net: TanhNet):
    return FunctionBackend(net.numpy_forward, grad=net.numpy_vjp)


@pytest.mark.parametrize("method", ["vanilla", "gradxinput", "smoothgrad", "smoothgrad_sq", "vargrad",
                                    "ig_riemann_left", "ig_riemann_trapezoid", "ig_gausslegendre"])
def test_torch_backend_agrees_with_a_closed_form_function_backend(method) -> None:
    net = TanhNet(5, 7, 3, seed=1)
    reference = _function_backend(net)
    x = np.random.default_rng(1).normal(size=(4, 5))
    target = [0, 2, 1, 2]
    run = {
        "vanilla": lambda m: attribution.vanilla_gradient(m, x, target),
        "gradxinput": lambda m: attribution.gradient_x_input(m, x, target),
        "ig_riemann_left": lambda m: attribution.integrated_gradients(m, x, target, method="riemann_left",
                                                                      n_steps=7, baseline=0.5, batch_size=5),
        "ig_riemann_trapezoid": lambda m: attribution.integrated_gradients(m, x, target, n_steps=9,
                                                                           method="riemann_trapezoid"),
        "ig_gausslegendre": lambda m: attribution.integrated_gradients(m, x, target, baseline="blur"),
    }
    for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        run[kind] = lambda m, kind=kind: attribution.smoothgrad(m, x, target, n_samples=9, kind=kind, seed=4,
                                                                batch_size=7)
    np.testing.assert_allclose(run[method](TorchBackend(net)), run[method](reference), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- guided backprop
def test_guided_backprop_and_deconvnet_match_the_hand_derived_rule() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = np.random.default_rng(3).normal(size=(5, 4))
    classes = np.array([0, 1, 2, 0, 1])
    w1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2 = model[2].weight.detach().numpy()
    upstream = _one_hot(classes, 3) @ w2  # the gradient arriving at the ReLU's output
    active = (x @ w1.T + b1) > 0
    guided = (upstream * (upstream > 0) * active) @ w1
    deconv = (upstream * (upstream > 0)) @ w1
    np.testing.assert_allclose(attribution.guided_backprop(model, x, classes), guided, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(attribution.deconvnet(model, x, classes), deconv, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- Grad-CAM
class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def _grad_cam_by_hand(model: nn.Module, layer: nn.Module, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Selvaraju et al. 2017 from a forward hook: ReLU(sum_k mean(dy_c/dA_k) A_k), bilinearly resized."""
    captured = {}

    def keep(module, inputs, output):
        captured["A"] = output
        return output.clone()  # the in-place ReLU after the layer must not overwrite A

    handle = layer.register_forward_hook(keep)
    try:
        xt = torch.as_tensor(x)
        scores = model(xt)[torch.arange(len(x)), torch.as_tensor(classes)].sum()
        (grad,) = torch.autograd.grad(scores, captured["A"])
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * captured["A"]).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()


def test_grad_cam_equals_the_formula_from_hooks() -> None:
    model = _SmallCNN().double().eval()
    x = np.random.default_rng(5).normal(size=(3, 2, 8, 8))
    classes = np.array([2, 0, 1])
    before = model_state(model)
    cam = attribution.grad_cam(model, x, classes, layer="features")
    assert cam.shape == (3, 8, 8)
    np.testing.assert_allclose(cam, _grad_cam_by_hand(model, model.features, x, classes), rtol=1e-10, atol=1e-12)
    assert cam.max() > 0
    assert_same_state(before, model_state(model))


def test_grad_cam_unknown_layer_suggests_the_right_one() -> None:
    with pytest.raises(gs.ModelError, match="features"):
        attribution.grad_cam(_SmallCNN().double().eval(), np.zeros((1, 2, 8, 8)), 0, layer="feature")


# ----------------------------------------------------------------------------- side effects, bad input
METHODS = {
    "vanilla": lambda m, x: attribution.vanilla_gradient(m, x, 0),
    "gradxinput": lambda m, x: attribution.gradient_x_input(m, x, 0),
    "smoothgrad": lambda m, x: attribution.smoothgrad(m, x, 0, n_samples=3, seed=0),
    "ig": lambda m, x: attribution.integrated_gradients(m, x, 0, n_steps=3, return_delta=True),
    "guided": lambda m, x: attribution.guided_backprop(m, x, 0),
    "gradcam": lambda m, x: attribution.grad_cam(m, x, 0, layer="features"),
    "check": lambda m, x: gradcheck.check_gradients(m, x, 0, n_directions=2),
}


@given(method=st.sampled_from(sorted(METHODS)), train=st.booleans(), seed=st.integers(0, 100))
def test_methods_leave_model_and_input_unchanged(method, train, seed) -> None:
    model = _SmallCNN().double().train(train)
    x = np.random.default_rng(seed).normal(size=(2, 2, 8, 8))
    x_before = x.copy()
    before = model_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        METHODS[method](model, x)
    assert_same_state(before, model_state(model))
    np.testing.assert_array_equal(x, x_before)


def test_integer_input_through_a_method() -> None:
    with pytest.raises(gs.InputTypeError, match="float"):
        attribution.vanilla_gradient(_SmallCNN(), np.zeros((1, 2, 8, 8), dtype=np.uint8), 0)
