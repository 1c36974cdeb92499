"""Find a backend for whatever model object the user has, through the ``gradsal.backends`` entry points.

Each entry point names a :class:`BackendPlugin`. A plugin recognises model objects by type without
importing its framework (a framework that is not yet in ``sys.modules`` cannot have made the object),
and imports the framework only in ``create``. Third-party packages register their own plugins the
same way, in their ``pyproject.toml``::

    [project.entry-points."gradsal.backends"]
    mine = "my_package.gradsal_plugin:plugin"
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import UnsupportedModelError
from .protocol import GradientBackend

ENTRY_POINT_GROUP = "gradsal.backends"


@dataclass(frozen=True)
class BackendPlugin:
    """How one backend recognises and wraps model objects.

    ``accepts(model)`` must be cheap and must not import a framework; ``create(model)`` builds the
    backend. Plugins are asked in ascending ``priority`` (catch-alls such as plain callables go last).
    ``accepts_text`` and ``extra`` feed the error shown when nothing accepts a model.
    """

    name: str
    accepts: Callable[[Any], bool]
    create: Callable[[Any], GradientBackend]
    accepts_text: str
    extra: str | None = None
    priority: int = 50


_runtime_plugins: dict[str, BackendPlugin] = {}
_entry_point_plugins: dict[str, BackendPlugin] | None = None


def register_backend(plugin: BackendPlugin) -> None:
    """Register a plugin at run time (takes precedence over an entry point of the same name)."""
    _runtime_plugins[plugin.name] = plugin


def unregister_backend(name: str) -> None:
    """Remove a plugin registered with :func:`register_backend`."""
    _runtime_plugins.pop(name, None)


def _load_entry_points() -> dict[str, BackendPlugin]:
    global _entry_point_plugins
    if _entry_point_plugins is None:
        found: dict[str, BackendPlugin] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break gradsal
                warnings.warn(f"gradsal backend plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                              RuntimeWarning, stacklevel=3)
                continue
            if isinstance(plugin, BackendPlugin):
                found[ep.name] = plugin
        _entry_point_plugins = found
    return _entry_point_plugins


def available_backends() -> list[BackendPlugin]:
    """All known plugins, in the order they are asked."""
    plugins = {**_load_entry_points(), **_runtime_plugins}
    return sorted(plugins.values(), key=lambda p: (p.priority, p.name))


def module_type_matches(obj: Any, module: str, qualname: str) -> bool:
    """True if ``obj`` is an instance of ``module.qualname``, checked without importing ``module``."""
    mod = sys.modules.get(module)
    if mod is None:
        return False
    cls: Any = mod
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return False
    return isinstance(cls, type) and isinstance(obj, cls)


def as_backend(model: Any) -> GradientBackend:
    """Return ``model`` as a :class:`GradientBackend`, asking each registered plugin in turn.

    A backend passes through unchanged. Otherwise the first plugin whose ``accepts`` says yes builds
    one (``TorchBackend`` for a ``torch.nn.Module``, ``OnnxBackend`` for a ``.onnx`` path or
    ``onnx.ModelProto``, ``FunctionBackend`` for a plain callable on NumPy arrays).
    """
    if isinstance(model, GradientBackend):
        return model
    plugins = available_backends()
    for plugin in plugins:
        if plugin.accepts(model):
            return plugin.create(model)
    accepted = "\n".join(
        f"  - {p.accepts_text}" + (f" (pip install 'gradsal[{p.extra}]')" if p.extra else "")
        for p in plugins
    )
    accepted = accepted or "  (no backends registered: is gradsal installed?)"
    raise UnsupportedModelError(
        f"gradsal does not know how to differentiate a {type(model).__module__}."
        f"{type(model).__qualname__}. Accepted models:\n{accepted}\n"
        "Or pass an object implementing gradsal.core.GradientBackend (forward and vjp)."
    )
