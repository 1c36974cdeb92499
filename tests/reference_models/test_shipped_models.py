"""The shipped reference models: files, recorded accuracy recomputed, ONNX and torch agreeing, samples.

Independent references: the accuracy is recomputed from the shipped test split (stored next to the
models, so no scikit-learn is needed) by both onnxruntime and torch; where scikit-learn is installed the
shipped split is checked against its data sets; the digits' upsampling is checked against pillow's
bilinear resize and torch's ``interpolate``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import gradsal.reference_models as rm  # noqa: E402
from gradsal.core.errors import InputError  # noqa: E402
from gradsal.reference_models import architectures  # noqa: E402

DIGITS = rm.metadata("digits_cnn")
TABULAR = rm.metadata("tabular_mlp")


@pytest.fixture(scope="module")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits test split, upsampled here with pillow (8x8 / 16, bilinear to 32x32), as float32."""
    from PIL import Image

    small = np.load(rm.data_path(DIGITS["test_file"]))
    images = [np.asarray(Image.fromarray((im / 16.0).astype(np.float32)).resize((32, 32), Image.BILINEAR))
              for im in small]
    return np.stack(images)[:, None].astype(np.float32), np.array(DIGITS["test_labels"])


@pytest.fixture(scope="module")
def tabular_test() -> tuple[np.ndarray, np.ndarray]:
    """The shipped breast-cancer test split standardised here with the stored statistics, as float32."""
    raw = np.load(rm.data_path(TABULAR["test_file"]))
    stats = TABULAR["normalization"]
    x = (raw - np.array(stats["mean"])) / np.array(stats["std"])
    return x.astype(np.float32), np.array(TABULAR["test_labels"])


def onnx_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def torch_outputs(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_files_exist_and_are_small():
    names = ["metadata.json", "tabular_samples.npy"]
    for entry in (DIGITS, TABULAR):
        names += [entry["onnx"], entry["state_dict"], entry["test_file"]]
    names += [s["file"] for s in DIGITS["samples"]]
    sizes = {name: rm.data_path(name).stat().st_size for name in names}
    assert all(size > 0 for size in sizes.values()), sizes
    everything = sum(p.stat().st_size for p in rm.data_path("metadata.json").parent.iterdir() if p.is_file())
    assert everything < 2 * 1024 * 1024


def test_metadata_records_what_the_issue_asks_for():
    meta = rm.metadata()
    assert meta["opset"] == 17 and meta["seed"] == 0
    assert DIGITS["input_shape"] == [1, 32, 32] and DIGITS["class_names"] == [str(i) for i in range(10)]
    assert TABULAR["input_shape"] == [30] and TABULAR["class_names"] == ["malignant", "benign"]
    assert len(TABULAR["feature_names"]) == 30 and len(TABULAR["normalization"]["std"]) == 30
    for entry in (DIGITS, TABULAR):
        assert 0.9 < entry["test_accuracy"] <= 1.0
        assert len(entry["test_indices"]) == entry["n_test"] == len(set(entry["test_indices"]))
        assert len(entry["test_labels"]) == entry["n_test"]


@pytest.mark.parametrize("name", ["digits_cnn", "tabular_mlp"])
def test_state_dict_loads_with_weights_only(name):
    entry = rm.metadata(name)
    state = torch.load(rm.data_path(entry["state_dict"]), weights_only=True)
    module = getattr(architectures, entry["architecture"])(**entry["kwargs"])
    assert set(state) == set(module.state_dict())
    assert all(t.dtype in (torch.float32, torch.int64) for t in state.values())
    loaded = rm.load_model(name)
    assert not loaded.training
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key])


def test_upsampling_agrees_with_pillow_and_torch(digits_test):
    from gradsal.reference_models.train import upsample_digits

    small = np.load(rm.data_path(DIGITS["test_file"]))
    assert small.dtype == np.uint8 and small.shape == (DIGITS["n_test"], 8, 8) and small.max() <= 16
    x, y = rm.holdout_split("digits_cnn")
    np.testing.assert_allclose(x, digits_test[0], atol=1e-6)
    np.testing.assert_allclose(rm.upsample_digits(small), upsample_digits(small), atol=1e-12)
    np.testing.assert_array_equal(y, digits_test[1])


def test_shipped_splits_are_the_scikit_learn_rows():
    datasets = pytest.importorskip("sklearn.datasets")
    digits, cancer = datasets.load_digits(), datasets.load_breast_cancer()
    np.testing.assert_array_equal(np.load(rm.data_path(DIGITS["test_file"])), digits.images[DIGITS["test_indices"]])
    np.testing.assert_array_equal(DIGITS["test_labels"], digits.target[DIGITS["test_indices"]])
    np.testing.assert_array_equal(np.load(rm.data_path(TABULAR["test_file"])), cancer.data[TABULAR["test_indices"]])
    np.testing.assert_array_equal(TABULAR["test_labels"], cancer.target[TABULAR["test_indices"]])
    assert TABULAR["feature_names"] == list(cancer.feature_names)
    assert TABULAR["class_names"] == list(cancer.target_names)


