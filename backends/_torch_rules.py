"""Helpers of the PyTorch backend that need torch at import time (loaded lazily by ``backends.torch``).

- :class:`ReluRuleMode`: a ``TorchFunctionMode`` that reroutes every ReLU call made from Python
  (``nn.ReLU``, ``F.relu``, ``F.relu_``, ``torch.relu``, ``Tensor.relu``/``relu_``, in-place or not)
  through :class:`RuleReLU`, whose backward pass applies the guided or deconvnet rule.
- Context managers that keep a call free of side effects on the user's module: parameters frozen for
  the call, batch-norm running statistics restored after a train-mode forward pass.
- :func:`reinitialize`: fresh parameters for one module tree (model-randomisation tests).
- Input checks and the error messages of the backend.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..core.errors import BackendError, InputError, InputTypeError
from ._stacklevel import user_stacklevel  # noqa: F401  (the torch backend's warnings use it from here)

_RELU_NAMES = frozenset({"relu", "relu_"})


class RuleReLU(torch.autograd.Function):
    """``max(x, 0)`` forward; backward by Springenberg et al. (2015), "Striving for simplicity".

    With ``R`` the gradient arriving from above and ``f`` the ReLU's input: guided backpropagation
    returns ``R * [R > 0] * [f > 0]``, the deconvnet rule ``R * [R > 0]`` (the activation's sign is
    ignored). ``f > 0`` is read from the output (``max(f, 0) > 0`` iff ``f > 0``), so the in-place
    variant, which overwrites ``f``, needs nothing else.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_(min=0)
            ctx.mark_dirty(out)
        else:
            out = x.clamp(min=0)
        ctx.rule = rule
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (out,) = ctx.saved_tensors
        passed = grad.clamp(min=0)
        if ctx.rule == "guided":
            passed = passed * (out > 0)
        return passed, None, None


class ReluRuleMode(TorchFunctionMode):
    """Inside this mode every Python-level ReLU call back-propagates with ``rule``; counts the calls."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.relu_calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _RELU_NAMES and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            inplace = name == "relu_" or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            self.relu_calls += 1
            return RuleReLU.apply(args[0], self.rule, inplace)
        return func(*args, **kwargs)


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module | None) -> Iterator[None]:
    """Turn off ``requires_grad`` on the module's parameters for the block; restore it, errors included."""
    params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def running_stat_modules(module: torch.nn.Module | None) -> list[torch.nn.Module]:
    """Normalisation layers that update running statistics when called in training mode."""
    if module is None:
        return []
    norm_types = (torch.nn.modules.batchnorm._NormBase,)
    return [m for m in module.modules() if isinstance(m, norm_types) and m.track_running_stats]


