"""gradsal.core.methods.METHODS is the one table of methods: every command's choices come from it, every
row names a function of gradsal.core, and the commands call that function with the options they always
passed (spelled out here, not read from the table)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

from gradsal import core
from gradsal.cli import commands, demo, evaluate, text
from gradsal.cli.main import build_parser
from gradsal.core import attribution, sanity
from gradsal.core.errors import InputError
from gradsal.core.methods import METHODS, by_cli_name, cli_names, method_options, resolve_method

CLI_NAMES = {"vanilla": "vanilla_gradient", "gradxinput": "gradient_x_input", "smoothgrad": "smoothgrad",
             "ig": "integrated_gradients", "guided": "guided_backprop", "gradcam": "grad_cam"}


def choices(command: str, dest: str) -> list[str]:
    """The ``choices`` of option ``dest`` of ``gradsal COMMAND``, as argparse holds them."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return list(next(a for a in sub._actions if a.dest == dest).choices)


def test_every_row_names_a_function_of_gradsal_core() -> None:
    assert len({m.function for m in METHODS}) == len(METHODS)
    for method in METHODS:
        assert getattr(core, method.function) is getattr(attribution, method.function)
        assert resolve_method(method.function) == (method.function, getattr(attribution, method.function))


def test_the_names_sanity_exported_keep_their_values() -> None:
    assert sanity.METHOD_NAMES == ("vanilla_gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                                   "guided_backprop", "deconvnet", "grad_cam")
    assert sanity.DEFAULT_METHODS == ("vanilla_gradient", "gradient_x_input", "smoothgrad", "integrated_gradients")
    assert sanity.resolve_method is resolve_method


def test_only_the_seeded_methods_get_a_seed_in_the_checks() -> None:
    seeded = {name for name in sanity.METHOD_NAMES if "seed" in method_options(name, None, 4)}
    assert seeded == {"smoothgrad", "integrated_gradients"}
    assert method_options("smoothgrad", {"seed": 5}, None) == {"seed": 5, "batch_size": None}
    assert method_options(lambda *a: a, {"n": 1}, 4) == {"n": 1}  # a callable gets only what was given


def test_every_command_line_choice_is_a_row_and_keeps_its_order() -> None:
    assert {m.cli_name: m.function for m in METHODS if m.cli_name} == CLI_NAMES
    assert choices("explain", "method") == list(CLI_NAMES)
    assert choices("audit", "method") == list(CLI_NAMES)
    assert choices("evaluate", "methods") == ["vanilla", "gradxinput", "smoothgrad", "ig", "guided"]
    assert choices("explain-text", "method") == ["ig", "vanilla", "gradxinput", "smoothgrad"]
    assert {name: CLI_NAMES[name] for name in choices("evaluate", "methods")} == evaluate.METHODS
    assert [name for name in evaluate.METHODS if by_cli_name(name).seeded] == ["smoothgrad", "ig"]
    assert cli_names() == tuple(CLI_NAMES)
    with pytest.raises(InputError, match="Unknown method 'deconvnet'"):
        by_cli_name("deconvnet")


def record_calls(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """Replace every method of gradsal.core by a recorder of its name and keyword arguments."""
    for method in METHODS:
        def recorder(model: Any, x: np.ndarray, target: Any, _name: str = method.function, **kwargs: Any) -> Any:
            calls.append((_name, kwargs))
            attributions = np.zeros_like(x)
            return (attributions, np.zeros(len(x))) if kwargs.get("return_delta") else attributions
        monkeypatch.setattr(core, method.function, recorder)


EXPLAIN_OPTIONS = {  # what `gradsal explain` passed before the table, with --seed 10 and inputs from index 3
    "vanilla": {"batch_size": 7},
    "gradxinput": {"batch_size": 7},
    "smoothgrad": {"n_samples": 5, "noise_level": 0.25, "seed": 13, "batch_size": 7},
    "ig": {"n_steps": 9, "batch_size": 7},
    "guided": {},
    "gradcam": {"layer": "block3"},
}


@pytest.mark.parametrize("name", list(CLI_NAMES))
def test_explain_calls_the_rows_function_with_its_flags(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    record_calls(monkeypatch, calls)
    args = argparse.Namespace(method=name, batch_size=7, samples=5, noise=0.25, seed=10, steps=9, layer="block3")
    commands.attribution_function(args)(object(), np.ones((2, 3)), None, 3)
    assert calls == [(CLI_NAMES[name], EXPLAIN_OPTIONS[name])]


def test_grad_cam_without_a_layer_is_refused_before_any_work() -> None:
    args = argparse.Namespace(method="gradcam", batch_size=None, samples=5, noise=0.2, seed=0, steps=9, layer=None)
    with pytest.raises(InputError, match="--method gradcam needs --layer NAME"):
        commands.attribution_function(args)


class _Embedding:
    def baseline(self, kind: str) -> np.ndarray:
        return np.zeros((1, 4, 2))


@pytest.mark.parametrize("name", ["ig", "vanilla", "gradxinput", "smoothgrad"])
def test_explain_text_calls_the_rows_function(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    record_calls(monkeypatch, calls)
    args = argparse.Namespace(method=name, samples=5, noise=0.25, seed=2, baseline="zeros", steps=9)
    text._attribute(args, _Embedding(), np.ones((1, 4, 2)), 0, None)
    assert [called for called, _ in calls] == [CLI_NAMES[name]]


def test_the_demo_titles_its_rows_from_the_table() -> None:
    assert [m.title for m in demo._METHODS] == ["Vanilla gradient", "SmoothGrad", "Integrated gradients",
                                                "Guided backprop", "Grad-CAM"]
    assert all(by_cli_name(m.key).title == m.title for m in demo._METHODS)
