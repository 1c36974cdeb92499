"""PyTorch model files as modules: TorchScript archives, ``torch.export`` programs, and state_dicts.

A TorchScript file (``torch.jit.trace(model, x).save(...)`` or ``torch.jit.script``) carries its code; a
``.pt2`` from ``torch.export.save`` carries its graph (and a batch size fixed at export unless it was
exported with ``dynamic_shapes``). A state_dict (``torch.save(model.state_dict(), 'model.pth')``) holds
weights only: it is read with ``torch.load(weights_only=True)``, which restores tensors and plain
containers but no objects (a full pickle can run arbitrary code), into the architecture named by
``--model-class package.module:Class`` (the class, or any callable returning the module, called with no
arguments; the current directory is importable).
"""

from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path
from typing import Any

from ..core.errors import InputError, MissingDependencyError, ModelError

SAVE_ADVICE = (
    "save the model as a torch.export program with torch.export.save(torch.export.export(model, "
    "(example_input,)), 'model.pt2') (recent PyTorch deprecates TorchScript), or as TorchScript with "
    "torch.jit.trace(model, example_input).save('model.pt') (torch.jit.script where tracing cannot follow "
    "the model's control flow)"
)
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("PyTorch model files need PyTorch: pip install 'gradsal[torch]'") from exc
    return torch


def load_torchscript(file: Path) -> Any:
    """The module in a TorchScript archive, in eval mode; a clear error for state_dicts and pickles."""
    torch = import_torch()
    try:
        module = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        if _is_pickle(file):
            raise ModelError(
                f"{file} holds pickled weights or a pickled model (a state_dict?), not a TorchScript archive. "
                "gradsal never unpickles a whole model (a pickle can run arbitrary code when loaded): pass "
                f"--model-class package.module:Class to load a state_dict into its architecture, or {SAVE_ADVICE}"
            ) from exc
        raise ModelError(f"{file} is not a TorchScript file ({_first_line(exc)}); {SAVE_ADVICE}") from exc
    module.eval()
    return module


def load_state_dict_into(file: Path, model_class: str) -> Any:
    """``model_class()`` with the weights in ``file`` loaded (strictly), in eval mode."""
    torch = import_torch()
    module = _instantiate(model_class)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"--model-class {model_class} returned a {type(module).__name__}, not a torch.nn.Module")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{file} cannot be read as a state_dict with torch.load(weights_only=True) ({_first_line(exc)}): "
            f"it may pickle a whole model, which gradsal does not load; {SAVE_ADVICE}"
        ) from exc
    state = _unwrap_checkpoint(state, file)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the weights in {file} do not fit --model-class {model_class}: {_first_line(exc)} "
                         f"{_key_summary(module, state)}") from exc
    module.eval()
    return module


def _instantiate(model_class: str) -> Any:
    module_name, _, attribute = model_class.partition(":")
    if not module_name or not attribute:
        raise InputError(f"--model-class {model_class!r} must be package.module:Class")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the user's own code beside them
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise InputError(f"--model-class {model_class}: cannot import {module_name} ({exc})") from exc
    except AttributeError as exc:
        raise InputError(f"--model-class {model_class}: {module_name} has no {attribute}") from exc
    try:
        return target()
    except TypeError as exc:
        raise InputError(
            f"--model-class {model_class}() cannot be called without arguments ({exc}): name a function or "
            "subclass that builds the model with its settings"
        ) from exc


def _unwrap_checkpoint(state: Any, file: Path) -> dict[str, Any]:
    """The tensor mapping inside a checkpoint dict (``{"state_dict": ...}`` and similar), without the
    ``module.`` prefix that DataParallel adds."""
    for key in _CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ModelError(f"{file} holds a {type(state).__name__}, not a state_dict (a mapping of names to tensors)")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _key_summary(module: Any, state: dict[str, Any]) -> str:
    expected, given = set(module.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return ("keys: " + ", ".join(parts)) if parts else ""


def load_export(file: Path) -> tuple[Any, tuple[int, ...] | None, int | None]:
    """``(module, example input shape or None, the batch size fixed at export or None when dynamic)``."""
    torch = import_torch()
    try:
        program = torch.export.load(str(file))
    except Exception as exc:
        raise ModelError(f"{file} is not a torch.export program ({_first_line(exc)}); {SAVE_ADVICE}") from exc
    shape, static_batch = None, None
    for node in program.graph_module.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        spec = next((s for s in program.graph_signature.input_specs if s.arg.name == node.name), None)
        if value is not None and spec is not None and spec.kind.name == "USER_INPUT":
            shape = tuple(int(d) if isinstance(d, int) else None for d in value.shape)
            static_batch = shape[0] if shape and shape[0] is not None else None
            break
    return program.module(), shape, static_batch


def _is_pickle(file: Path) -> bool:
    """A bare pickle (protocol 2+ starts with 0x80) or torch.save's zip archive (``data.pkl`` and no code)."""
    try:
        with open(file, "rb") as handle:
            if handle.read(1) == b"\x80":
                return True
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