def test_digits_accuracy_recomputed_from_shipped_files(digits_test):
    x, y = digits_test
    torch_logits = torch_outputs(rm.load_digits_cnn(), x)
    onnx_logits = onnx_outputs(rm.load_digits_cnn("onnx"), x)
    assert (torch_logits.argmax(1) == y).mean() == pytest.approx(DIGITS["test_accuracy"], abs=1e-12)
    assert (onnx_logits.argmax(1) == y).mean() == pytest.approx(DIGITS["test_accuracy"], abs=1e-12)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


def test_tabular_accuracy_recomputed_from_shipped_files(tabular_test):
    x, y = tabular_test
    np.testing.assert_allclose(rm.holdout_split("tabular_mlp")[0], x, atol=1e-6)
    torch_logits = torch_outputs(rm.load_tabular_mlp(), x)
    onnx_logits = onnx_outputs(rm.load_tabular_mlp("onnx"), x)
    assert (torch_logits.argmax(1) == y).mean() == pytest.approx(TABULAR["test_accuracy"], abs=1e-12)
    assert (onnx_logits.argmax(1) == y).mean() == pytest.approx(TABULAR["test_accuracy"], abs=1e-12)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["digits_cnn", "tabular_mlp"])
def test_onnx_files_are_opset_17_inference_graphs_with_dynamic_batch(name):
    entry = rm.metadata(name)
    model = onnx.load(str(rm.data_path(entry["onnx"])))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}.get("", 17) == 17
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    for node in model.graph.node:  # batch norm in inference mode: folded away or training_mode = 0
        assert all(not (a.name == "training_mode" and a.i) for a in node.attribute)
        assert node.op_type != "Dropout"
    rng = np.random.default_rng(0)
    for n in (1, 7):
        x = rng.random((n, *entry["input_shape"]), dtype=np.float32)
        np.testing.assert_allclose(onnx_outputs(rm.data_path(entry["onnx"]), x),
                                   torch_outputs(rm.load_model(name), x), atol=1e-4, rtol=0)


def test_gradcam_layer_names_exist():
    model = onnx.load(str(rm.load_digits_cnn("onnx")))
    assert DIGITS["gradcam_onnx_tensor"] in {o for n in model.graph.node for o in n.output}
    assert DIGITS["gradcam_layer"] in dict(rm.load_digits_cnn().named_modules())


def test_sample_images_are_the_dataset_images_with_their_labels(digits_test):
    samples = rm.sample_images()
    assert samples.images.shape == (len(DIGITS["samples"]), 1, 32, 32) and samples.images.dtype == np.float32
    for image, label, spec in zip(samples.images, samples.labels, DIGITS["samples"], strict=True):
        position = DIGITS["test_indices"].index(spec["dataset_index"])
        assert DIGITS["test_labels"][position] == label == spec["label"]
        np.testing.assert_allclose(image[0], digits_test[0][position, 0], atol=0.5 / 255 + 1e-6)
    predicted = torch_outputs(rm.load_digits_cnn(), samples.images).argmax(1)
    assert (predicted == samples.labels).all()


def test_sample_rows_are_standardised_test_rows(tabular_test):
    rows = rm.sample_tabular()
    index = TABULAR["samples"]["dataset_indices"]
    positions = [TABULAR["test_indices"].index(i) for i in index]
    assert rows.features.shape == (len(index), 30) and rows.features.dtype == np.float32
    np.testing.assert_array_equal(rows.raw, np.load(rm.data_path(TABULAR["test_file"]))[positions])
    np.testing.assert_array_equal(rows.labels, tabular_test[1][positions])
    np.testing.assert_allclose(rows.features, tabular_test[0][positions], atol=1e-6)
    np.testing.assert_allclose(rows.features, rm.standardize_tabular(rows.raw), atol=1e-6)
    assert rows.feature_names == TABULAR["feature_names"] and rows.class_names == ["malignant", "benign"]


def test_loader_errors_name_the_choices():
    with pytest.raises(InputError, match="digits_cnn"):
        rm.load_model("resnet")
    with pytest.raises(InputError, match="'torch'"):
        rm.load_digits_cnn(format="keras")
    with pytest.raises(InputError, match=r"metadata\.json"):
        rm.data_path("nope.onnx")
    with pytest.raises(InputError, match=r"\(N, 30\)"):
        rm.standardize_tabular(np.zeros((2, 3)))
    with pytest.raises(InputError, match="tabular_mlp"):
        rm.holdout_split("mnist")
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        rm.upsample_digits(np.zeros(8))


def test_metadata_returns_a_fresh_copy():
    first = rm.metadata("digits_cnn")
    first["test_accuracy"] = -1.0
    assert rm.metadata("digits_cnn")["test_accuracy"] == DIGITS["test_accuracy"]


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, gradsal.reference_models as rm; rm.load_digits_cnn('onnx'); rm.sample_tabular(); "
            "print('torch' in sys.modules, 'PIL' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
