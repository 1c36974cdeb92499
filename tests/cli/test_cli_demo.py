"""``gradsal demo``: the real entry point in a subprocess, on the shipped reference models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradsal import core
from gradsal.reference_models import zoo

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("onnxruntime")

DIGIT_PANEL = 32 * 8  # side_by_side enlarges a 32x32 digit 8 times (nearest), so each panel is 256 px
METHODS = 5  # vanilla, SmoothGrad, IG, guided backprop, Grad-CAM: one row each


def run_demo(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradsal.cli.main", "demo", "--out", str(out)], capture_output=True,
                          text=True, timeout=180)


def demo_without(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: Path,
                 *modules: str) -> tuple[int, str, str]:
    """``gradsal demo`` in-process with ``modules`` unimportable, as if they were not installed (fast: the
    frameworks this process has imported already need no second import)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    from gradsal.cli.main import main

    status = main(["demo", "--out", str(out)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def printed_pngs(stdout: str) -> list[Path]:
    return [Path(line.strip()) for line in stdout.splitlines() if line.strip().endswith(".png")]


def expected_files(backends: tuple[str, ...]) -> set[str]:
    labels = [int(s["label"]) for s in zoo.metadata("digits_cnn")["samples"]]
    return {f"digit_{d}_{b}.png" for d in labels for b in backends} | {f"tabular_{backends[0]}.png"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("demo") / "pictures"  # a folder that does not exist yet
    return run_demo(out), out


def test_demo_writes_the_pictures_it_prints(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = demo
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    printed = printed_pngs(result.stdout)
    assert {p.name for p in printed} == expected_files(("onnx", "torch"))
    assert {p.name for p in out.iterdir()} == {p.name for p in printed}
    assert all(p.parent == out for p in printed)


def test_demo_digit_figures_are_five_rows_of_three_panels(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = demo
    sizes = set()
    for file in sorted(out.glob("digit_*.png")):
        with Image.open(file) as picture:
            picture.verify()  # a complete, valid PNG
        with Image.open(file) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB"
            sizes.add(picture.size)
            pixels = np.asarray(picture).astype(int)
        width, height = picture.size
        assert width >= 3 * DIGIT_PANEL and height >= METHODS * DIGIT_PANEL
        colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 40  # colour-mapped map and overlay pixels
        assert colourful.mean() > 0.2, f"{file.name}: the saliency panels are missing or grey"
        packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
        assert len(np.unique(packed)) > 500, f"{file.name} is nearly uniform"
    assert len(sizes) == 1, f"the digit figures differ in size: {sizes}"


def test_demo_both_backends_draw_the_same_maps(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The ONNX and the torch figure of a digit differ only in their captions' text (the maps agree to ~1e-7)."""
    _, out = demo
    for onnx_file in sorted(out.glob("digit_*_onnx.png")):
        torch_file = onnx_file.with_name(onnx_file.name.replace("_onnx", "_torch"))
        a = np.asarray(Image.open(onnx_file)).astype(int)
        b = np.asarray(Image.open(torch_file)).astype(int)
        assert a.shape == b.shape
        differ = np.abs(a - b).max(axis=2) > 3
        assert differ.mean() < 0.03, f"{onnx_file.name} vs {torch_file.name}: {differ.mean():.1%} of pixels differ"


def test_demo_tabular_ranking_matches_the_api(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The printed top features equal integrated gradients computed here with the torch model (the demo uses ONNX)."""
    result, out = demo
    with Image.open(out / "tabular_onnx.png") as chart:
        assert chart.mode == "RGB" and chart.width >= 600 and chart.height >= 10 * 22
    rows = zoo.sample_tabular()
    model = zoo.load_tabular_mlp("torch")
    logits = core.as_backend(model).forward(rows.features[:1])[0]
    guess = int(logits.argmax())
    contrast = np.array([1.0, -1.0] if guess == 0 else [-1.0, 1.0], dtype=np.float32)
    expected = core.integrated_gradients(model, rows.features[:1], contrast, n_steps=50)[0]
    top = dict(core.rank_features(expected, rows.feature_names, 10))
    pattern = re.compile(r"^\s+(\d+)\s{2}(.+?)\s{2,}([+-][0-9.e+-]+)\s")
    printed = {}
    for line in result.stdout.splitlines():
        match = pattern.match(line)
        if match and match.group(2) in rows.feature_names:
            printed[match.group(2)] = float(match.group(3))
    assert printed.keys() == top.keys()
    for name, value in top.items():
        assert printed[name] == pytest.approx(value, rel=6e-3, abs=5e-3), name
    assert f"predicted {rows.class_names[guess]}" in result.stdout


def test_demo_reports_backend_agreement(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = demo
    match = re.search(r"differ by at most ([0-9.e+-]+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) < 1e-5


def test_demo_without_torch_runs_onnx_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    status, out, _ = demo_without(monkeypatch, capsys, tmp_path, "torch")
    assert status == 0
    assert "PyTorch is not installed" in out
    assert {p.name for p in tmp_path.iterdir()} == expected_files(("onnx",))
    assert {p.name for p in printed_pngs(out)} == expected_files(("onnx",))
    assert "Trust check skipped" in out


def test_demo_without_onnx_runs_torch_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    status, out, _ = demo_without(monkeypatch, capsys, tmp_path, "onnx", "onnxruntime")
    assert status == 0
    assert "ONNX Runtime is not installed" in out
    assert {p.name for p in tmp_path.iterdir()} == expected_files(("torch",))
    assert torch.get_num_threads() == threads  # the demo's single-thread setting is undone


def test_demo_without_any_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = demo_without(monkeypatch, capsys, tmp_path / "out", "torch", "onnx", "onnxruntime")
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradsal: error:"), err
    assert "pip install 'gradsal[all]'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_demo_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    result = run_demo(target)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file" in lines[0], result.stderr
    assert target.read_text() == "not a folder"