@contextlib.contextmanager
def restored_running_stats(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Put back the running statistics that a training-mode forward pass would update."""
    training = [m for m in modules if m.training]
    saved = [(buf, buf.detach().clone()) for m in training for buf in m.buffers(recurse=False) if buf is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def reinitialize(module: torch.nn.Module) -> None:
    """New parameters for every submodule: ``reset_parameters()`` where it exists, else a normal draw.

    Parameters of a module without ``reset_parameters`` are redrawn from N(0, s^2), with s their
    current standard deviation (0.02 when that is zero), so the scale of the layer is kept.
    """
    with torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for param in sub.parameters(recurse=False):
                scale = float(param.float().std()) if param.numel() > 1 else 0.0
                param.normal_(0.0, scale or 0.02)


# --------------------------------------------------------------------- checks and messages
def amp_dtype(torch: Any, dtype: Any) -> Any:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    raise InputError(f"dtype={dtype!r} is not a mixed-precision dtype: use torch.bfloat16 or torch.float16 for "
                     "autocast, or None to run in the model's own dtype (cast the model yourself otherwise).")


def parameter_device(module: Any) -> Any:
    if module is None:
        return None
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def resolve_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, or an InputError saying what does."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a torch device: use e.g. 'cpu', 'cuda' or 'cuda:1'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} but no CUDA GPU is available to torch here: use device='cpu' "
                         "or leave device=None to run where the model's parameters are.")
    return resolved


def same_device(a: Any, b: Any) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def parameter_dtype(module: Any) -> Any:
    if module is None:
        return None
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def is_script(module: Any, torch: Any) -> bool:
    return isinstance(module, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule))


def check_input(x: Any, torch: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.dtype.kind in "biu":
        raise InputTypeError(f"x has dtype {array.dtype}; gradients need floating-point inputs. Pixel values: "
                             "convert them, e.g. x.astype(np.float32), with the scaling/normalisation the model "
                             "expects. Token ids, bytes or codes that the model embeds have no gradient: "
                             "differentiate at the embedding with gradsal.backends.at_tensor(model, inputs).")
    if array.dtype.kind != "f":
        raise InputTypeError(f"x has dtype {array.dtype}; pass a real floating-point array (float32 or float64).")
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"x has shape {array.shape}; pass a non-empty batch shaped (N, ...), e.g. x[None] "
                         "for a single sample.")
    return array


def check_like(array: Any, shape: tuple[int, ...], name: str, like: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise InputTypeError(f"{name} has dtype {array.dtype}; pass a floating-point array.")
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape} but {like} has shape {shape}; pass one shaped like {like}.")
    return array


def check_cotangent(cotangent: Any, rows: int) -> np.ndarray:
    array = np.asarray(cotangent)
    if array.dtype.kind != "f":
        raise InputTypeError(f"cotangent has dtype {array.dtype}; pass a floating-point array shaped like "
                             "the model output.")
    if array.ndim == 0 or array.shape[0] != rows:
        raise InputError(f"cotangent has shape {array.shape} for a batch of {rows} inputs; pass one cotangent "
                         "row per input, shaped like forward(x).")
    return array


def join(parts: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    result = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if np.may_share_memory(result, x):  # an identity-like model handed back x's own memory
        result = result.copy()
    return result


def model_failure(exc: BaseException, xt: Any, stage: str = "forward") -> BackendError:
    reason = str(exc).strip().splitlines()
    reason_text = "\n".join(reason[:6]) if reason else type(exc).__name__
    hint = ("Reduce batch_size (TorchBackend(..., batch_size=...) or the method's batch_size=)."
            if "out of memory" in reason_text.lower() else
            "Check that x has the shape, layout and preprocessing the model expects.")
    return BackendError(f"The PyTorch model failed in the {stage} pass on an input of shape {tuple(xt.shape)} "
                        f"({xt.dtype}, {xt.device}) with {type(exc).__name__}: {reason_text}\n{hint}")


def non_tensor_message(out: Any, had_output: bool) -> str:
    kind = type(out).__name__
    if had_output:
        return f"The output= callable returned a {kind}, not a tensor; make it return the tensor to explain."
    if isinstance(out, dict) or hasattr(out, "keys"):
        keys = list(out.keys())
        example = f"output=lambda out: out[{keys[0]!r}]" if keys else "output=lambda out: out['logits']"
    elif isinstance(out, (tuple, list)):
        example = "output=lambda out: out[0]"
    else:
        example = "output=lambda out: out.logits"
    return (f"The model returned a {kind}, not a tensor. Tell gradsal which tensor to explain: "
            f"TorchBackend(model, {example}).")


def no_dependence_message(what: str = "the input x") -> str:
    return (f"The model output does not depend on {what} (autograd found no gradient path). Check that "
            "forward uses it and does not .detach() it, convert it to NumPy, or run under "
            "torch.no_grad(); and that output= selects a tensor computed from it.")


def unknown_layer_message(layer: Any, names: list[str]) -> str:
    names = [n for n in names if n]
    close = difflib.get_close_matches(str(layer), names, n=5, cutoff=0.5)
    shown = close or names[:12]
    label = "Close matches" if close else "Some layers"
    return (f"The model has no layer named {layer!r}. {label}: {', '.join(shown) or '(none)'}. "
            "Use a dotted name from model.named_modules(), e.g. 'layer4.1.conv2'.")


def layer_call_message(layer: str, calls: int, model: Any, torch: Any) -> str:
    if calls == 0:
        scripted = " TorchScript modules do not run Python hooks: pass the eager model." if is_script(
            model, torch) else ""
        return f"Layer {layer!r} did not run in the forward pass, so it has no activation.{scripted}"
    return (f"Layer {layer!r} ran {calls} times in one forward pass (a shared module), so its activation is "
            "ambiguous; choose a layer that runs once.")
