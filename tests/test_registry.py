"""The backend registry: entry points, run-time plugins, type detection without imports, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradsal.core as gs
from gradsal.core import registry


class _Doubler:
    """A minimal backend: f(x) = 2x, so J^T v = 2v."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return 2 * x

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 2 * x, 2 * cotangent


class _Opaque:
    pass


def test_a_backend_passes_through() -> None:
    backend = _Doubler()
    assert gs.as_backend(backend) is backend


def test_builtin_backends_come_from_entry_points() -> None:
    names = {p.name for p in gs.available_backends()}
    assert {"numpy", "torch", "onnx"} <= names


def test_unknown_object_lists_what_is_accepted() -> None:
    with pytest.raises(gs.UnsupportedModelError) as info:
        gs.as_backend(_Opaque())
    message = str(info.value)
    assert "_Opaque" in message
    assert "gradsal[torch]" in message and "gradsal[onnx]" in message
    assert isinstance(info.value, TypeError)


def test_runtime_plugin_is_asked_first_by_priority() -> None:
    plugin = gs.BackendPlugin(
        name="test-opaque", accepts=lambda m: isinstance(m, _Opaque), create=lambda m: _Doubler(),
        accepts_text="an _Opaque", priority=0,
    )
    gs.register_backend(plugin)
    try:
        assert isinstance(gs.as_backend(_Opaque()), _Doubler)
        assert gs.available_backends()[0] is plugin
    finally:
        gs.unregister_backend("test-opaque")
    with pytest.raises(gs.UnsupportedModelError):
        gs.as_backend(_Opaque())


def test_module_type_matches_never_imports() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gradsal.core.registry import module_type_matches
        assert not module_type_matches(object(), "torch.nn", "Module")
        assert "torch" not in sys.modules
        import collections
        assert module_type_matches(collections.OrderedDict(), "collections", "OrderedDict")
        assert not module_type_matches({}, "collections", "OrderedDict")
        assert not module_type_matches({}, "collections", "No.Such")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_broken_entry_point_warns_and_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    class _BrokenEntryPoint:
        name = "broken"
        value = "nowhere:plugin"

        def load(self) -> object:
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(registry, "_entry_point_plugins", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [_BrokenEntryPoint()])
    with pytest.warns(RuntimeWarning, match="broken"):
        assert registry.available_backends() == []
