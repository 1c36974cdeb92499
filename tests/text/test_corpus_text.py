"""Real models that take integers (the corpus): MiniLM (token ids + attention mask) and magika (bytes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.backends import at_tensor
from gradsal.cli.main import main

pytest.importorskip("onnxruntime")
from corpus import real_model

MAGIKA_LOGITS = "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Dense_1/AddV2:0"
MINILM_POOLED = "461"  # the sentence embedding (the model's fourth output)


def _magika_bytes(data: bytes) -> np.ndarray:
    """magika's input: the first and last 1024 bytes, padded with its padding token 256."""
    row = np.full((1, 2048), 256, dtype=np.int32)
    head, tail = data[:1024], data[-1024:]
    row[0, :len(head)] = np.frombuffer(head, np.uint8)
    row[0, 2048 - len(tail):] = np.frombuffer(tail, np.uint8)
    return row


def test_magika_bytes_get_scores_at_its_one_hot_input() -> None:
    path = real_model("magika.onnx")
    data = b"#!/usr/bin/env python3\nimport sys\n\ndef main():\n    print('hello', sys.argv)\n" * 4
    at = at_tensor(path, _magika_bytes(data), output_name=MAGIKA_LOGITS)
    assert at.value.shape == (1, 2048, 257) and at.name.endswith("Cast_1:0")  # the one-hot, found
    logits = at.forward(at.value)
    attributions, delta = gs.integrated_gradients(at, at.value, baseline=at.baseline(token_id=256), n_steps=16,
                                                  return_delta=True)
    scores = gs.token_scores(attributions)
    used = len(data[:1024])
    assert np.all(scores[0, used:1024] == 0)  # padding equals the baseline there: nothing to attribute
    assert np.count_nonzero(scores[0, :used]) > used // 2
    gain = logits[0].max() - at.forward(at.baseline(token_id=256).astype(np.float32))[0, logits[0].argmax()]
    assert abs(delta[0]) < 0.15 * abs(gain)  # 16 Gauss-Legendre points on a real network leave ~9% here


def _minilm_inputs(text: str) -> dict[str, np.ndarray]:
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(real_model("minilm_tokenizer.json")))
    tokenizer.no_padding()
    encoding = tokenizer.encode(text)
    return {"input_ids": np.array([encoding.ids]), "attention_mask": np.array([encoding.attention_mask])}


def test_minilm_similarity_is_explained_per_token() -> None:
    path = real_model("minilm.onnx")
    at = at_tensor(path, _minilm_inputs("A man is playing a guitar."), output_name=MINILM_POOLED)
    assert at.name.endswith("word_embeddings/Gather_output_0")
    other = at_tensor(path, _minilm_inputs("Someone plays music."), output_name=MINILM_POOLED)
    reference = other.forward(other.value)
    cotangent = reference / np.linalg.norm(reference)  # explain <f(x), f(other)/|f(other)|>
    scores = gs.token_scores(gs.gradient_x_input(at, at.value, target=cotangent))
    assert scores.shape == (1, 9) and np.all(np.isfinite(scores)) and np.abs(scores).max() > 0


@pytest.mark.full
def test_minilm_explain_text_command(tmp_path, capsys) -> None:
    model, tokenizer = real_model("minilm.onnx"), real_model("minilm_tokenizer.json")
    status = main(["explain-text", str(model), "A man is playing a guitar.", "--tokenizer", str(tokenizer),
                   "--output-name", MINILM_POOLED, "--similar-to", "Someone plays music.", "--steps", "16",
                   "--out", str(tmp_path)])
    assert status == 0
    result = json.loads((tmp_path / "tokens.json").read_text())
    assert [t["token"] for t in result["tokens"]][:3] == ["[CLS]", "a", "man"]
    assert abs(result["completeness_gap"]) < 0.01 * abs(sum(t["score"] for t in result["tokens"]))


def test_magika_bytes_command(tmp_path, capsys) -> None:
    model = real_model("magika.onnx")
    sample = tmp_path / "hello.py"
    sample.write_text("import sys\n\nprint('hello', sys.argv)\n")
    status = main(["explain-text", str(model), "--bytes", str(sample), "--layout", "head-tail", "--pad-value", "256",
                   "--output-name", MAGIKA_LOGITS, "--method", "gradxinput", "--out", str(tmp_path / "out")])
    assert status == 0
    result = json.loads((tmp_path / "out" / "tokens.json").read_text())
    assert "".join(t["token"] for t in result["tokens"]).startswith("import sys\\x0a")
    assert any(t["score"] != 0 for t in result["tokens"])
