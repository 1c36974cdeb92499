"""Helpers for testing ONNX differentiation rules against finite differences of the original model.

The reference is always the ORIGINAL model run forward by onnxruntime (central differences of
<f(x), v>), which shares no code with the gradient graph under test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from gradsal.backends.onnx._graph import build_gradient_model

ort.set_default_logger_severity(3)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    symbolic_batch: bool = False,
) -> onnx.ModelProto:
    """A model of ``nodes`` whose inputs are declared from example arrays; output shapes are left open."""
    graph_inputs = []
    for name, array in inputs.items():
        shape: list[int | str] = list(array.shape)
        if symbolic_batch and shape:
            shape[0] = "batch"
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
    graph = helper.make_graph(
        list(nodes), "test", graph_inputs,
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else 9 if opset <= 20 else 10)
    return model


def _session(model: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _names(model: onnx.ModelProto, input_name: str | None, output_name: str | None) -> tuple[str, str]:
    init = {i.name for i in model.graph.initializer}
    data_inputs = [vi.name for vi in model.graph.input if vi.name not in init]
    return input_name or data_inputs[0], output_name or model.graph.output[0].name


def run_forward(
    model: onnx.ModelProto, x: np.ndarray, input_name: str | None = None
) -> dict[str, np.ndarray]:
    """All graph outputs of ``model`` at ``x``."""
    name, _ = _names(model, input_name, None)
    session = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    values = session.run(None, {name: x})
    return {o.name: v for o, v in zip(session.get_outputs(), values, strict=True)}


def _output_of(model: onnx.ModelProto, x: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    if output_name not in {o.name for o in model.graph.output}:
        model = _with_output(model, output_name)
    return run_forward(model, x, input_name)[output_name]


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    return copy


def _run_graph(model, x, seed, *, mode, input_name, output_name, relu_rule, wrt, level, speculative=True):
    """Build and run the gradient graph; a run where a guard of a speculative form fires is redone on the
    exact graph, as OnnxBackend does."""
    built = build_gradient_model(
        model, x.shape, input_name=input_name, output_name=output_name, mode=mode, wrt=wrt,
        relu_rule=relu_rule, speculative=speculative,
    )
    onnx.checker.check_model(built.model, full_check=True)
    session = _session(built.model, level)
    feeds = {built.input_name: x, built.seed_name: seed}
    results = session.run([built.output_name, built.result_name, *(guard.output for guard in built.guards)], feeds)
    if any(bool(fired) for fired in results[2:]):
        return _run_graph(model, x, seed, mode=mode, input_name=input_name, output_name=output_name,
                          relu_rule=relu_rule, wrt=wrt, level=level, speculative=False)
    return results[0], results[1]


def run_vjp(model, x, v, *, input_name=None, output_name=None, relu_rule="standard", wrt=None,
            level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """(outputs, J^T v) from the built VJP graph."""
    input_name, output_name = _names(model, input_name, output_name)
    return _run_graph(model, x, v, mode="vjp", input_name=input_name, output_name=output_name,
                      relu_rule=relu_rule, wrt=wrt, level=level)


def run_jvp(model, x, u, *, input_name=None, output_name=None,
            level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """(outputs, J u) from the built JVP graph."""
    input_name, output_name = _names(model, input_name, output_name)
    return _run_graph(model, x, u, mode="jvp", input_name=input_name, output_name=output_name,
                      relu_rule="standard", wrt=None, level=level)


def _tolerances(dtype: np.dtype, rtol: float | None, atol: float | None) -> tuple[float, float, float]:
    if dtype == np.float64:
        return 1e-6, rtol or 1e-5, atol or 1e-7
    return 1e-2, rtol or 3e-2, atol or 3e-3


def assert_gradients_match(
    model: onnx.ModelProto,
    x: np.ndarray,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    seed: int = 0,
    relu_rule: str = "standard",
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Check the VJP and JVP graphs of ``model`` at ``x`` against central finite differences."""
    input_name, output_name = _names(model, input_name, output_name)
    rng = np.random.default_rng(seed)
    y = _output_of(model, x, input_name, output_name)
    v = rng.standard_normal(y.shape).astype(y.dtype)
    eps_rel, rtol, atol = _tolerances(x.dtype, rtol, atol)
    eps = eps_rel * max(1.0, float(np.abs(x).max(initial=0.0)))

    def scalar(xp: np.ndarray) -> float:
        return float(np.sum(_output_of(model, xp, input_name, output_name).astype(np.float64) * v))

    def fd_along(direction: np.ndarray) -> float:
        step = (eps * direction).astype(x.dtype)
        return (scalar(x + step) - scalar(x - step)) / (2 * eps)

    levels = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    grads = []
    for level in levels:
        y_vjp, g = run_vjp(model, x, v, input_name=input_name, output_name=output_name,
                           relu_rule=relu_rule, level=level)
        np.testing.assert_allclose(y_vjp, y, rtol=1e-6, atol=1e-6, err_msg="VJP graph changed the forward")
        assert g.shape == x.shape, f"gradient shape {g.shape} != input shape {x.shape}"
        grads.append(g)
    np.testing.assert_allclose(grads[0], grads[1], rtol=rtol, atol=atol,
                               err_msg="optimised and unoptimised VJP graphs disagree")
    g = grads[1].astype(np.float64)

    if relu_rule == "standard":
        if x.size <= 512:
            directions = [np.eye(x.size)[i].reshape(x.shape) for i in range(x.size)]
        else:
            directions = [d / np.linalg.norm(d) for d in rng.standard_normal((24, *x.shape))]
        numeric = np.array([fd_along(d) for d in directions])
        analytic = np.array([float(np.sum(g * d)) for d in directions])
        scale = max(1.0, float(np.abs(numeric).max(initial=0.0)))
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol * scale,
                                   err_msg="VJP disagrees with central finite differences")

    u = rng.standard_normal(x.shape).astype(x.dtype)
    y_jvp, ju = run_jvp(model, x, u, input_name=input_name, output_name=output_name)
    np.testing.assert_allclose(y_jvp, y, rtol=1e-6, atol=1e-6, err_msg="JVP graph changed the forward")
    assert ju.shape == y.shape, f"JVP result shape {ju.shape} != output shape {y.shape}"
    lhs = float(np.sum(ju.astype(np.float64) * v))
    if relu_rule == "standard":
        rhs = float(np.sum(u.astype(np.float64) * g))
        np.testing.assert_allclose(lhs, rhs, rtol=rtol, atol=atol * max(1.0, abs(rhs)),
                                   err_msg="<J u, v> != <u, J^T v>")
        np.testing.assert_allclose(lhs, fd_along(u), rtol=rtol, atol=atol * max(1.0, abs(lhs)),
                                   err_msg="JVP disagrees with central finite differences")
