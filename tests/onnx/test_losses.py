"""NegativeLogLikelihoodLoss: VJP and JVP against central finite differences, with respect to the input
and to the class weights, for every reduction, with and without ignore_index (targets drawn to hit it)."""

from __future__ import annotations

import numpy as np
from harness import assert_gradients_match, make_model
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper


@given(reduction=st.sampled_from(["none", "sum", "mean"]), weighted=st.booleans(),
       ignore=st.sampled_from([None, 1, -1]), spatial=st.integers(0, 2), wrt_weight=st.booleans(),
       seed=st.integers(0, 2**16))
def test_nll_loss_matches_finite_differences(reduction: str, weighted: bool, ignore: int | None, spatial: int,
                                             wrt_weight: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = 3, 4
    x = rng.standard_normal((n, c, *[2] * spatial))
    target = rng.integers(0, c, (n, *[2] * spatial)).astype(np.int64)
    if ignore is not None:
        target.reshape(-1)[0] = ignore  # at least one ignored element
        target.reshape(-1)[-1] = 0 if ignore != 0 else 1  # and one counted
    w = rng.uniform(0.5, 2.0, c)
    attrs = {"reduction": reduction} | ({"ignore_index": ignore} if ignore is not None else {})
    inputs = ["x", "t", "w"] if weighted or wrt_weight else ["x", "t"]
    node = helper.make_node("NegativeLogLikelihoodLoss", inputs, ["loss"], **attrs)
    if wrt_weight:
        model = make_model([node], {"w": w}, ["loss"], initializers={"x": x, "t": target}, opset=13)
        assert_gradients_match(model, w, input_name="w", seed=seed)
    else:
        model = make_model([node], {"x": x}, ["loss"], initializers={"t": target, **({"w": w} if weighted else {})},
                           opset=13)
        assert_gradients_match(model, x, seed=seed)


@given(reduction=st.sampled_from(["none", "sum", "mean"]), weighted=st.booleans(),
       ignore=st.sampled_from([None, 2]), log_prob=st.booleans(), explain_log_prob=st.booleans(),
       spatial=st.integers(0, 1), opset=st.sampled_from([12, 13, 18]), seed=st.integers(0, 2**16))
def test_softmax_cross_entropy_matches_finite_differences(reduction: str, weighted: bool, ignore: int | None,
                                                          log_prob: bool, explain_log_prob: bool, spatial: int,
                                                          opset: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, *[3] * spatial))
    target = rng.integers(0, 4, (3, *[3] * spatial)).astype(np.int64)
    if ignore is not None:
        target.reshape(-1)[0] = ignore
        target.reshape(-1)[-1] = 0
    attrs = {"reduction": reduction} | ({"ignore_index": ignore} if ignore is not None else {})
    outputs = ["loss", "log_prob"] if log_prob else ["loss"]
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t", "w"] if weighted else ["x", "t"], outputs, **attrs)
    constants = {"t": target} | ({"w": rng.uniform(0.5, 2.0, 4)} if weighted else {})
    model = make_model([node], {"x": x}, outputs, initializers=constants, opset=opset)
    explained = "log_prob" if log_prob and explain_log_prob else "loss"
    assert_gradients_match(model, x, output_name=explained, seed=seed)
