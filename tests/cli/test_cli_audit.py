"""``gradsal audit`` on a planted shortcut: the audit must find it, and must not find it where there is none.

Each data set and model is built here (see audit_data.py); the audit runs in-process through the
command line's ``main``. Gradient x input on a ReLU MLP trained on images centred at 0.5.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

sys.path.insert(0, str(Path(__file__).parent))
import audit_data

from gradsal.cli.main import main


def build(root: Path, *, shortcut: bool, n_audit: int = 30) -> tuple[Path, dict[str, Path]]:
    model = root / "model.pt"
    accuracy = audit_data.train_model(audit_data.make_images(150, shortcut=shortcut, seed=0), model)
    assert accuracy > 0.95, f"the small model did not learn its training set ({accuracy:.2f})"
    return model, audit_data.write_dataset(audit_data.make_images(n_audit, shortcut=shortcut, seed=1), root / "data")


def audit_args(model: Path, paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["audit", str(model), str(paths["images"]), "--masks", str(paths["masks"]), "--forbidden",
            str(paths["forbidden"]), "--groups", str(paths["groups"]), "--group-column", "group",
            "--method", "gradxinput", "--mean", "0.5", "--bootstrap", "500", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("shortcut")
    model, paths = build(root, shortcut=True)
    assert main(audit_args(model, paths, root / "out")) == 0
    return model, paths, root / "out"


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_the_audit_finds_the_planted_shortcut(shortcut: tuple[Path, dict[str, Path], Path]) -> None:
    summary = summary_of(shortcut[2])
    groups = summary["groups"]
    # group A (the marker decides): much of the saliency on the marker; group B (the bar decides): on the bar
    assert groups["A"]["forbidden_share"]["mean"]["estimate"] > 0.3
    assert groups["B"]["forbidden_share"]["mean"]["estimate"] < 0.1
    assert groups["B"]["mass_accuracy"]["mean"]["estimate"] > 0.7
    assert groups["A"]["mass_accuracy"]["mean"]["estimate"] < groups["B"]["mass_accuracy"]["mean"]["estimate"] - 0.2
    on_marker = summary["gaps"]["forbidden_share"]["A - B"]
    on_object = summary["gaps"]["mass_accuracy"]["A - B"]
    assert on_marker["low"] > 0, on_marker  # the interval excludes zero
    assert on_object["high"] < 0, on_object


def test_a_model_without_the_shortcut_does_not_show_it(tmp_path: Path) -> None:
    model, paths = build(tmp_path, shortcut=False)
    assert main(audit_args(model, paths, tmp_path / "out")) == 0
    groups = summary_of(tmp_path / "out")["groups"]
    for group in ("A", "B"):
        assert groups[group]["forbidden_share"]["mean"]["estimate"] < 0.05
        assert groups[group]["mass_accuracy"]["mean"]["estimate"] > 0.8
    gap = summary_of(tmp_path / "out")["gaps"]["mass_accuracy"]["A - B"]
    assert abs(gap["estimate"]) < 0.05


def test_the_outputs(shortcut: tuple[Path, dict[str, Path], Path]) -> None:
    out = shortcut[2]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 60 and {r["group"] for r in rows} == {"A", "B"}
    assert set(rows[0]) == {"image", "group", "predicted", "target", "score", "mass_accuracy", "rank_accuracy",
                            "pointing_game", "energy_pointing_game", "forbidden_share"}
    saliency = np.load(out / "maps" / f"{rows[0]['image']}.npy")
    assert saliency.shape == (16, 16) and saliency.dtype == np.float16 and saliency.max() == 1.0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 12 and "<svg" in page and "CI excludes 0" in page
    try:
        import pyarrow.parquet
    except ImportError:
        return  # Parquet is written only where pyarrow is installed
    table = pyarrow.parquet.read_table(out / "results.parquet")
    assert table.num_rows == 60 and sorted(table.column("image").to_pylist()) == sorted(r["image"] for r in rows)


def test_the_row_matches_metrics_computed_here(shortcut: tuple[Path, dict[str, Path], Path]) -> None:
    """An independent recomputation of one row: torch autograd for gradient x input, masks read by PIL."""
    import torch
    from PIL import Image

    model_path, paths, out = shortcut
    row = json.loads((out / "results.jsonl").read_text(encoding="utf-8").splitlines()[0])
    image = np.asarray(Image.open(paths["images"] / row["image"]), dtype=np.float64) / 255.0
    x = torch.tensor((image - 0.5)[None, None], dtype=torch.float32, requires_grad=True)
    logits = torch.jit.load(str(model_path))(x)
    logits[0, row["predicted"]].backward()
    saliency = (x.grad * x).abs()[0, 0].detach().double().numpy()
    region = np.asarray(Image.open(paths["masks"] / row["image"])) > 0
    inside = saliency[region].sum() / saliency.sum()
    assert row["mass_accuracy"] == pytest.approx(inside, rel=1e-5)
    assert row["target"] == row["predicted"] == int(logits.argmax())


def test_a_restart_skips_done_images_and_drops_a_cut_line(shortcut: tuple[Path, dict[str, Path], Path],
                                                          tmp_path: Path) -> None:
    model, paths, first = shortcut
    out = tmp_path / "out"
    out.mkdir()
    lines = (first / "results.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:50]) + lines[50][:20], encoding="utf-8")  # killed mid-line
    (out / "audit.json").write_text((first / "audit.json").read_text(encoding="utf-8"), encoding="utf-8")
    (out / "maps").mkdir()
    for line in lines[:50]:
        name = f"{json.loads(line)['image']}.npy"
        shutil.copy(first / "maps" / name, out / "maps" / name)
        os.utime(out / "maps" / name, (0, 0))
    assert main(audit_args(model, paths, out)) == 0
    again = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(again) == 60 and sorted(again) == sorted(line.rstrip("\n") for line in lines)
    written = [p for p in (out / "maps").iterdir() if p.stat().st_mtime > 0]
    assert len(written) == 10  # only the ten images left were explained


def test_a_restart_with_other_settings_is_refused(shortcut: tuple[Path, dict[str, Path], Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, paths, out = shortcut
    assert main(audit_args(model, paths, out, "--sign", "positive")) == 2
    assert "other settings (sign)" in capsys.readouterr().err


def test_a_missing_or_missized_mask_is_one_line_naming_the_image(shortcut: tuple[Path, dict[str, Path], Path],
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    model, paths, _ = shortcut
    masks = tmp_path / "masks"
    masks.mkdir()
    names = sorted(p.name for p in paths["masks"].iterdir())
    for name in names[1:]:
        (masks / name).write_bytes((paths["masks"] / name).read_bytes())
    broken = {**paths, "masks": masks}
    assert main(audit_args(model, broken, tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"image {names[0]} has no mask" in err
    Image.fromarray(np.zeros((12, 16), dtype=np.uint8)).save(masks / names[0])
    assert main(audit_args(model, broken, tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"image {names[0]}" in err and "12x16" in err and "16x16" in err


def test_gradcam_maps_are_upsampled_to_the_masks(tmp_path: Path) -> None:
    """Grad-CAM at the layer's 8x8, upsampled to the model's 32x32, then to the images' own 40x36."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from gradsal.reference_models import zoo

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        np.save(tmp_path / "masks" / f"{i}.npy", np.pad(np.ones((10, 10), dtype=bool), ((5, 25), (5, 21))))
    out = tmp_path / "out"
    assert main(["audit", str(zoo.data_path("digits_cnn.onnx")), str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--method", "gradcam", "--layer", "/block3/block3.2/Relu_output_0",
                 "--out", str(out), "--quiet", "--bootstrap", "50"]) == 0
    assert np.load(out / "maps" / "0.png.npy").shape == (40, 36)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(0 <= r["mass_accuracy"] <= 1 and r["forbidden_share"] is None for r in rows)


