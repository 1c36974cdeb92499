"""The fused LSTM's own VJP and JVP rules (``rules/lstm.py``: gates batched over time, only the recurrence
stepped) against torch autograd in float64 of ONNX's LSTM equations written out step by step: every
direction, initial states or none, a bias or none, Y, Y_h or Y_c explained, with respect to the sequence,
the initial states and the weights, batch and hidden sizes above one. The reference's forward is first
checked against onnxruntime's LSTM kernel, so both sides compute the same function."""

from __future__ import annotations

import numpy as np
import pytest
from harness import make_model, run_jvp, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

from gradsal.backends.onnx._graph import build_gradient_model

torch = pytest.importorskip("torch")

OUTPUTS = ("y", "y_h", "y_c")


def _arrays(rng: np.random.Generator, directions: int, steps: int, batch: int, features: int,
            hidden: int) -> dict[str, np.ndarray]:
    return {
        "x": rng.standard_normal((steps, batch, features)),
        "w": rng.standard_normal((directions, 4 * hidden, features)) * 0.6,
        "r": rng.standard_normal((directions, 4 * hidden, hidden)) * 0.6,
        "b": rng.standard_normal((directions, 8 * hidden)) * 0.3,
        "seq": np.full(batch, steps, np.int32),
        "h0": rng.standard_normal((directions, batch, hidden)) * 0.5,
        "c0": rng.standard_normal((directions, batch, hidden)) * 0.5,
    }


def _lstm_model(arrays: dict[str, np.ndarray], used: list[str], direction: str, hidden: int, wrt: str):
    inputs = ["x", "w", "r", "b" if "b" in used else "", "seq" if "seq" in used else "",
              "h0" if "h0" in used else "", "c0" if "c0" in used else ""]
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node("LSTM", inputs, list(OUTPUTS), hidden_size=hidden, direction=direction)
    values = {name: arrays[name].astype(np.float32) if arrays[name].dtype.kind == "f" else arrays[name]
              for name in inputs if name}
    initializers = {k: v for k, v in values.items() if k != wrt}
    return make_model([node], {wrt: values[wrt]}, list(OUTPUTS), initializers=initializers, opset=14), values[wrt]


def _reference(t: dict, direction: str, hidden: int) -> tuple:
    """ONNX's LSTM (default activations, gates i, o, f, c) in torch, one step at a time: (Y, Y_h, Y_c)."""
    steps, batch, _ = t["x"].shape
    ways = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    sequences, last_h, last_c = [], [], []
    for d, way in enumerate(ways):
        zeros = torch.zeros(batch, hidden, dtype=torch.float64)
        h = t["h0"][d] if "h0" in t else zeros
        c = t["c0"][d] if "c0" in t else zeros
        bias = t["b"][d, :4 * hidden] + t["b"][d, 4 * hidden:] if "b" in t else 0.0
        outputs = [None] * steps
        for step in range(steps) if way == "forward" else reversed(range(steps)):
            z = t["x"][step] @ t["w"][d].T + h @ t["r"][d].T + bias
            i, o, f = (torch.sigmoid(z[:, k * hidden:(k + 1) * hidden]) for k in range(3))
            c = f * c + i * torch.tanh(z[:, 3 * hidden:])
            h = o * torch.tanh(c)
            outputs[step] = h
        sequences.append(torch.stack(outputs))
        last_h.append(h)
        last_c.append(c)
    return torch.stack(sequences, dim=1), torch.stack(last_h), torch.stack(last_c)


def _torch_function(arrays: dict[str, np.ndarray], used: list[str], wrt: str, direction: str, hidden: int,
                    output: str):
    fixed = {k: torch.tensor(arrays[k], dtype=torch.float64) for k in used if k not in (wrt, "seq")}

    def function(value):
        return _reference({**fixed, wrt: value}, direction, hidden)[OUTPUTS.index(output)]

    return function


@given(direction=st.sampled_from(["forward", "reverse", "bidirectional"]), initial=st.booleans(),
       bias=st.booleans(), lengths=st.booleans(), output=st.sampled_from(OUTPUTS),
       wrt=st.sampled_from(["x", "h0", "c0", "w", "r", "b"]), steps=st.integers(1, 5), batch=st.integers(1, 3),
       hidden=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_fused_lstm_vjp_and_jvp_match_torch_autograd_in_float64(direction: str, initial: bool, bias: bool,
                                                                  lengths: bool, output: str, wrt: str, steps: int,
                                                                  batch: int, hidden: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    directions = 2 if direction == "bidirectional" else 1
    arrays = _arrays(rng, directions, steps, batch, 3, hidden)
    used = ["x", "w", "r"] + ["b"] * bias + ["seq"] * lengths + ["h0", "c0"] * initial
    if wrt not in used:
        wrt = "x"
    model, value = _lstm_model(arrays, used, direction, hidden, wrt)
    function = _torch_function(arrays, used, wrt, direction, hidden, output)
    point = torch.tensor(arrays[wrt], dtype=torch.float64, requires_grad=True)
    expected = function(point)
    v = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    u = rng.standard_normal(value.shape).astype(np.float32)

    y, vjp = run_vjp(model, value, v, input_name=wrt, output_name=output)
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-5, atol=1e-6,
                               err_msg="the torch reference is not onnxruntime's LSTM")
    (expected * torch.tensor(v, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(vjp, point.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg="VJP")

    _, jvp = run_jvp(model, value, u, input_name=wrt, output_name=output)
    _, expected_jvp = torch.autograd.functional.jvp(function, point.detach(), torch.tensor(u, dtype=torch.float64))
    np.testing.assert_allclose(jvp, expected_jvp.numpy(), rtol=1e-4, atol=1e-5, err_msg="JVP")


def _ops_of_gradient_graph(extra_inputs: list[str], mode: str = "vjp") -> list[str]:
    rng = np.random.default_rng(0)
    arrays = _arrays(rng, 2, 4, 2, 3, 2)
    arrays["p"] = rng.standard_normal((2, 6))
    arrays["short"] = np.array([4, 2], np.int32)
    inputs = ["x", "w", "r", "b", *extra_inputs]
    node = helper.make_node("LSTM", inputs, ["y"], hidden_size=2, direction="bidirectional")
    initializers = {k: arrays[k].astype(np.float32) if arrays[k].dtype.kind == "f" else arrays[k]
                    for k in inputs[1:] if k}
    model = make_model([node], {"x": arrays["x"].astype(np.float32)}, ["y"], initializers=initializers, opset=14)
    built = build_gradient_model(model, arrays["x"].shape, input_name="x", output_name="y", mode=mode)
    return [n.op_type for n in built.model.graph.node]


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_a_default_lstm_stays_one_fused_node_in_the_gradient_graph(mode: str) -> None:
    assert _ops_of_gradient_graph([], mode).count("LSTM") == 1
    assert _ops_of_gradient_graph(["seq", "h0", "c0"], mode).count("LSTM") == 1  # lengths all full


@pytest.mark.parametrize("extra", [["", "", "", "p"], ["short"]], ids=["peepholes", "short_sequences"])
def test_other_lstm_forms_are_unrolled_instead(extra: list[str]) -> None:
    assert "LSTM" not in _ops_of_gradient_graph(extra)
