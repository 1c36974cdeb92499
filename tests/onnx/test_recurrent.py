"""LSTM, GRU and RNN, unrolled into standard operators for their gradient: VJP and JVP against central
finite differences of onnxruntime's own kernels (float32: onnxruntime has none in double; both directions,
peepholes, GRU's linear_before_reset, initial states, constant sequence lengths; with respect to the input
sequence, the initial states and the weights)."""

from __future__ import annotations

import numpy as np
import pytest
from harness import assert_gradients_match, make_model
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

import gradsal.core as gs
from gradsal.backends.onnx import OnnxBackend

HIDDEN, FEATURES, STEPS, BATCH = 3, 2, 4, 2


def _recurrent(op: str, direction: str, peepholes: bool, initial: bool, lengths: bool, wrt: str, output: str,
               rng: np.random.Generator, linear_before_reset: int = 0) -> tuple[object, np.ndarray, str]:
    directions = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    arrays = {
        "x": rng.standard_normal((STEPS, BATCH, FEATURES)),
        "w": rng.standard_normal((directions, gates * HIDDEN, FEATURES)) * 0.5,
        "r": rng.standard_normal((directions, gates * HIDDEN, HIDDEN)) * 0.5,
        "b": rng.standard_normal((directions, 2 * gates * HIDDEN)) * 0.2,
        "seq": np.array([STEPS, STEPS - 2], np.int32),
        "h0": rng.standard_normal((directions, BATCH, HIDDEN)) * 0.5,
        "c0": rng.standard_normal((directions, BATCH, HIDDEN)) * 0.5,
        "p": rng.standard_normal((directions, 3 * HIDDEN)) * 0.3,
    }
    inputs = ["x", "w", "r", "b", "seq" if lengths else "", "h0" if initial else ""]
    if op == "LSTM":
        inputs += ["c0" if initial else "", "p" if peepholes else ""]
    while not inputs[-1]:
        inputs.pop()
    outputs = ["y", "y_h", "y_c"] if op == "LSTM" else ["y", "y_h"]
    extra = {"linear_before_reset": linear_before_reset} if op == "GRU" else {}
    node = helper.make_node(op, inputs, outputs, hidden_size=HIDDEN, direction=direction, **extra)
    used = {name: arrays[name].astype(np.float32) if arrays[name].dtype.kind == "f" else arrays[name]
            for name in inputs if name}
    model = make_model([node], {wrt: used[wrt]}, [output], initializers={k: v for k, v in used.items() if k != wrt},
                       opset=14)
    return model, used[wrt], wrt


@given(op=st.sampled_from(["LSTM", "GRU", "RNN"]), direction=st.sampled_from(["forward", "reverse", "bidirectional"]),
       peepholes=st.booleans(), initial=st.booleans(), lengths=st.booleans(), final_state=st.booleans(),
       linear_before_reset=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_recurrent_gradient_wrt_its_input_matches_finite_differences(op: str, direction: str, peepholes: bool,
                                                                    initial: bool, lengths: bool, final_state: bool,
                                                                    linear_before_reset: int, seed: int) -> None:
    output = "y_h" if final_state else "y"
    model, x, name = _recurrent(op, direction, peepholes, initial, lengths, "x", output, np.random.default_rng(seed),
                                linear_before_reset)
    assert_gradients_match(model, x, input_name=name, output_name=output, seed=seed)


@pytest.mark.parametrize("wrt", ["h0", "c0", "w", "r", "b", "p"])
def test_lstm_gradient_wrt_states_and_weights_matches_finite_differences(wrt: str) -> None:
    model, value, name = _recurrent("LSTM", "bidirectional", True, True, False, wrt, "y_c", np.random.default_rng(5))
    assert_gradients_match(model, value, input_name=name, output_name="y_c")


@pytest.mark.parametrize("op", ["GRU", "RNN"])
@pytest.mark.parametrize("wrt", ["h0", "w", "r", "b"])
def test_gru_and_rnn_gradient_wrt_state_and_weights_matches_finite_differences(op: str, wrt: str) -> None:
    model, value, name = _recurrent(op, "bidirectional", False, True, True, wrt, "y", np.random.default_rng(6), 1)
    assert_gradients_match(model, value, input_name=name, output_name="y")


def test_an_lstm_with_a_clip_is_refused_naming_it() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS, 1, FEATURES)).astype(np.float32)
    weights = {"w": rng.standard_normal((1, 4 * HIDDEN, FEATURES)).astype(np.float32),
               "r": rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32)}
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=HIDDEN, clip=1.0)
    model = make_model([node], {"x": x}, ["y"], initializers=weights, opset=14)
    with pytest.raises(gs.UnsupportedOperatorError, match=r"LSTM node .* clips its cell input"):
        OnnxBackend(model, output_batch_axis=2).vjp(x, np.ones((1, STEPS, 1, HIDDEN), np.float32))
