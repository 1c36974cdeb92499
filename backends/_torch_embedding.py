"""PyTorch models that take integers: the model as a function of one module's output (or input).

A forward hook replaces the module's output (a pre-hook its first positional input) by the tensor the
backend is given, so ``model(ids, ...)`` runs unchanged around it and autograd differentiates at that
tensor; the model's inputs (ids, attention mask, ...) are held at the bound values, repeated to the
number of rows. This is where Captum's ``LayerIntegratedGradients`` attributes, with any gradsal method.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import InputError, InputTypeError, ModelError
from ._at_tensor import TensorBackend, bound_inputs
from .torch import TorchBackend, _import_torch

WHERE = ("output", "input")


def at_module(model: Any, inputs: Any, module: Any = None, *, where: str = "output", output: Any = None,
              id_input: Any = None, device: Any = None) -> TensorBackend:
    """A torch model as a function of ``module``'s output (``where="output"``) or first input (``"input"``).

    ``inputs``: the model's arguments for the samples to explain: one array or tensor, a tuple (positional
    arguments) or a dict (keyword arguments). ``module``: a submodule or its dotted name (default: the
    model's one ``nn.Embedding``). ``output``: maps the model's raw output to the tensor to explain (as in
    :class:`TorchBackend`). ``id_input``: the key of the input holding the ids (default: positional 0,
    or ``"input_ids"``, or the first keyword), whose values :meth:`TensorBackend.baseline` replaces.
    """
    torch = _import_torch()
    if where not in WHERE:
        raise InputError(f"where={where!r}: use 'output' (the module's output) or 'input' (its first input).")
    name, target = _find_module(torch, model, module)
    arrays = bound_inputs(inputs)
    id_key = _id_key(arrays, id_input)
    label = f"{type(model).__name__} at {name} {where}"

    def embed(values: dict[Any, np.ndarray]) -> np.ndarray:
        return _capture(torch, model, target, where, values, device, label)

    def make_backend(fixed: dict[Any, np.ndarray]) -> _LayerNamesOfTheModel:
        inner = TorchBackend(replaced_module(model, target, where, fixed), output=output, device=device)
        return _LayerNamesOfTheModel(inner, name if where == "output" else None)

    return TensorBackend(name=f"{name} {where}", inputs=arrays, id_input=id_key, value=embed(arrays),
                         make_backend=make_backend, embed=embed, label=label)


def _find_module(torch: Any, model: Any, module: Any) -> tuple[str, Any]:
    named = dict(model.named_modules())
    if module is None:
        embeddings = [(n, m) for n, m in named.items() if isinstance(m, torch.nn.Embedding)]
        if len(embeddings) != 1:
            listed = ", ".join(repr(n) for n, _ in embeddings) or "none"
            raise ModelError(f"{type(model).__name__} has {len(embeddings)} nn.Embedding modules ({listed}): pass "
                             "module= (a module or its dotted name) to say where to differentiate.")
        return embeddings[0]
    if isinstance(module, str):
        if module not in named or module == "":
            from .onnx._model_io import close_matches

            raise ModelError(f"{type(model).__name__} has no submodule {module!r}. "
                             + close_matches(module, [n for n in named if n], "modules"))
        return module, named[module]
    for n, m in named.items():
        if m is module and n:
            return n, m
    raise InputTypeError("module must be a submodule of the model or its dotted name (as in named_modules()).")


def _id_key(arrays: dict[Any, np.ndarray], id_input: Any) -> Any:
    if id_input is not None:
        if id_input not in arrays:
            raise InputError(f"id_input={id_input!r} is not one of the inputs {list(arrays)}.")
        return id_input
    for key in (0, "input_ids"):
        if key in arrays:
            return key
    return next(iter(arrays))


def _call(torch: Any, model: Any, values: dict[Any, np.ndarray], device: Any) -> Any:
    tensors = {k: torch.as_tensor(v, device=device) for k, v in values.items()}
    args = [tensors[k] for k in sorted(k for k in tensors if isinstance(k, int))]
    kwargs = {k: v for k, v in tensors.items() if not isinstance(k, int)}
    return model(*args, **kwargs)


def _capture(torch: Any, model: Any, target: Any, where: str, values: dict[Any, np.ndarray], device: Any,
             label: str) -> np.ndarray:
    """The module's output (or first input) when the model runs on ``values``."""
    seen: list[Any] = []

    def keep_output(_module: Any, _inputs: Any, out: Any) -> None:
        seen.append(out)

    def keep_input(_module: Any, inputs: Any) -> None:
        seen.append(inputs[0] if inputs else None)

    handle = (target.register_forward_hook(keep_output) if where == "output"
              else target.register_forward_pre_hook(keep_input))
    try:
        with torch.no_grad():
            _call(torch, model, values, device or _device_of(model))
    finally:
        handle.remove()
    if not seen:
        raise ModelError(f"{label}: the module never ran when the model ran on these inputs.")
    tensor = seen[0]
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ModelError(f"{label} is {type(tensor).__name__} "
                         f"{getattr(tensor, 'dtype', '')}, not a float tensor: pick a module whose {label.split()[-1]} "
                         "is one (an nn.Embedding's output).")
    value = tensor.detach().cpu()
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()
    return value.numpy().copy()


def _device_of(model: Any) -> Any:
    for parameter in model.parameters():
        return parameter.device
    return None



def replaced_module(model: Any, target: Any, where: str, fixed: dict[Any, np.ndarray]) -> Any:
    """An ``nn.Module`` mapping the activation ``(rows, ...)`` to the model's output, ``fixed`` inputs held."""
    torch = _import_torch()

    class Replaced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so parameters (and their dtype and device) are found
            self._fixed = {k: torch.as_tensor(v) for k, v in fixed.items()}

        def forward(self, activation: Any) -> Any:
            calls = [0]

            def replace_output(_module: Any, _inputs: Any, _out: Any) -> Any:
                calls[0] += 1
                return activation if calls[0] == 1 else _twice()

            def replace_input(_module: Any, inputs: Any) -> Any:
                calls[0] += 1
                return (activation, *inputs[1:]) if calls[0] == 1 else _twice()

            handle = (target.register_forward_hook(replace_output) if where == "output"
                      else target.register_forward_pre_hook(replace_input))
            try:
                values = {k: v.to(activation.device) for k, v in self._fixed.items()}
                args = [values[k] for k in sorted(k for k in values if isinstance(k, int))]
                kwargs = {k: v for k, v in values.items() if not isinstance(k, int)}
                return self.model(*args, **kwargs)
            finally:
                handle.remove()

    return Replaced()


def _twice() -> Any:
    raise ModelError("the module differentiated at runs more than once per forward pass, so replacing it is "
                     "ambiguous: pick a module that runs once (e.g. the word-embedding lookup).")


class _LayerNamesOfTheModel:
    """The TorchBackend of the wrapper, with layers named as in the user's model (the wrapper holds it as
    ``model``); the replaced module's own output is the input, whose gradient is the plain VJP."""

    def __init__(self, inner: TorchBackend, replaced: str | None) -> None:
        self._inner, self._replaced = inner, replaced

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._inner.forward(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._inner.vjp(x, cotangent)

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._inner.jvp(x, tangent)

    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if layer == self._replaced:
            _, grad = self._inner.vjp(x, cotangent)
            return np.array(x, copy=True), grad
        return self._inner.layer_vjp(x, f"model.{layer}", cotangent)

    def with_relu_rule(self, rule: str) -> _LayerNamesOfTheModel:
        return _LayerNamesOfTheModel(self._inner.with_relu_rule(rule), self._replaced)