def test_the_ray_engine_without_ray_names_the_extra(shortcut: tuple[Path, dict[str, Path], Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, paths, _ = shortcut
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "gradsal.scale.ray_audit", raising=False)
    assert main(audit_args(model, paths, tmp_path / "out", "--engine", "ray")) == 2
    assert "pip install 'gradsal[scale]'" in capsys.readouterr().err


def test_groups_table_errors_are_one_line(shortcut: tuple[Path, dict[str, Path], Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, paths, _ = shortcut
    lines = paths["groups"].read_text(encoding="utf-8").splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\ufeff" + "\n".join(lines[:-1]) + "\n", encoding="utf-8")  # a BOM, as spreadsheets write
    assert main(audit_args(model, {**paths, "groups": short}, tmp_path / "a")) == 2
    missing = lines[-1].split(",")[0]
    assert f"image {missing} is not in the groups table" in capsys.readouterr().err
    assert main([*audit_args(model, paths, tmp_path / "b"), "--group-column", "site"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no column 'site'" in err and "--group-column" in err


# ------------------------------------------------------------------ the explain path's preprocessing
# Linear ONNX models built here (Flatten -> MatMul): the gradient of logit c is column c of the weights,
# so gradient x input and the model's scores are computed by hand from the weights and onnxruntime.
def linear_onnx(path: Path, input_shape: list, n_features: int, seed: int) -> tuple[Path, np.ndarray]:
    """``image`` of ``input_shape`` -> Flatten -> MatMul (n_features, 4) -> ``logits``; the weights."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(n_features, 4)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, weights


def write_images(root: Path, pictures: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, Path]:
    """PNG images (uint8, grey or RGB) and PNG masks under ``root``."""
    from PIL import Image

    paths = {"images": root / "images", "masks": root / "masks"}
    for folder in paths.values():
        folder.mkdir(parents=True)
    for name, picture in pictures.items():
        Image.fromarray(picture).save(paths["images"] / name)
        Image.fromarray(masks[name].astype(np.uint8) * 255).save(paths["masks"] / name)
    return paths


def run_audit(model: Path, paths: dict[str, Path], out: Path, *extra: str) -> dict[str, dict]:
    assert main(["audit", str(model), str(paths["images"]), "--masks", str(paths["masks"]), "--method",
                 "gradxinput", "--bootstrap", "20", "--quiet", "--out", str(out), *extra]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["image"]: row for row in rows}


def onnx_logits(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.astype(np.float32)})[0][0]


def assert_row_is(row: dict, out: Path, logits: np.ndarray, saliency: np.ndarray, mask: np.ndarray) -> None:
    """The row and the saved map against a hand computation (map on the image's own pixels)."""
    target = int(logits.argmax())
    assert row["predicted"] == row["target"] == target
    assert row["score"] == pytest.approx(float(logits[target]), rel=1e-6)
    assert row["mass_accuracy"] == pytest.approx(saliency[mask].sum() / saliency.sum(), rel=1e-5, abs=1e-9)
    saved = np.load(out / "maps" / f"{row['image']}.npy").astype(np.float64)
    np.testing.assert_allclose(saved, saliency / saliency.max(), atol=1e-3)


@pytest.mark.parametrize("declared, flags", [(["batch", 12, 10, 3], []),  # channels-last read from the shape
                                             (["batch", "h", "w", "c"], ["--layout", "NHWC"])])
def test_a_channels_last_caffe_model(tmp_path: Path, declared: list, flags: list[str]) -> None:
    """An NHWC model fed BGR in [0, 255] minus Caffe's means (--preset caffe-bgr), as the user asked."""
    model, weights = linear_onnx(tmp_path / "nhwc.onnx", declared, 12 * 10 * 3, seed=1)
    rng = np.random.default_rng(2)
    pictures = {f"{i}.png": rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for i in range(3)}
    masks = {name: np.pad(np.ones((5, 4), dtype=bool), ((i, 7 - i), (2 * i, 6 - 2 * i)))
             for i, name in enumerate(pictures)}
    rows = run_audit(model, write_images(tmp_path, pictures, masks), tmp_path / "out", "--preset", "caffe-bgr",
                     *flags)
    assert len(rows) == 3
    for name, picture in pictures.items():
        x = picture[:, :, ::-1].astype(np.float64) - np.array([104.0, 117.0, 123.0])  # BGR, 0..255, minus means
        logits = onnx_logits(model, x[None])
        column = weights[:, int(logits.argmax())].astype(np.float64).reshape(12, 10, 3)  # NHWC's flatten order
        saliency = np.abs(column * x).max(axis=2)
        assert_row_is(rows[name], tmp_path / "out", logits, saliency, masks[name])


def test_preset_mean_and_std_give_onnxruntimes_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--preset inception ([-1, 1]) with --mean / --std on top; a restart with another --std is refused."""
    model, weights = linear_onnx(tmp_path / "nchw.onnx", ["batch", 3, 8, 8], 3 * 8 * 8, seed=3)
    rng = np.random.default_rng(4)
    pictures = {f"{i}.png": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)}
    masks = {name: np.eye(8, dtype=bool) for name in pictures}
    paths = write_images(tmp_path, pictures, masks)
    flags = ["--preset", "inception", "--resize", "stretch", "--mean", "0.1", "0.2", "0.3", "--std", "0.5", "0.6",
             "0.7"]
    rows = run_audit(model, paths, tmp_path / "out", *flags)
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])
    for name, picture in pictures.items():
        x = ((-1.0 + 2.0 * picture / 255.0 - mean) / std).transpose(2, 0, 1)
        logits = onnx_logits(model, x[None])
        column = weights[:, int(logits.argmax())].astype(np.float64).reshape(3, 8, 8)
        assert_row_is(rows[name], tmp_path / "out", logits, np.abs(column * x).max(axis=0), masks[name])
    assert main(["audit", str(model), str(paths["images"]), "--masks", str(paths["masks"]), "--method",
                 "gradxinput", "--quiet", "--out", str(tmp_path / "out"), *flags[:-1], "0.8"]) == 2
    assert "other settings (preprocessing.std)" in capsys.readouterr().err


def test_a_centre_crop_maps_back_onto_the_images_own_pixels(tmp_path: Path) -> None:
    """8x16 grey images, an 8x8 model, --resize crop: the canvas shows columns 4..11 (no resampling), so the
    map there is the canvas map pixel for pixel and the columns cut away are 0."""
    model, weights = linear_onnx(tmp_path / "grey.onnx", ["batch", 1, 8, 8], 64, seed=5)
    rng = np.random.default_rng(6)
    pictures = {"seen.png": rng.integers(1, 256, (8, 16), dtype=np.uint8),
                "cut.png": rng.integers(1, 256, (8, 16), dtype=np.uint8)}
    seen, cut = np.zeros((8, 16), dtype=bool), np.zeros((8, 16), dtype=bool)
    seen[:, 4:8] = True  # inside the crop
    cut[:, :4] = True  # cut away by the crop
    rows = run_audit(model, write_images(tmp_path, pictures, {"seen.png": seen, "cut.png": cut}), tmp_path / "out",
                     "--resize", "crop")
    for name, picture in pictures.items():
        x = picture[:, 4:12] / 255.0
        logits = onnx_logits(model, x[None, None])
        column = weights[:, int(logits.argmax())].astype(np.float64).reshape(8, 8)
        saliency = np.zeros((8, 16))
        saliency[:, 4:12] = np.abs(column * x)
        mask = seen if name == "seen.png" else cut
        assert_row_is(rows[name], tmp_path / "out", logits, saliency, mask)
    assert rows["cut.png"]["mass_accuracy"] == 0 and rows["cut.png"]["pointing_game"] == 0


def test_settings_travel_to_a_new_worker(tmp_path: Path) -> None:
    """AuditSettings with a resolved Preprocessing survive pickling (Ray sends them to its actors) and a fresh
    Auditor built from the copy gives the command line's row."""
    import pickle

    from gradsal.cli.audit import row_to_json
    from gradsal.cli.audit_pipeline import AuditItem, Auditor, AuditSettings
    from gradsal.cli.preprocess import PRESETS, Preprocessing

    model, _ = linear_onnx(tmp_path / "nhwc.onnx", ["batch", 12, 10, 3], 12 * 10 * 3, seed=1)
    picture = np.random.default_rng(7).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    mask = np.zeros((12, 10), dtype=bool)
    mask[3:9, 2:6] = True
    paths = write_images(tmp_path, {"a.png": picture}, {"a.png": mask})
    row = run_audit(model, paths, tmp_path / "out", "--preset", "caffe-bgr")["a.png"]
    prep = Preprocessing(layout="NHWC", channels=3, size=(12, 10), **PRESETS["caffe-bgr"])
    settings = AuditSettings(model=str(model), method="gradxinput", preprocessing=prep)
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
    record = AuditItem(paths["images"] / "a.png", paths["masks"] / "a.png", None, "all").load()
    assert json.loads(row_to_json(Auditor(copy).audit(record)[0])) == row


def test_max_pixels_and_a_damaged_image_are_one_line_naming_the_image(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = linear_onnx(tmp_path / "nchw.onnx", ["batch", 3, 8, 8], 3 * 8 * 8, seed=3)
    picture = np.random.default_rng(8).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    paths = write_images(tmp_path, {"big.png": picture}, {"big.png": np.ones((8, 10), dtype=bool)})
    args = ["audit", str(model), str(paths["images"]), "--masks", str(paths["masks"]), "--quiet"]
    assert main([*args, "--max-pixels", "79", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image big.png: the image declares 10 x 8 = 80 pixels" in err
    assert "--max-pixels 80" in err
    (paths["images"] / "big.png").write_bytes(b"\x89PNG not really")
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image big.png: cannot read the image: not a format pillow reads" in err
