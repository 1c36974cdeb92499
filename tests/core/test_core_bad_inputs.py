"""Bad input gets a typed gradsal error that is also the matching built-in, with a message naming the fix."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import CamNet, linear

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend

MODEL = linear(4, 3, seed=0)
CAM = CamNet(np.ones((2, 4)), np.ones((2, 3)))

METHODS = {
    "vanilla": lambda b, x, **k: gs.vanilla_gradient(b, x, **k),
    "gradient_x_input": lambda b, x, **k: gs.gradient_x_input(b, x, **k),
    "smoothgrad": lambda b, x, **k: gs.smoothgrad(b, x, n_samples=2, seed=0, **k),
    "integrated_gradients": lambda b, x, **k: gs.integrated_gradients(b, x, n_steps=2, **k),
    "check_gradients": lambda b, x, **k: gs.check_gradients(b, x, **k),
}


def backend() -> FunctionBackend:
    return FunctionBackend(MODEL.f, MODEL.grad)


def good_x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 4))


def with_value(value: float) -> np.ndarray:
    x = good_x()
    x[1, 2] = value
    return x


BAD_X = [
    pytest.param(with_value(np.nan), gs.InputError, ValueError, "nan_to_num", id="nan"),
    pytest.param(with_value(np.inf), gs.InputError, ValueError, "infinite", id="inf"),
    pytest.param(np.ones(4), gs.InputError, ValueError, r"x\[None\]", id="rank-1"),
    pytest.param(np.float64(1.0), gs.InputError, ValueError, "batch", id="scalar"),
    pytest.param(np.ones((2, 4), dtype=np.int64), gs.InputTypeError, TypeError, r"astype\(np.float32\)", id="int"),
    pytest.param(np.ones((2, 4), dtype=np.uint8), gs.InputTypeError, TypeError, "scale", id="uint8"),
    pytest.param(np.ones((2, 4), dtype=bool), gs.InputTypeError, TypeError, "floating-point", id="bool"),
    pytest.param(np.ones((0, 4)), gs.InputError, ValueError, "at least one sample", id="empty-batch"),
    pytest.param("image.png", gs.InputTypeError, TypeError, "NumPy array", id="string"),
]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(("x", "error", "builtin", "phrase"), BAD_X)
def test_bad_x(method: str, x, error, builtin, phrase: str) -> None:
    with pytest.raises(error, match=phrase) as info:
        METHODS[method](backend(), x)
    assert isinstance(info.value, builtin) and isinstance(info.value, gs.GradsalError)


@pytest.mark.parametrize(("x", "error", "builtin", "phrase"), BAD_X[:4] + BAD_X[7:8])
def test_bad_x_grad_cam_and_guided(x, error, builtin, phrase: str) -> None:
    with pytest.raises(error, match=phrase) as info:
        gs.grad_cam(CAM, x, layer="features")
    assert isinstance(info.value, builtin)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_target_out_of_range(method: str) -> None:
    with pytest.raises(gs.TargetError, match="between 0 and 2") as info:
        METHODS[method](backend(), good_x(), target=3)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cotangent_target_of_wrong_shape(method: str) -> None:
    with pytest.raises(gs.TargetError, match=r"shaped \(2, 3\)") as info:
        METHODS[method](backend(), good_x(), target=np.ones((2, 4)))
    assert isinstance(info.value, ValueError)


def test_backend_cotangent_of_wrong_shape() -> None:
    for b in (backend(), FunctionBackend(MODEL.f)):
        with pytest.raises(gs.InputError, match=r"shaped like the outputs f\(x\), \(2, 3\)") as info:
            b.vjp(good_x(), np.ones((2, 4)))
        assert isinstance(info.value, ValueError)
    with pytest.raises(gs.InputError, match="tangent"):
        backend().jvp(good_x(), np.ones((2, 3)))


@pytest.mark.parametrize(("kwargs", "error", "phrase"), [
    ({"n_samples": 0}, gs.InputError, "n_samples=1 or more"),
    ({"n_samples": -5}, gs.InputError, "at least 1"),
    ({"n_samples": 2.5}, gs.InputTypeError, "integer"),
    ({"noise_level": -0.1}, gs.InputError, "noise_level=0.15"),
    ({"noise_level": float("nan")}, gs.InputError, "finite"),
    ({"kind": "smooth"}, gs.InputError, "'vargrad'"),
    ({"batch_size": 0}, gs.InputError, "positive number of rows"),
])
def test_bad_smoothgrad_options(kwargs, error, phrase: str) -> None:
    with pytest.raises(error, match=phrase):
        gs.smoothgrad(backend(), good_x(), **kwargs)


@pytest.mark.parametrize(("kwargs", "error", "phrase"), [
    ({"baseline": np.zeros(3)}, gs.InputError, r"like one sample \(4,\)"),
    ({"baseline": np.zeros((3, 4))}, gs.InputError, "does not broadcast"),
    ({"baseline": np.zeros((1, 2, 4))}, gs.InputError, "does not broadcast"),
    ({"baseline": np.full(4, np.nan)}, gs.InputError, "NaN"),
    ({"baseline": "black"}, gs.InputError, "'blur', 'uniform'"),
    ({"baseline": None}, gs.InputTypeError, "not a baseline"),
    ({"baseline": np.array(["a"] * 4)}, gs.InputTypeError, "real-valued"),
    ({"n_steps": 0}, gs.InputError, "n_steps"),
    ({"n_steps": 1, "method": "riemann_trapezoid"}, gs.InputError, "at least 2"),
    ({"method": "simpson"}, gs.InputError, "'gausslegendre'"),
    ({"baseline": "blur", "blur_sigma": -1.0}, gs.InputError, "blur_sigma"),
])
def test_bad_integrated_gradients_options(kwargs, error, phrase: str) -> None:
    with pytest.raises(error, match=phrase) as info:
        gs.integrated_gradients(backend(), good_x(), **kwargs)
    assert isinstance(info.value, gs.GradsalError)


def test_unknown_model_object() -> None:
    with pytest.raises(gs.UnsupportedModelError, match="Accepted models"):
        gs.vanilla_gradient(object(), good_x())
    with pytest.raises(gs.UnsupportedModelError):
        gs.vanilla_gradient(dict, good_x())  # a class, not a model


def test_bad_grad_cam_arguments() -> None:
    x = np.ones((1, 4, 4, 4))
    with pytest.raises(gs.InputTypeError, match="name of a layer"):
        gs.grad_cam(CAM, x, layer=3)
    with pytest.raises(gs.InputError, match="per-sample axis"):
        gs.grad_cam(CAM, x, layer="features", channel_axis=0)

    class Volume(CamNet):  # a 3-D input (N, C, D, H, W) whose layer is 2-D
        def forward(self, x):
            return super().forward(x[:, :, 0])

        def layer_vjp(self, x, layer, cotangent):
            return super().layer_vjp(x[:, :, 0], layer, cotangent)

    with pytest.raises(gs.InputError, match="spatial axes"):
        gs.grad_cam(Volume(CAM.V, CAM.W), np.ones((1, 4, 2, 4, 4)), layer="features")


def test_backend_exceptions_are_wrapped_with_the_cause_attached() -> None:
    with pytest.raises(gs.BackendError, match=r"CamNet\.layer_vjp failed.*KeyError") as info:
        gs.grad_cam(CAM, np.ones((1, 4, 4, 4)), layer="nope")
    assert isinstance(info.value.__cause__, KeyError)

    def exhausted(x):
        raise MemoryError()

    with pytest.raises(gs.BackendError, match="smaller batch_size"):
        gs.vanilla_gradient(FunctionBackend(exhausted), good_x())


class Broken:
    """A backend that breaks the protocol in configurable ways."""

    def __init__(self, outputs=None, grad=None, pair=True) -> None:
        self.outputs, self.grad, self.pair = outputs, grad, pair

    def forward(self, x):
        return MODEL.f(x) if self.outputs is None else self.outputs(x)

    def vjp(self, x, cotangent):
        grad = MODEL.grad(x, cotangent) if self.grad is None else self.grad(x)
        return (self.forward(x), grad) if self.pair else grad


@pytest.mark.parametrize(("broken", "phrase"), [
    (Broken(outputs=lambda x: MODEL.f(x)[:1]), "one row per input sample"),
    (Broken(outputs=lambda x: MODEL.f(x).argmax(axis=1)), "not labels"),
    (Broken(grad=lambda x: x[:, :2]), "shaped like the input"),
    (Broken(pair=False), "must return a pair"),
])
def test_protocol_violations_raise_backend_error(broken, phrase: str) -> None:
    with pytest.raises(gs.BackendError, match=phrase) as info:
        gs.vanilla_gradient(broken, good_x())
    assert isinstance(info.value, RuntimeError)


def test_nan_outputs_with_predicted_target() -> None:
    with pytest.raises(gs.BackendError, match="explicit target"):
        gs.vanilla_gradient(Broken(outputs=lambda x: MODEL.f(x) * np.nan), good_x())
