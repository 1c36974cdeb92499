"""Independent float64 references for ONNX gradient rules: each operator written from the ONNX spec in
torch (float64), differentiated by torch autograd, and compared with gradsal's VJP and JVP graphs.

For an operator onnxruntime runs in float32 only, the gradient graph is run in float32 and compared with
the float64 reference evaluated at the SAME float32 inputs (x, v and u cast up exactly). The only
difference is then float32 rounding of a few operations per element, a few ulps (1.2e-7 each), hence the
default relative tolerance of 1e-5; an error of 1% in a rule's constant is 1000 times that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from harness import run_forward, run_jvp, run_vjp

Reference = Callable[[torch.Tensor], torch.Tensor]


def schema_default(op: str, attribute: str, opset: int):
    """The default of ``attribute`` as the ONNX spec states it at ``opset`` (never gradsal's own value)."""
    schema = onnx.defs.get_schema(op, opset)
    return onnx.helper.get_attribute_value(schema.attributes[attribute].default_value)


def torch_vjp_jvp(fn: Reference, x: np.ndarray, v: np.ndarray, u: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fn(x), J^T v, J u) by torch autograd in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(xt)
    (grad,) = torch.autograd.grad(y, xt, torch.tensor(v, dtype=torch.float64))
    _, ju = torch.func.jvp(fn, (xt.detach(),), (torch.tensor(u, dtype=torch.float64),))
    return y.detach().numpy(), grad.numpy(), ju.detach().numpy()


def assert_matches_float64_reference(model: onnx.ModelProto, x: np.ndarray, fn: Reference, *,
                                     rtol: float | None = None, atol_scale: float | None = None,
                                     seed: int = 0) -> None:
    """gradsal's VJP and JVP of ``model`` at ``x`` against ``fn``'s torch float64 autograd.

    Tolerance: ``rtol`` on every element plus ``atol_scale`` times the largest reference magnitude (rounding
    of sums in Conv-like operators is relative to the whole sum, not to one element). float64 models get
    1e-10; float32 ones 1e-5 and 1e-6.
    """
    wide = x.dtype == np.float64
    rtol = rtol if rtol is not None else (1e-10 if wide else 1e-5)
    atol_scale = atol_scale if atol_scale is not None else (1e-12 if wide else 1e-6)
    rng = np.random.default_rng(seed)
    y = next(iter(run_forward(model, x).values()))
    v = rng.standard_normal(y.shape).astype(x.dtype)
    u = rng.standard_normal(x.shape).astype(x.dtype)
    y_ref, g_ref, ju_ref = torch_vjp_jvp(fn, x.astype(np.float64), v.astype(np.float64), u.astype(np.float64))
    # the reference must compute the operator onnxruntime computes (same attributes, same defaults); 1e-6
    # at most, since onnxruntime's double Gelu(tanh) rounds its constants to float32
    forward_rtol = max(rtol, 1e-6)
    np.testing.assert_allclose(y, y_ref, rtol=forward_rtol, atol=forward_rtol * np.abs(y_ref).max(),
                               err_msg="the reference's forward differs from onnxruntime's")
    _, g = run_vjp(model, x, v)
    assert g.dtype == x.dtype
    np.testing.assert_allclose(g, g_ref, rtol=rtol, atol=atol_scale * np.abs(g_ref).max(),
                               err_msg="VJP differs from the float64 reference")
    _, ju = run_jvp(model, x, u)
    np.testing.assert_allclose(ju, ju_ref, rtol=rtol, atol=atol_scale * np.abs(ju_ref).max(),
                               err_msg="JVP differs from the float64 reference")

