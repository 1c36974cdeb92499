"""The shipped text classifier: its tokenizer, its two formats and its recorded accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import gradsal.reference_models as rm
from gradsal.reference_models.train_text import N_TEST, SAMPLE_SENTENCES, dataset, encode, vocabulary

torch = pytest.importorskip("torch")


def test_the_tokenizer_file_encodes_as_training_did() -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="the text extra")
    tokenizer = tokenizers.Tokenizer.from_file(str(rm.text_tokenizer_path()))
    for text in [*SAMPLE_SENTENCES, "Honestly, THE plot was not good!", "an unknown word"]:
        np.testing.assert_array_equal(tokenizer.encode(text).ids, encode([text], vocabulary())[0])


def test_torch_and_onnx_agree_and_the_accuracy_is_as_recorded() -> None:
    ort = pytest.importorskip("onnxruntime")
    meta = rm.text_metadata()
    _, ids, labels = dataset(N_TEST, meta["seed"] + 1, vocabulary())
    net = rm.load_text_classifier("torch")
    with torch.no_grad():
        logits = net(torch.from_numpy(ids)).numpy()
    assert (logits.argmax(1) == labels).mean() == meta["test_accuracy"]
    session = ort.InferenceSession(str(rm.load_text_classifier("onnx")), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input_ids": ids[:64]})
    np.testing.assert_allclose(onnx_logits, logits[:64], rtol=1e-5, atol=1e-5)
