"""``gradsal check``: passes on the shipped models (real entry point, subprocess), fails on a broken gradient."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradsal.reference_models import zoo

pytest.importorskip("onnxruntime")

ONNX_MODEL = zoo.data_path("digits_cnn.onnx")
SINGLE_THREADED = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only slow a busy machine down


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradsal.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=SINGLE_THREADED)


def test_check_passes_on_the_shipped_onnx_model() -> None:
    result = run_cli("check", str(ONNX_MODEL))  # random input of the declared shape 1x32x32
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Gradient check PASSED")
    assert "forward mode (jvp) checked too" in result.stdout


def test_check_float64_on_a_float32_model_says_it_runs_in_float32() -> None:
    result = run_cli("check", str(ONNX_MODEL), "--float64")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Note: ") and "computes in float32" in result.stdout
    assert "Gradient check PASSED" in result.stdout


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped digits CNN as a TorchScript file."""
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("torchscript") / "digits.pt"
    torch.jit.script(zoo.load_digits_cnn("torch")).save(str(path))
    return path


def test_check_passes_on_a_torchscript_model(scripted: Path, tmp_path: Path) -> None:
    x = tmp_path / "x.npy"  # TorchScript declares no input shape: give one (smooth there: no max-pool ties)
    np.save(x, np.random.default_rng(0).random((1, 32, 32)).astype(np.float32))
    result = run_cli("check", str(scripted), str(x))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Gradient check PASSED")


def test_check_fails_with_exit_1_on_a_broken_gradient(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (a monkeypatch does not cross a subprocess): Relu's VJP rule returns twice the cotangent."""
    pytest.importorskip("onnx")
    from gradsal.backends.onnx.rules import pointwise as _pointwise  # registers the real rules first
    from gradsal.backends.onnx.rules import registry as _rules
    from gradsal.cli.main import main

    honest = _rules._VJP["Relu"]
    calls = []

    def doubled(ctx, node, grads):
        calls.append(node.name)
        (grad,) = honest(ctx, node, grads)
        return [ctx.emit1("Add", [grad, grad])]

    assert main(["check", str(ONNX_MODEL)]) == 0  # control: the same check passes with the real rule
    assert "PASSED" in capsys.readouterr().out
    assert _pointwise.relu_vjp is honest
    monkeypatch.setitem(_rules._VJP, "Relu", doubled)
    assert main(["check", str(ONNX_MODEL)]) == 1
    output = capsys.readouterr().out
    assert output.startswith("Gradient check FAILED"), output
    assert len(calls) >= 3  # the digits CNN has three ReLUs, all differentiated by the broken rule


def test_an_image_on_kinks_is_checked_at_a_nudged_input() -> None:
    result = run_cli("check", str(ONNX_MODEL), str(zoo.data_path("digit_3.png")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Gradient check PASSED") and "plus Gaussian noise" in result.stdout
    assert "would have failed" in result.stdout and "forward rows" in result.stdout


def test_an_image_on_kinks_is_inconclusive_then_checked_at_a_generic_input() -> None:
    # the digit's flat black background ties max-pool windows: finite differences cannot judge there
    result = run_cli("check", str(ONNX_MODEL), str(zoo.data_path("digit_3.png")), "--nudge", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    first, rest = result.stdout.split("The input lies on kinks of the model", 1)
    assert first.startswith("Gradient check INCONCLUSIVE") and "set aside" in first
    assert "Gradient check PASSED" in rest


def test_a_closed_pipe_ends_quietly() -> None:
    reader = subprocess.Popen([sys.executable, "-m", "gradsal.cli.main", "check", str(ONNX_MODEL)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SINGLE_THREADED)
    reader.stdout.close()  # the reader goes away before the report is printed
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 141 and b"Traceback" not in err and b"error" not in err, err


def test_a_channels_last_model_with_double_kernels_is_checked_in_float64(tmp_path: Path, capsys) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from gradsal.cli.main import main

    weights = numpy_helper.from_array(np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["t"]),
             helper.make_node("ReduceSum", ["t", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weights, axes])
    path = tmp_path / "nhwc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["check", str(path)]) == 0
    assert "PASSED in float64" in capsys.readouterr().out
