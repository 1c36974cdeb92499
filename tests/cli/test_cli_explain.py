"""``gradsal explain``: the real entry point in a subprocess gives the Python API's maps, on the shipped models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradsal import core
from gradsal.reference_models import zoo

pytest.importorskip("PIL")
pytest.importorskip("onnxruntime")

ONNX_MODEL = zoo.data_path("digits_cnn.onnx")
SINGLE_THREADED = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only slow a busy machine down
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradsal.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=SINGLE_THREADED)


def explain(model: Path, out: Path, *options: str, images: list[Path] | None = None) -> list[dict]:
    """Run explain on ``images`` (default: the first two sample digits) and return summary.json."""
    files = images if images is not None else zoo.sample_images().paths[1:3]
    result = run_cli("explain", str(model), *map(str, files), "--out", str(out), "--quiet", *options)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradsal: error:"), result.stderr
    assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def digits() -> zoo.SampleImages:
    """The sample digits decoded by the zoo (pillow, /255), independently of the command line's reader."""
    return zoo.sample_images()


@pytest.fixture(scope="module")
def onnx_backend() -> core.GradientBackend:
    from gradsal.backends.onnx import OnnxBackend

    return OnnxBackend(str(ONNX_MODEL))


def assert_same_map(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6 * np.abs(expected).max())


def saved(out: Path, summary: list[dict], suffix: str) -> np.ndarray:
    return np.stack([np.load(out / next(f for f in row["files"] if f.endswith(suffix))) for row in summary])


def test_explain_onnx_matches_the_api(tmp_path: Path, digits: zoo.SampleImages, onnx_backend) -> None:
    summary = explain(ONNX_MODEL, tmp_path, "--format", "npy", "json", "png")
    x = digits.images[1:3]
    logits = onnx_backend.forward(x)
    assert [row["input"] for row in summary] == ["digit_3", "digit_7"]
    assert [row["predicted"] for row in summary] == list(logits.argmax(axis=1)) == [3, 7]
    assert [row["score"] for row in summary] == pytest.approx(logits.max(axis=1), rel=1e-5)
    expected = core.vanilla_gradient(onnx_backend, x)
    assert_same_map(saved(tmp_path, summary, ".npy"), expected)
    assert (tmp_path / "digit_3_vanilla.png").is_file()


def test_explain_torchscript_matches_the_api(tmp_path: Path, digits: zoo.SampleImages) -> None:
    torch = pytest.importorskip("torch")
    module = zoo.load_digits_cnn("torch")
    scripted = tmp_path / "digits.pt"
    torch.jit.trace(module, torch.zeros(1, 1, 32, 32)).save(str(scripted))
    out = tmp_path / "out"
    summary = explain(scripted, out, "--format", "npy", "json")  # grayscale PNGs stay one channel
    x = digits.images[1:3]
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    assert [row["predicted"] for row in summary] == list(logits.argmax(axis=1))
    expected = core.vanilla_gradient(module, x)  # the eager module, not the traced file
    assert_same_map(saved(out, summary, ".npy"), expected, rtol=1e-4)


def test_explain_smoothgrad_seed_is_reproducible(tmp_path: Path, digits: zoo.SampleImages, onnx_backend) -> None:
    """The command's noise is the API's for the same seed (so every run with --seed 0 gives the same maps)."""
    options = ("--method", "smoothgrad", "--samples", "8", "--seed", "0", "--format", "npy")
    result = saved(tmp_path, explain(ONNX_MODEL, tmp_path, *options), ".npy")
    x = digits.images[1:3]
    expected = core.smoothgrad(onnx_backend, x, n_samples=8, noise_level=0.15, seed=0)
    np.testing.assert_array_equal(expected, core.smoothgrad(onnx_backend, x, n_samples=8, noise_level=0.15, seed=0))
    assert_same_map(result, expected)
    other_seed = core.smoothgrad(onnx_backend, x, n_samples=8, noise_level=0.15, seed=1)
    assert np.abs(result - other_seed).max() > 1e-3 * np.abs(expected).max()  # the seed matters


def test_explain_target_by_index(tmp_path: Path, digits: zoo.SampleImages, onnx_backend) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    summary = explain(ONNX_MODEL, tmp_path / "out", "--target", "5", "--labels", str(labels), "--format", "npy")
    assert [(row["target"], row["target_name"]) for row in summary] == [(5, "five"), (5, "five")]
    assert [row["predicted_name"] for row in summary] == ["three", "seven"]
    x = digits.images[1:3]
    assert [row["score"] for row in summary] == pytest.approx(onnx_backend.forward(x)[:, 5], rel=1e-5)
    expected = core.vanilla_gradient(onnx_backend, x, 5)
    assert_same_map(saved(tmp_path / "out", summary, ".npy"), expected)
    assert np.abs(expected - core.vanilla_gradient(onnx_backend, x)).max() > 0  # not the top-1 map


def test_explain_target_by_name(tmp_path: Path, digits: zoo.SampleImages, onnx_backend) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(NAMES), encoding="utf-8")
    summary = explain(ONNX_MODEL, tmp_path / "out", "--target", "eight", "--labels", str(labels),
                      "--format", "npy", images=[zoo.sample_images().paths[1]])
    assert (summary[0]["target"], summary[0]["target_name"], summary[0]["predicted_name"]) == (8, "eight", "three")
    expected = core.vanilla_gradient(onnx_backend, digits.images[1:2], 8)
    assert_same_map(saved(tmp_path / "out", summary, ".npy"), expected)


# ------------------------------------------------------------------------------- bad arguments (exit 2)
# (missing files, unknown options, pickles and corrupt models: tests/cli/test_cli_errors.py)


def test_gradcam_without_layer(tmp_path: Path) -> None:
    digit = zoo.sample_images().paths[0]
    assert_one_line_error(run_cli("explain", str(ONNX_MODEL), str(digit), "--method", "gradcam", "--out",
                                  str(tmp_path)), "--layer")


def test_gradcam_unknown_layer(tmp_path: Path) -> None:
    digit = zoo.sample_images().paths[0]
    result = run_cli("explain", str(ONNX_MODEL), str(digit), "--method", "gradcam", "--layer", "no_such_tensor",
                     "--out", str(tmp_path))
    assert_one_line_error(result, "no_such_tensor")


def test_target_out_of_range(tmp_path: Path) -> None:
    digit = zoo.sample_images().paths[0]
    result = run_cli("explain", str(ONNX_MODEL), str(digit), "--target", "10", "--out", str(tmp_path))
    assert_one_line_error(result, "out of range")
    assert not (tmp_path / "summary.json").exists()


def test_target_name_without_labels(tmp_path: Path) -> None:
    digit = zoo.sample_images().paths[0]
    result = run_cli("explain", str(ONNX_MODEL), str(digit), "--target", "seven", "--out", str(tmp_path))
    assert_one_line_error(result, "--labels")
