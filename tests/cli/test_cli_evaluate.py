"""``gradsal evaluate``: the table on stdout, the curves PNG and the JSON, checked against the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradsal import core
from gradsal.reference_models import data_path, sample_images

pytest.importorskip("onnxruntime")
pytest.importorskip("PIL")

METHODS = ("vanilla", "gradxinput")
CORE_NAMES = {"vanilla": core.vanilla_gradient, "gradxinput": core.gradient_x_input}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradsal.cli.main", "evaluate", *args],
                          capture_output=True, text=True, timeout=180)


def assert_one_line_error(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradsal: error:") and "Traceback" not in result.stderr
    assert phrase in lines[0], lines[0]


def sample_paths() -> list[str]:
    return [str(p) for p in sample_images().paths]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("evaluate")
    result = run_cli(str(data_path("digits_cnn.onnx")), *sample_paths(), "--methods", *METHODS, "--out", str(out))
    return result, out


def table_rows(stdout: str) -> list[str]:
    """The first cell of each row of the printed table (the rows between the dashes and the first blank/note)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("note:", "wrote ")):
            break
        rows.append(line.split("  ")[0].strip())
    return rows


def test_exit_status_and_one_table_row_per_method(evaluated: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = evaluated
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout) == [*METHODS, "random ranking"]
    assert "deletion AUC" in result.stdout and "insertion AUC" in result.stdout
    assert str(out / "curves.png") in result.stdout and str(out / "evaluation.json") in result.stdout
    assert "randomisation: cascading over 4 weight layer(s)" in result.stdout


def test_json_matches_the_python_api(evaluated: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = evaluated
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    rows = {row["method"]: row for row in report["methods"]}
    assert list(rows) == [*METHODS, "random ranking"]

    # An independent path: the images as the reference-model package decodes them, a fresh backend,
    # each method called directly, and the curves from deletion_curve / insertion_curve.
    from gradsal.backends.onnx import OnnxBackend

    backend = OnnxBackend(str(data_path("digits_cnn.onnx")))
    x = sample_images().images
    targets = backend.forward(x).argmax(axis=1)
    assert [entry["target"] for entry in report["inputs"]] == targets.tolist()
    for name, method in CORE_NAMES.items():
        saliency = np.abs(method(backend, x, targets)).max(axis=1)
        deletion = core.deletion_curve(backend, x, saliency, targets, baseline="zero")
        insertion = core.insertion_curve(backend, x, saliency, targets, baseline="blur")
        assert rows[name]["deletion_auc"] == pytest.approx(deletion.mean_auc, rel=1e-6, abs=1e-9)
        assert rows[name]["insertion_auc"] == pytest.approx(insertion.mean_auc, rel=1e-6, abs=1e-9)
        assert rows[name]["deletion_curve"]["fractions"] == pytest.approx(deletion.fractions.tolist())
        assert rows[name]["time_s"] >= 0
        spearman = rows[name]["randomization_spearman"]
        assert spearman is not None and -1 <= spearman <= 1
    assert rows["random ranking"]["randomization_spearman"] is None
    assert report["randomized_layers"][-1] == "/block1/block1.0/Conv_output_0"  # output first, input last


def test_png_is_a_valid_picture(evaluated: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    from PIL import Image

    result, out = evaluated
    assert result.returncode == 0, result.stderr
    with Image.open(out / "curves.png") as picture:
        picture.verify()
    with Image.open(out / "curves.png") as picture:
        assert picture.format == "PNG"
        assert picture.width >= 600 and picture.height >= 300
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels < 250).any() and (pixels == 255).any()  # something drawn on a white ground


def test_bad_method_is_one_line() -> None:
    result = run_cli(str(data_path("digits_cnn.onnx")), *sample_paths(), "--methods", "gradcam")
    assert_one_line_error(result, "invalid choice")


def test_unreadable_input_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    result = run_cli(str(data_path("digits_cnn.onnx")), str(broken), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "cannot read image")
    assert not (tmp_path / "out").exists()


def test_missing_input_is_one_line(tmp_path: Path) -> None:
    result = run_cli(str(data_path("digits_cnn.onnx")), str(tmp_path / "none.png"))
    assert_one_line_error(result, "does not exist")


class _NoRandomization:
    """The ONNX backend without its ``randomized`` capability."""

    def __init__(self, backend: object) -> None:
        self._backend = backend

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._backend.forward(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._backend.vjp(x, cotangent)


def test_backend_without_randomization_gets_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from gradsal.cli import commands, inputs
    from gradsal.cli.main import main

    def load_without(path: str, **options: Any) -> inputs.LoadedModel:
        loaded = inputs.load_model(path, **options)
        return replace(loaded, backend=_NoRandomization(loaded.backend))

    monkeypatch.setattr(commands, "load_model", load_without)  # evaluate opens its model through commands
    paths = sample_paths()[:2]
    status = main(["evaluate", str(data_path("digits_cnn.onnx")), *paths, "--methods", "vanilla", "vanilla",
                   "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert status == 0
    assert table_rows(printed) == ["vanilla", "random ranking"]  # the repeated method runs once
    assert "note: randomisation skipped: _NoRandomization lacks randomized" in printed
    report = json.loads((tmp_path / "evaluation.json").read_text(encoding="utf-8"))
    assert report["methods"][0]["randomization_spearman"] is None
    assert any("lacks randomized" in note for note in report["notes"])


def test_no_randomization_and_step(tmp_path: Path) -> None:
    result = run_cli(str(data_path("digits_cnn.onnx")), *sample_paths()[:2], "--methods", "vanilla",
                     "--no-randomization", "--step", "0.25", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert "randomisation skipped (--no-randomization)" in json.dumps(report)
    assert "randomisation skipped" in result.stdout
    fractions = report["methods"][0]["deletion_curve"]["fractions"]
    assert np.allclose(fractions, [0.0, 0.25, 0.5, 0.75, 1.0]), fractions


def test_step_out_of_range_is_one_line() -> None:
    assert_one_line_error(run_cli(str(data_path("digits_cnn.onnx")), sample_paths()[0], "--step", "0"), "--step")


def test_score_probability_tracks_the_softmax(tmp_path: Path) -> None:
    """--score probability: the curves are the class probability (in [0, 1]), as deletion_curve(...,
    score="probability") computes them through the API."""
    from gradsal.backends.onnx import OnnxBackend

    paths = sample_paths()[:2]
    result = run_cli(str(data_path("digits_cnn.onnx")), *paths, "--methods", "vanilla", "--no-randomization",
                     "--score", "probability", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "evaluation.json").read_text())["methods"][0]
    assert row["deletion_curve"]["score"] == "probability"
    assert all(0.0 <= s <= 1.0 for s in row["deletion_curve"]["mean_scores"])
    backend = OnnxBackend(str(data_path("digits_cnn.onnx")))
    x = sample_images().images[:2]
    targets = backend.forward(x).argmax(axis=1)
    saliency = np.abs(core.vanilla_gradient(backend, x, targets)).max(axis=1)
    deletion = core.deletion_curve(backend, x, saliency, targets, baseline="zero", score="probability")
    assert row["deletion_auc"] == pytest.approx(deletion.mean_auc, rel=1e-6, abs=1e-9)
