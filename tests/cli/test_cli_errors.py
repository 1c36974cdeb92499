"""The command line's contract for bad input: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradsal.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("gradsal: error:")
    assert phrase in lines[0], lines[0]


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("gradsal ")
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "explain", "check", "evaluate"):
        assert command in result.stdout


def test_unknown_option_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("explain", "m.onnx", "x.png", "--method", "nope"), "invalid choice")


def test_missing_model_file(tmp_path: Path) -> None:
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 4, 4), np.float32))
    assert_one_line_error(run_cli("explain", str(tmp_path / "none.onnx"), str(image)), "does not exist")


def test_pickle_is_refused_with_reason(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    model = tmp_path / "model.pth"
    model.write_bytes(b"\x80\x04not a torchscript archive")
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 4, 4), np.float32))
    assert_one_line_error(run_cli("explain", str(model), str(image)), "never unpickles")


def test_unknown_suffix(tmp_path: Path) -> None:
    model = tmp_path / "model.h5"
    model.write_bytes(b"x")
    assert_one_line_error(run_cli("check", str(model)), "cannot tell what kind of model")


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 4, 4), np.float32))
    result = run_cli("explain", str(model), str(image))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_input(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert_one_line_error(run_cli("explain", str(model), str(tmp_path / "nothing.png")), "nothing.png")


def test_a_folder_gives_its_images_and_only_without_images_its_arrays(tmp_path) -> None:
    from gradsal.cli.inputs import expand_inputs

    mixed, arrays = tmp_path / "mixed", tmp_path / "arrays"
    mixed.mkdir()
    arrays.mkdir()
    for name in ("b.png", "a.png", "other.npy", "notes.txt"):
        (mixed / name).write_bytes(b"")
    for name in ("y.npy", "x.npy"):
        (arrays / name).write_bytes(b"")
    assert [p.name for p in expand_inputs([str(mixed)])] == ["a.png", "b.png"]
    assert [p.name for p in expand_inputs([str(arrays)])] == ["x.npy", "y.npy"]
    assert [p.name for p in expand_inputs([str(mixed / "other.npy")])] == ["other.npy"]  # named: always taken
