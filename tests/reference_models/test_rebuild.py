"""``python -m gradsal.reference_models.train`` rebuilds the shipped files: same weights to 1e-6, same metadata.

The retraining takes about 10 s of one core, so it runs in the normal suite (one module-scoped build); it
needs scikit-learn (the ``train`` extra) and is skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import gradsal.reference_models as rm  # noqa: E402
from gradsal.reference_models import train  # noqa: E402

SHIPPED = rm.data_path("metadata.json").parent


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """A fresh build in a temporary folder, through the module's command line, in a child process."""
    pytest.importorskip("sklearn", reason="retraining needs scikit-learn's bundled data (the 'train' extra)")
    out = tmp_path_factory.mktemp("reference_models")
    result = subprocess.run([sys.executable, "-m", "gradsal.reference_models.train", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    return out


def test_same_file_set(rebuilt):
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(p.name for p in SHIPPED.iterdir() if p.is_file())


def test_metadata_is_identical(rebuilt):
    assert json.loads((rebuilt / "metadata.json").read_text()) == rm.metadata()


@pytest.mark.parametrize("name", ["digits_cnn.pt", "tabular_mlp.pt", "text_classifier.pt"])
def test_state_dicts_agree_to_1e_6(rebuilt, name):
    fresh = torch.load(rebuilt / name, weights_only=True)
    shipped = torch.load(SHIPPED / name, weights_only=True)
    assert fresh.keys() == shipped.keys()
    for key in shipped:
        torch.testing.assert_close(fresh[key], shipped[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["digits_cnn.onnx", "tabular_mlp.onnx", "text_classifier.onnx"])
def test_onnx_graphs_agree(rebuilt, name):
    from onnx import numpy_helper

    fresh, shipped = (onnx.load(str(folder / name)) for folder in (rebuilt, SHIPPED))
    assert [(n.op_type, list(n.input), list(n.output)) for n in fresh.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in shipped.graph.node]
    weights = {t.name: numpy_helper.to_array(t) for t in shipped.graph.initializer}
    for tensor in fresh.graph.initializer:
        np.testing.assert_allclose(numpy_helper.to_array(tensor), weights[tensor.name], atol=1e-6, rtol=0)


def test_samples_are_identical(rebuilt):
    from PIL import Image

    for spec in rm.metadata("digits_cnn")["samples"]:
        with Image.open(rebuilt / spec["file"]) as fresh, Image.open(SHIPPED / spec["file"]) as shipped:
            assert fresh.mode == shipped.mode == "L"
            np.testing.assert_array_equal(np.asarray(fresh), np.asarray(shipped))
    np.testing.assert_array_equal(np.load(rebuilt / "tabular_samples.npy"), np.load(SHIPPED / "tabular_samples.npy"))


def test_training_settings_do_not_leak_into_the_caller():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    with train.deterministic_torch(123):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        torch.rand(3)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), state)


def test_split_is_disjoint_and_covers_everything():
    train_rows, test_rows = train.split_indices(101, seed=0)
    assert len(test_rows) == 20 and len(np.intersect1d(train_rows, test_rows)) == 0
    np.testing.assert_array_equal(np.union1d(train_rows, test_rows), np.arange(101))


def test_text_classifier_metadata_and_tokenizer_are_identical(rebuilt):
    for name in ("text_classifier.json", "text_tokenizer.json"):
        assert json.loads((rebuilt / name).read_text()) == json.loads((SHIPPED / name).read_text())
