"""No side effects: every method leaves x, the target and the baseline exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest
from core_models import CamNet, ReluNet, mlp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend

finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False)
MODEL = mlp(8, 5, 3, seed=0)
RELU = ReluNet(np.random.default_rng(1).normal(size=(8, 4)), np.random.default_rng(2).normal(size=(4, 3)))
CAM = CamNet(np.random.default_rng(3).normal(size=(3, 2)), np.random.default_rng(4).normal(size=(3, 3)))

METHODS = {
    "vanilla": lambda x, t, b: gs.vanilla_gradient(FunctionBackend(MODEL.f, MODEL.grad), x, t),
    "vanilla_fd": lambda x, t, b: gs.vanilla_gradient(MODEL.f, x, t),
    "gradient_x_input": lambda x, t, b: gs.gradient_x_input(FunctionBackend(MODEL.f, MODEL.grad), x, t),
    "smoothgrad": lambda x, t, b: gs.smoothgrad(FunctionBackend(MODEL.f, MODEL.grad), x, t, n_samples=3, seed=0),
    "ig": lambda x, t, b: gs.integrated_gradients(FunctionBackend(MODEL.f, MODEL.grad), x, t, baseline=b,
                                                  n_steps=3, return_delta=True),
    "ig_blur": lambda x, t, b: gs.integrated_gradients(FunctionBackend(MODEL.f, MODEL.grad), x, t, baseline="blur"),
    "guided": lambda x, t, b: gs.guided_backprop(RELU, x, t),
    "grad_cam": lambda x, t, b: gs.grad_cam(CAM, x, t, layer="features"),
    "check_gradients": lambda x, t, b: gs.check_gradients(FunctionBackend(MODEL.f, MODEL.grad), x, t),
    "to_saliency_map": lambda x, t, b: gs.to_saliency_map(x, sign="signed", normalize="percentile"),
}


@pytest.mark.filterwarnings("ignore::gradsal.core.ProbabilityOutputWarning")  # a softplus row may sum to 1
@pytest.mark.parametrize("method", sorted(METHODS))
@given(x=arrays(np.float64, st.tuples(st.integers(1, 3), st.just(2), st.just(2), st.just(2)), elements=finite),
       use_cotangent=st.booleans(), data=st.data())
def test_inputs_unchanged(method, x, use_cotangent, data) -> None:
    n = len(x)
    target = data.draw(arrays(np.float64, (n, 3), elements=finite)) if use_cotangent else None
    baseline = data.draw(arrays(np.float64, x.shape[1:], elements=finite))
    copies = [None if a is None else a.copy() for a in (x, target, baseline)]
    for array in (x, target, baseline):  # a write would raise instead of passing unnoticed
        if array is not None:
            array.flags.writeable = False
    METHODS[method](x, target, baseline)
    for original, after in zip(copies, (x, target, baseline), strict=True):
        if original is not None:
            np.testing.assert_array_equal(after, original)


def test_function_backend_gives_f_a_copy() -> None:
    def careless(z):
        z *= 2  # modifies its argument
        return z.reshape(len(z), -1)[:, :2].copy()

    x = np.ones((2, 3))
    gs.vanilla_gradient(careless, x, 0)
    np.testing.assert_array_equal(x, np.ones((2, 3)))
