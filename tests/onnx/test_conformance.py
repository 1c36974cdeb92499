"""gradsal on ONNX's own node conformance tests (see ``conformance.py`` for what is checked and how).

The default run takes the first test of each supported operator (a representative slice); ``--full``
runs every test whose operators gradsal supports. ``python benchmarks/conformance_report.py`` prints the
per-operator counts. The tests skip, saying how to fetch the data, when the corpus is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance import (
    UNJUDGED,
    Reference,
    check_test,
    finite_difference_check,
    report,
    representative,
    supported_tests,
)
from corpus import NODE_TESTS, node_tests_dir
from harness import make_model

ALL = [folder.name for folder in supported_tests(NODE_TESTS)] if NODE_TESTS.is_dir() else ["(absent)"]
SLICE = ([folder.name for folder in representative(supported_tests(NODE_TESTS))]
         if NODE_TESTS.is_dir() else ["(absent)"])


def _assert_right(name: str) -> None:
    folder = node_tests_dir() / name
    results = check_test(folder)
    assert results, f"{name}: no float input/output pair"
    wrong = [f"[{r.input} -> {r.output}] {r.status}: {r.detail}" for r in results if not r.ok]
    assert not wrong, f"{name}:\n" + "\n".join(wrong) + "\n" + report(results)


@pytest.mark.parametrize("name", SLICE)
def test_node_test_slice(name: str) -> None:
    _assert_right(name)


@pytest.mark.full
@pytest.mark.parametrize("name", ALL)
def test_node_test(name: str) -> None:
    _assert_right(name)


def test_the_checker_catches_a_wrong_gradient() -> None:
    # the reference must not pass anything: a gradient off by 1% on one element is caught, the true one is
    # not, and an all-zero claim for a dependent output is caught
    from onnx import helper

    x = np.linspace(-1.0, 2.0, 12).reshape(3, 4)
    model = make_model([helper.make_node("Tanh", ["x"], ["y"])], {"x": x}, ["y"])
    ref = Reference(model, {"x": x})
    assert ref.float64
    v = np.random.default_rng(0).standard_normal((3, 4))
    true = v * (1 - np.tanh(x) ** 2)
    assert finite_difference_check(ref, "x", "y", v, true, np.random.default_rng(1), x.dtype) is None
    off = true.copy()
    off[1, 2] *= 1.01
    assert finite_difference_check(ref, "x", "y", v, off, np.random.default_rng(1), x.dtype) is not None
    zero = np.zeros_like(true)
    assert finite_difference_check(ref, "x", "y", v, zero, np.random.default_rng(1), x.dtype) is not None


def test_the_checker_does_not_judge_a_kink() -> None:
    from onnx import helper

    x = np.array([-1.0, 0.0, 2.0])
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, ["y"])
    ref = Reference(model, {"x": x})
    v = np.ones(3)
    at_zero_only = np.array([0.0, 0.0, 0.0])  # wrong at x = 2: caught; x = 0 is a kink, not judged
    assert finite_difference_check(ref, "x", "y", v, at_zero_only, np.random.default_rng(0), x.dtype)
    only_kink = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": np.zeros(1)}, ["y"])
    ref = Reference(only_kink, {"x": np.zeros(1)})
    assert finite_difference_check(ref, "x", "y", np.ones(1), np.zeros(1), np.random.default_rng(0),
                                   np.dtype(np.float64)) == UNJUDGED
