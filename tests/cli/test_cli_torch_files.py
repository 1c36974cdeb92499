"""PyTorch files on the command line: state_dicts with ``--model-class``, what is said about pickles, and a
``torch.export`` program with a fixed batch."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gradsal import core

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
from gradsal.cli.main import main  # noqa: E402

ARCHITECTURE = textwrap.dedent('''
    import torch


    class TinyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.act = torch.nn.ReLU()
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.head = torch.nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return self.head(self.pool(self.act(self.features(x)))).flatten(1)


    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(3, 3)
''')


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the user's architecture (``tinynet_arch.py``), a state_dict and two images."""
    (tmp_path / "tinynet_arch.py").write_text(ARCHITECTURE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinynet_arch", None)
    import tinynet_arch

    torch.manual_seed(0)
    torch.save(tinynet_arch.TinyNet().state_dict(), tmp_path / "tiny.pth")
    for seed in (0, 1):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"im{seed}.png")
    return tmp_path


def loaded_net(folder: Path) -> torch.nn.Module:
    import tinynet_arch

    net = tinynet_arch.TinyNet()
    net.load_state_dict(torch.load(folder / "tiny.pth", weights_only=True))
    return net.eval()


def images(folder: Path, names=("im0.png", "im1.png")) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / n), np.float32).transpose(2, 0, 1) / 255.0 for n in names])


def run(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *phrases: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("gradsal: error:"), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def saved_maps(out: Path) -> np.ndarray:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return np.stack([np.load(out / row["files"][0]) for row in summary])


def test_state_dict_with_model_class(project: Path, capsys) -> None:
    status, _, err = run(capsys, "explain", "tiny.pth", "im0.png", "im1.png", "--model-class",
                         "tinynet_arch:TinyNet", "--format", "npy", "json", "--out", "out")
    assert status == 0, err
    expected = core.vanilla_gradient(loaded_net(project), images(project))
    np.testing.assert_allclose(saved_maps(project / "out"), expected, rtol=1e-4, atol=1e-7)


def test_layer_auto_on_a_module(project: Path, capsys) -> None:
    status, _, err = run(capsys, "explain", "tiny.pth", "im0.png", "--model-class", "tinynet_arch:TinyNet",
                         "--method", "gradcam", "--layer", "auto", "--format", "npy", "json", "--out", "out")
    assert status == 0, err
    assert "Grad-CAM on 'act'" in err  # not 'head', the 1x1 convolution after pooling
    expected = core.grad_cam(loaded_net(project), images(project, ["im0.png"]), layer="act")
    np.testing.assert_allclose(saved_maps(project / "out"), expected, rtol=1e-4, atol=1e-7)


def test_state_dict_without_model_class_says_what_to_do(project: Path, capsys) -> None:
    status, _, err = run(capsys, "explain", "tiny.pth", "im0.png", "--out", "out")
    assert_one_line_error(status, err, "--model-class", "torch.jit.trace", "torch.export.export", "torch.jit.script")
    assert "corrupted" not in err


@pytest.mark.parametrize("model_class, phrase", [
    ("tinynet_arch:Other", "do not fit --model-class tinynet_arch:Other"),
    ("tinynet_arch", "package.module:Class"),
    ("no_such_module_here:Net", "cannot import"),
    ("tinynet_arch:Missing", "has no Missing"),
])
def test_bad_model_class(project: Path, capsys, model_class: str, phrase: str) -> None:
    status, _, err = run(capsys, "explain", "tiny.pth", "im0.png", "--model-class", model_class, "--out", "out")
    assert_one_line_error(status, err, phrase)


def test_static_batch_export_suggests_batch_size_one(project: Path, capsys) -> None:
    net = loaded_net(project)
    program = torch.export.export(net, (torch.zeros(1, 3, 8, 8),))
    torch.export.save(program, project / "tiny.pt2")
    status, _, err = run(capsys, "explain", "tiny.pt2", "im0.png", "im1.png", "--out", "out")
    assert_one_line_error(status, err, "--batch-size 1", "dynamic_shapes")
    status, _, err = run(capsys, "explain", "tiny.pt2", "im0.png", "im1.png", "--batch-size", "1", "--format",
                         "npy", "json", "--out", "out")
    assert status == 0, err
    expected = core.vanilla_gradient(net, images(project))
    np.testing.assert_allclose(saved_maps(project / "out"), expected, rtol=1e-4, atol=1e-7)


def test_onnx_flags_on_a_torch_file(project: Path, capsys) -> None:
    status, _, err = run(capsys, "explain", "tiny.pth", "im0.png", "--input-name", "x", "--out", "out")
    assert_one_line_error(status, err, "--input-name name ONNX tensors")


def test_evaluate_on_a_static_batch_export_says_to_export_it_dynamic(project: Path, capsys) -> None:
    torch.export.save(torch.export.export(loaded_net(project), (torch.zeros(1, 3, 8, 8),)), project / "tiny.pt2")
    status, _, err = run(capsys, "evaluate", "tiny.pt2", "im0.png", "--methods", "vanilla", "--out", "ev")
    assert_one_line_error(status, err, "fixed batch of 1", "dynamic_shapes")


def test_inspect_a_state_dict_and_a_torchscript_file(project: Path, capsys) -> None:
    status, out, err = run(capsys, "inspect", "tiny.pth", "--model-class", "tinynet_arch:TinyNet", "--size", "8")
    assert status == 0, err
    layers = out.split("Grad-CAM layers")[1]
    assert "features: (1, 4, 8, 8)" in layers and "act: (1, 4, 8, 8)" in layers and "head" not in layers
    torch.jit.trace(loaded_net(project), torch.zeros(1, 3, 8, 8)).save(str(project / "tiny.pt"))
    status, out, err = run(capsys, "inspect", "tiny.pt")
    assert status == 0 and "pass --layer NAME" in out, out + err
    status, _, err = run(capsys, "explain", "tiny.pt", "im0.png", "--method", "gradcam", "--layer", "auto",
                         "--out", "out")
    assert_one_line_error(status, err, "pass --layer NAME")
