"""benchmarks/measure_lstm_floor.py replaces rules only inside its block: its lower-bound graphs leave out
what they claim to (the pool masks, the stepped recurrence), and gradsal's own rules are back afterwards,
so the exact graph it times is the one users get."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _floor_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("gradsal_lstm_floor", BENCHMARKS / "measure_lstm_floor.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_lower_bound_graphs_drop_what_they_name_and_restore_the_rules(tmp_path: Path) -> None:
    import onnx

    from gradsal.backends.onnx import rules
    from gradsal.backends.onnx._graph import build_gradient_model
    from gradsal.backends.onnx.rules import registry

    rules.load()
    script = _floor_script()
    before = {op: registry._VJP[op] for op in ("MaxPool", "Relu", "LSTM")}
    _, x, path = script.export("ocr_lstm", 1, tmp_path)
    model = onnx.load(str(path))
    graphs = script.gradient_graphs(model, x.shape)
    assert {op: registry._VJP[op] for op in before} == before
    ops = {name: Counter(n.op_type for n in graph.model.graph.node) for name, graph in graphs.items()}
    assert ops["exact"]["HardSigmoid"] > 0 and ops["pools free"]["HardSigmoid"] == 0  # no mask, no Relu step
    steps = ops["exact"]["MatMul"] - ops["recurrence free"]["MatMul"]
    assert steps >= 2 * 2 * 31  # two layers, two directions, a dz_k R product for each step but the first
    again = build_gradient_model(model, x.shape, input_name="input", output_name="logits")
    assert [n.op_type for n in again.model.graph.node] == [n.op_type for n in graphs["exact"].model.graph.node]
