"""gradsal explain-text: the shipped text classifier (demo) end to end, its outputs and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradsal.cli.main import main

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers", reason="explain-text reads tokenizers with the text extra")
torch = pytest.importorskip("torch")

TEXT = "the plot was not very good ."


def test_demo_writes_terminal_html_and_json(tmp_path, capsys) -> None:
    from text_helpers import forward_from_embedding

    from gradsal.reference_models import load_text_classifier
    from gradsal.reference_models.train_text import encode, vocabulary

    assert main(["explain-text", "demo", TEXT, "--out", str(tmp_path), "--steps", "64"]) == 0
    printed = capsys.readouterr().out
    assert "class negative" in printed and "\x1b[" not in printed  # not a terminal: plain text
    assert "not(+" in printed
    result = json.loads((tmp_path / "tokens.json").read_text())
    assert [t["token"] for t in result["tokens"]] == TEXT.split()
    # completeness against the torch model itself: the scores sum to logit(text) - logit(pad embeddings)
    net = load_text_classifier("torch").double()
    ids = torch.from_numpy(encode([TEXT], vocabulary()))
    with torch.no_grad():
        embedded = net.embedding(ids)
        gain = (forward_from_embedding(torch, net, embedded, ids)
                - forward_from_embedding(torch, net, net.embedding(torch.zeros_like(ids)), ids))[0, 0].item()
    assert abs(sum(t["score"] for t in result["tokens"]) - gain) < 1e-4 * abs(gain)
    page = (tmp_path / "tokens.html").read_text()
    assert page.count('class="t"') == len(TEXT.split()) and "raises the output" in page
    assert 'title="' + f"{result['tokens'][3]['score']:+.4g}" + '"' in page


def test_colour_when_asked_and_l2_scores(tmp_path, capsys) -> None:
    assert main(["explain-text", "demo", TEXT, "--out", str(tmp_path), "--color", "always", "--reduce", "l2",
                 "--method", "gradxinput"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b[" in printed and "48;2;" in printed
    scores = [t["score"] for t in json.loads((tmp_path / "tokens.json").read_text())["tokens"]]
    assert min(scores) >= 0


def test_html_text_keeps_its_contrast() -> None:
    from gradsal.cli import text_render

    for score in np.linspace(-1, 1, 41):
        rgb = text_render._blend(score, abs(score))
        ink = 1.0 if text_render.white_text_on(rgb) else 0.0
        light, dark = sorted([text_render.relative_luminance(rgb), ink], reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5


@pytest.mark.parametrize(("argv", "message"), [
    (["explain-text", "demo"], "needs the TEXT"),
    (["explain-text", "missing.onnx", "hi"], "does not exist"),
    (["explain-text", "demo", "hi", "--baseline", "blur"], "--baseline 'blur'"),
    (["explain-text", "demo", "hi", "--target", "7"], "out of range"),
    (["explain-text", "demo", "hi", "--tokenizer", "nowhere.json"], "does not exist"),
])
def test_errors_are_one_line(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
