"""PyTorch backend: input gradients of any ``torch.nn.Module`` (or callable on tensors) with autograd.

``TorchBackend(model)`` implements :class:`~gradsal.core.GradientBackend` (``forward``, ``vjp``) and the
optional ``SupportsJVP``, ``SupportsLayers``, ``SupportsReluRule`` and ``SupportsRandomization``, so every
gradsal method accepts a torch model directly: ``vanilla_gradient(my_torch_model, x)``.

Arrays cross the interface as NumPy. Rules, in the order they apply:

- **Device**: the model runs where its parameters are (a parameterless callable: on ``device`` or the
  CPU). If ``device`` names another device, a copy of the model is moved there; the user's model stays.
- **Dtype**: ``x`` is cast to the model's parameter dtype (the first floating parameter or buffer; a
  model without any keeps ``x``'s float32/float64). Results come back in that dtype, except that
  float16/bfloat16 results come back as float32. A float64 check (``check_gradients``) therefore needs
  a float64 model: ``copy.deepcopy(model).double()``.
- **Mixed precision**: ``dtype=torch.bfloat16`` or ``torch.float16`` runs forward and backward under
  ``torch.autocast`` (CUDA, or CPU where torch supports it); ``x`` and its gradient stay float32.
- **Chunks**: ``batch_size`` rows go to the device at a time (None: the whole batch in one go; the core
  methods already chunk by their own ``batch_size``). ``batch_size="auto"``: the largest chunk that fits
  ``memory_budget``, from two probe steps on the first 1 and 2 rows of the first call per input shape (see
  :meth:`TorchBackend.auto_batch_size`); the core's chunks (sized by ``gradsal.core.set_memory_budget``)
  are then split into chunks of that size, so raise the core budget too to send larger chunks.
- **Fast path** (opt-in, off by default): ``fast=True`` turns on bf16 autocast where the hardware has
  bf16 (any CUDA GPU with ``torch.cuda.is_bf16_supported()``, a CPU with oneDNN bf16), channels-last
  memory format, and, on CUDA, ``torch.compile`` of the model for ``forward`` and ``vjp`` (the function
  every SmoothGrad/IG chunk calls). Each can be set alone: ``dtype=``, ``channels_last=``, ``compile=``
  (True, or a dict of ``torch.compile`` keyword arguments such as ``{"mode": "reduce-overhead"}`` for
  CUDA graphs); an explicit value overrides ``fast``. Under autocast, ``float32_layers`` (module names,
  or ``"auto"``, the default with ``fast``) run in float32 outside autocast: ``"auto"`` keeps every leaf
  module up to the last max-pooling layer (registration order) there, because rounding the activations
  a max-pool compares flips which input wins and reroutes the gradient (bf16 everywhere leaves a
  Spearman correlation of only ~0.96 with the fp32 map on the shipped digits CNN; the ResNet stem is a
  few percent of the work). Functional max-pools (``F.max_pool2d`` in ``forward``) are not detected:
  name their modules. Channels-last and ``float32_layers`` change a copy of the model (never the
  user's). The compiled model is used only by ``forward`` and ``vjp``; ``jvp``, ``layer_vjp``, the ReLU
  rules and the ``batch_size="auto"`` probe run the eager model. Where ``fast`` chose bf16 itself, the
  first ``vjp`` call also runs its first rows in float32 and compares the saliency maps (Spearman, per
  sample): below ``fidelity`` (0.99) the backend warns and stays in float32 (models whose input gradients
  are chaotic, like randomly initialised deep nets, fail it). An explicit ``dtype=`` is not checked unless
  ``fidelity=`` is given.
- **No side effects**: parameters get no ``.grad`` (their ``requires_grad`` is off for the call and
  restored after, exceptions included); every hook gradsal registers is removed in ``finally``; the
  train/eval mode is left as found (a training-mode model with dropout or batch-norm gets a warning, and
  batch-norm running statistics updated by such a call are put back); ``x`` is never written to.
  The parameter flags are toggled on the shared module, so do not run one model from several threads.
- **JVP** uses forward-mode AD (``torch.func.jvp``). Where an operation lacks a forward-AD formula (a
  custom ``autograd.Function`` without ``jvp``, some in-place ops) it falls back to the double-VJP trick:
  ``J u = d/dv <J^T v, u>``, two reverse passes, which needs a differentiable backward.
- **Guided backprop / deconvnet** (``with_relu_rule``) reroutes, through a ``TorchFunctionMode`` active only
  during the call, every ReLU invoked from Python: ``nn.ReLU`` (in-place too), ``F.relu``, ``F.relu_``,
  ``torch.relu``, ``Tensor.relu``/``relu_``. Not intercepted: TorchScript or ``torch.compile``d code,
  ``torch.ops.aten.relu`` called directly, and ReLUs written another way (``clamp(min=0)``,
  ``x * (x > 0)``, ``F.threshold``, fused kernels); ReLU6/LeakyReLU are not ReLUs for this rule.
  A call in which no ReLU was intercepted warns that the result equals the plain gradient.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..core.batching import get_memory_budget, rows_within_budget
from ..core.errors import (
    GradsalError,
    InputError,
    InputTypeError,
    MissingDependencyError,
    ModelError,
    UnsupportedModelError,
)
from ..core.registry import BackendPlugin, module_type_matches

INSTALL_HINT = "pip install 'gradsal[torch]'"
_RULES = ("standard", "guided", "deconvnet")
CUDA_BUDGET_FRACTION = 0.8  # of the free GPU memory, the default budget of batch_size="auto" on CUDA


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"The PyTorch backend needs PyTorch (not installed): {INSTALL_HINT}") from exc
    return torch


def _rules_module() -> Any:
    from . import _torch_rules

    return _torch_rules


# fast=True's bf16 must rank the input's elements like float32 does (Spearman of the saliency maps, the
# least over the first FIDELITY_ROWS rows of the first VJP call), or the backend falls back to float32
FAST_PATH_FIDELITY = 0.99
FIDELITY_ROWS = 8


class FastPathFidelityWarning(UserWarning):
    """The fast path's reduced-precision gradients disagreed with float32's; the backend went back to float32."""


def _least_map_spearman(fast: np.ndarray, reference: np.ndarray) -> float:
    """The smallest per-sample Spearman correlation between the saliency maps (``|g|``, its maximum over
    the channel axis 1 as ``to_saliency_map`` draws it when there are more than two axes) of two gradient
    batches; a constant reference map counts as agreeing."""
    from ..core.sanity import spearman_correlation

    def saliency(g: np.ndarray) -> np.ndarray:
        g = np.abs(np.asarray(g, dtype=np.float64))
        return g.max(axis=1) if g.ndim >= 3 else g

    worst = 1.0
    for a, b in zip(saliency(fast), saliency(reference), strict=True):
        rho = spearman_correlation(a, b)
        if np.isfinite(rho):
            worst = min(worst, rho)
        elif not np.all(b == b.flat[0]):  # the fast map is constant (or NaN) where the reference is not
            worst = min(worst, -1.0)
    return worst


def _fast_amp_dtype(torch: Any, device: Any) -> Any:
    """bf16 for ``fast=True`` where the hardware computes in it, else None (emulated bf16 is slower)."""
    if device.type == "cuda":  # no float16 fallback: input gradients of deep nets underflow in it
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        with contextlib.suppress(AttributeError, RuntimeError):
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return torch.bfloat16
    return None


def _max_pool_types(torch: Any) -> tuple[type, ...]:
    nn = torch.nn
    return (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)


def _check_layer_names(layers: Any, fast: bool) -> tuple[str, ...] | str:
    if layers is None:
        return "auto" if fast else ()
    if layers == "auto":
        return "auto"
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise InputTypeError(f"float32_layers takes 'auto', None, or a list of module names (as in named_modules()), "
                             f"got {layers!r}.")
    return tuple(layers)


_FLOAT32_CLASSES: dict[type, type] = {}


def _run_in_float32(torch: Any, module: Any, device_type: str) -> None:
    """Make ``module`` (a private copy's submodule) run with autocast off, its half-precision inputs cast up.

    Its class is swapped for a subclass of the same name whose ``forward`` wraps the original one, so
    module names, parameters and hooks stay as they are.
    """
    cls = type(module)
    if cls in _FLOAT32_CLASSES.values():
        return
    if cls not in _FLOAT32_CLASSES:
        original = cls.forward

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            half = (torch.float16, torch.bfloat16)
            args = tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype in half else a for a in args)
            with torch.autocast(self._gradsal_autocast_device, enabled=False):
                return original(self, *args, **kwargs)

        _FLOAT32_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                            "__qualname__": cls.__qualname__})
    module._gradsal_autocast_device = device_type
    module.__class__ = _FLOAT32_CLASSES[cls]


def _accepts(model: Any) -> bool:
    return module_type_matches(model, "torch.nn", "Module")


class TorchBackend:
    """Gradients of a PyTorch model with respect to its input, NumPy in and NumPy out.

    ``model``: a ``torch.nn.Module`` (TorchScript too) or a callable on tensors. ``device``: where to run
    (default: where the parameters are). ``dtype``: ``torch.bfloat16``/``torch.float16`` for autocast mixed
    precision, None for the model's own dtype. ``output``: a callable mapping the model's raw output to
    the tensor to explain (``lambda out: out["logits"]``, ``lambda out: out[0]``). ``batch_size``: rows
    sent to the device at once (None: all; ``"auto"``: the largest chunk within ``memory_budget`` bytes,
    measured by a probe; ``memory_budget`` None: 80% of the free GPU memory on CUDA, else
    ``gradsal.core.get_memory_budget()``). ``fast``: the opt-in fast path (bf16 autocast where supported,
    channels-last, ``torch.compile`` on CUDA, the layers up to the last max-pool kept in float32);
    ``channels_last``, ``compile`` (True or a dict of ``torch.compile`` arguments) and ``float32_layers``
    (module names or ``"auto"``) set its parts one by one and override ``fast``. ``fidelity``: the least
    Spearman correlation, per sample, between the mixed-precision and the float32 saliency maps on the
    first VJP call; below it the backend warns (:class:`FastPathFidelityWarning`) and runs in float32 from
    then on (default 0.99 when ``fast`` chose bf16 itself, None (no check) for an explicit ``dtype``). See
    the module docstring for the dtype, fast-path and side-effect rules.
    """

    def __init__(self, model: Any, *, device: Any = None, dtype: Any = None,
                 output: Callable[[Any], Any] | None = None, batch_size: int | str | None = None,
                 fast: bool = False, channels_last: bool | None = None, compile: bool | dict | None = None,
                 float32_layers: Sequence[str] | str | None = None, memory_budget: int | None = None,
                 fidelity: float | None = None) -> None:
        torch = _import_torch()
        if not callable(model):
            raise InputTypeError(
                f"TorchBackend needs a torch.nn.Module or a callable on tensors, got {type(model).__name__}."
            )
        if output is not None and not callable(output):
            raise InputTypeError("output= must be a callable mapping the model's output to a tensor, "
                                 "e.g. output=lambda out: out['logits']")
        if batch_size is not None and batch_size != "auto" and (
                isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
            raise InputError(f"batch_size must be a positive int, 'auto' (the largest chunk within the memory "
                             f"budget) or None (all rows at once), got {batch_size!r}")
        if memory_budget is not None and (isinstance(memory_budget, bool)
                                          or not isinstance(memory_budget, numbers.Integral) or memory_budget < 1):
            raise InputError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
        if not isinstance(fast, bool) or (channels_last is not None and not isinstance(channels_last, bool)):
            raise InputTypeError("fast= and channels_last= take True or False.")
        if compile is not None and not isinstance(compile, (bool, dict)):
            raise InputTypeError("compile= takes True, False, or a dict of torch.compile keyword arguments, e.g. "
                                 "{'mode': 'reduce-overhead'}.")
        self._torch = torch
        self._rules = _rules_module()
        self._output = output
        self._batch_size: int | str | None = batch_size if batch_size in (None, "auto") else int(batch_size)
        self._memory_budget = None if memory_budget is None else int(memory_budget)
        self._auto_rows: dict[tuple, int] = {}
        self._forward_ad = True
        where_to = self._target_device(model if isinstance(model, torch.nn.Module) else None, device)
        self._amp_dtype = self._rules.amp_dtype(torch, dtype if dtype is not None or not fast
                                                else _fast_amp_dtype(torch, where_to))
        self._channels_last = fast if channels_last is None else channels_last
        self._float32_layers = _check_layer_names(float32_layers, fast)
        if compile is None:
            compile = fast and where_to.type == "cuda"
        if fidelity is not None and (isinstance(fidelity, bool) or not isinstance(fidelity, numbers.Real)
                                     or not -1.0 <= fidelity <= 1.0):
            raise InputError(f"fidelity must be a Spearman correlation in [-1, 1] or None, got {fidelity!r}")
        # the fast path's own bf16 choice is checked against float32 on the first VJP (0.99 by default);
        # an explicit dtype= is the user's choice and checked only when fidelity= asks for it
        chose_amp = fast and dtype is None and self._amp_dtype is not None
        self._fidelity = float(fidelity) if fidelity is not None else (FAST_PATH_FIDELITY if chose_amp else None)
        self._fidelity_checked = self._amp_dtype is None or self._fidelity is None
        self._compile_options = (dict(compile) if isinstance(compile, dict) else {}) if compile else None
        self._set_model(model, device)

    # ----------------------------------------------------------------- setup
    def _target_device(self, module: Any, device: Any) -> Any:
        where = self._rules.parameter_device(module)
        return self._rules.resolve_device(device) if device is not None else (where or self._torch.device("cpu"))

    def _set_model(self, model: Any, device: Any) -> None:
        torch = self._torch
        module = model if isinstance(model, torch.nn.Module) else None
        where = self._rules.parameter_device(module)
        wanted = self._target_device(module, device)
        copied = False
        if module is not None and where is not None and not self._rules.same_device(where, wanted):
            module = copy.deepcopy(module).to(wanted)  # never move the user's model in place
            model, copied = module, True
        if self._channels_last and module is not None and any(
                t.dim() == 4 for t in (*module.parameters(), *module.buffers())):
            if not copied:
                module = copy.deepcopy(module)  # the memory format is changed on a copy, never on the user's model
                model, copied = module, True
            module.to(memory_format=torch.channels_last)
        float32 = self._float32_modules(module)
        if float32:
            if not copied:
                module = copy.deepcopy(module)
                model = module
                float32 = self._float32_modules(module)
            for sub in float32:
                _run_in_float32(torch, sub, wanted.type)
        self._model = model
        self._module = module
        self._device = wanted
        self._compiled = (torch.compile(model, **self._compile_options)
                          if self._compile_options is not None else None)
        self._param_dtype = self._rules.parameter_dtype(module)
        self._norm_layers = self._rules.running_stat_modules(module)
        self._stochastic = [m for m in (module.modules() if module is not None else ())
                            if isinstance(m, torch.nn.modules.dropout._DropoutNd)] + self._norm_layers

    def _float32_modules(self, module: Any) -> list[Any]:
        """The submodules that run outside autocast (``float32_layers``), or [] when autocast is off."""
        if self._amp_dtype is None or module is None or not self._float32_layers \
                or self._rules.is_script(module, self._torch):
            return []
        if self._float32_layers == "auto":
            leaves = [m for m in module.modules() if next(m.children(), None) is None]
            pools = [i for i, m in enumerate(leaves) if isinstance(m, _max_pool_types(self._torch))]
            return leaves[:pools[-1] + 1] if pools else []
        return [self._named_module_of(module, name) for name in self._float32_layers]

    def _named_module_of(self, module: Any, layer: str) -> Any:
        names = dict(module.named_modules())
        if not isinstance(layer, str) or layer not in names or layer == "":
            raise ModelError(self._rules.unknown_layer_message(layer, list(names)))
        return names[layer]

    @property
    def model(self) -> Any:
        """The wrapped model: the user's, or a private copy when ``device`` differed from the parameters' device,
        or ``channels_last`` / ``float32_layers`` applied (never ``torch.compile``'s wrapper)."""
        return self._model

    @property
    def device(self) -> Any:
        """The ``torch.device`` the model runs on."""
        return self._device

    # ----------------------------------------------------------------- protocol
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs (after ``output=``) for a batch, without building a graph."""
        x = self._rules.check_input(x, self._torch)
        outputs = []
        with self._call_context(), self._torch.no_grad():
            for rows in self._chunks(x):
                xt = self._tensor(x[rows], private=True)
                outputs.append(self._numpy(self._run(xt)))
        return self._rules.join(outputs, x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, J(x)^T cotangent)`` with ``torch.autograd.grad`` on the input only."""
        if not self._fidelity_checked:
            x = self._rules.check_input(x, self._torch)
            cotangent = self._rules.check_cotangent(cotangent, len(x))
            self._check_fidelity(x[:FIDELITY_ROWS], cotangent[:FIDELITY_ROWS])
        return self._vjp(x, cotangent, contextlib.nullcontext)

    def _check_fidelity(self, x: np.ndarray, cotangent: np.ndarray) -> None:
        """Compare the mixed-precision gradients of these rows with float32's; fall back to float32 if they
        rank the input's elements differently (Spearman below ``fidelity``)."""
        fast = self._vjp(x, cotangent, contextlib.nullcontext)[1]
        amp, self._amp_dtype = self._amp_dtype, None
        try:
            reference = self._vjp(x, cotangent, contextlib.nullcontext)[1]
        finally:
            self._amp_dtype = amp
        self._fidelity_checked = True
        worst = _least_map_spearman(fast, reference)
        if worst < self._fidelity:
            self._amp_dtype = None
            warnings.warn(
                f"The fast path's {str(amp).replace('torch.', '')} gradients ranked the input differently from "
                f"float32's (Spearman {worst:.3f} < fidelity={self._fidelity:g} on the first "
                f"{len(x)} rows), so this backend runs in float32 from now on (channels-last and compile "
                f"stay). To keep the mixed precision anyway, pass dtype={amp} explicitly (an explicit dtype "
                "is not checked).",
                FastPathFidelityWarning, stacklevel=self._rules.user_stacklevel())

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, J(x) tangent)`` by forward-mode AD, or two reverse passes where that is unsupported."""
        x = self._rules.check_input(x, self._torch)
        tangent = self._rules.check_like(tangent, x.shape, "tangent", "x")
        outputs, products = [], []
        with self._call_context():
            for rows in self._chunks(x):
                xt = self._tensor(x[rows], private=True)
                tt = self._tensor(tangent[rows], private=False, like=xt)
                out, product = self._jvp_chunk(xt, tt)
                outputs.append(self._numpy(out))
                products.append(self._numpy(product))
        return self._rules.join(outputs, x), self._rules.join(products, x)

    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(activation, d<outputs, cotangent>/d activation)`` at module ``layer`` (a ``named_modules`` name).

        A forward hook (removed after each chunk, errors included) swaps the layer's output for a detached
        leaf copy that requires grad, so the backward pass stops at the layer instead of reaching ``x``,
        and in-place operations after the layer cannot alter the returned activation.
        """
        module = self._named_module(layer)
        self._refuse_script(module, "Layer gradients (Grad-CAM) need a forward hook on the layer, which TorchScript "
                                    "modules do not run")
        x = self._rules.check_input(x, self._torch)
        cotangent = self._rules.check_cotangent(cotangent, len(x))
        activations, grads = [], []
        with self._call_context():
            for rows in self._chunks(x):
                xt = self._tensor(x[rows], private=True)
                activation, grad = self._layer_chunk(module, layer, xt, cotangent[rows])
                activations.append(self._numpy(activation))
                grads.append(self._numpy(grad))
        return self._rules.join(activations, x), self._rules.join(grads, x)

    def with_relu_rule(self, rule: str) -> Any:
        """A backend whose backward pass through ReLUs follows ``rule`` (Springenberg et al. 2015).

        ``"standard"`` returns this backend; ``"guided"`` and ``"deconvnet"`` return a
        :class:`ReluRuleBackend` sharing the model, which is not changed (see the module docstring for
        which ReLU calls are rerouted).
        """
        if rule not in _RULES:
            raise InputError(f"Unknown ReLU rule {rule!r}: use one of {', '.join(_RULES)}.")
        if rule == "standard":
            return self
        if self._module is not None:
            self._refuse_script(self._module, "Guided backprop/deconvnet cannot reroute the ReLUs of TorchScript "
                                              "code (it does not call Python)")
        return ReluRuleBackend(self, rule)

    def float64(self) -> TorchBackend | None:
        """A backend on a float64 deep copy of the model, without autocast or the fast path, for gradient
        checks as strict as ``torch.autograd.gradcheck``; the user's model is not changed. None for a plain
        callable (its tensors' dtypes are its own) and for TorchScript (a deep copy cannot be converted).
        """
        module = self._module
        if module is None or self._rules.is_script(module, self._torch):
            return None
        if any(t.is_floating_point() and t.dtype not in (self._torch.float16, self._torch.bfloat16,
                                                            self._torch.float32, self._torch.float64)
               for t in (*module.parameters(), *module.buffers())):
            return None
        return TorchBackend(copy.deepcopy(module).double(), device=self._device, output=self._output,
                            batch_size=self._batch_size, memory_budget=self._memory_budget)

    def randomized(self, layers: Sequence[str], seed: int) -> TorchBackend:
        """A backend on a deep copy of the model whose named layers are re-initialised; the original stays.

        Each named module and its submodules get ``reset_parameters()`` (else a normal draw of the same
        scale) under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so the global random
        state is untouched and equal seeds give equal weights (Adebayo et al. 2018, cascading and
        independent randomisation tests).
        """
        torch = self._torch
        if self._module is None:
            raise UnsupportedModelError("randomized() needs an nn.Module; this backend wraps a plain callable.")
        if isinstance(layers, str):
            layers = [layers]
        for name in layers:
            self._named_module(name)
        self._refuse_script(self._module, "randomized() re-initialises a deep copy of the model, and a deep copy of "
                                          "TorchScript code gives parameters torch cannot re-initialise")
        clone = copy.deepcopy(self._module)
        named = dict(clone.named_modules())
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for name in layers:
                if next(named[name].parameters(), None) is None:
                    raise ModelError(f"Layer {name!r} has no parameters to randomise; name a layer with weights.")
                self._rules.reinitialize(named[name])
        twin = copy.copy(self)
        twin._set_model(clone, self._device)
        return twin

    def auto_batch_size(self, x: np.ndarray) -> int:
        """The rows per chunk that ``batch_size="auto"`` uses for inputs shaped like ``x`` (probing if needed).

        Two probe steps (forward and input-gradient backward, eager, under this backend's autocast and
        memory format) on the first 1 and 2 rows measure the peak memory: on CUDA the allocator's peak
        (``torch.cuda.max_memory_allocated``, whose peak statistic the probe resets), elsewhere the bytes
        of the tensors autograd saves for the backward pass plus the input, output and the largest
        transient gradients. A line through the two gives the fixed and per-row cost, and the chunk is
        the largest row count within the budget (:func:`gradsal.core.batching.rows_within_budget`). The
        answer is kept per input shape and dtype; a batch of one row needs no probe. The result never
        exceeds ``len(x)``.
        """
        x = self._rules.check_input(x, self._torch)
        with self._call_context():
            return self._auto_batch_size(x)

    # ----------------------------------------------------------------- internals
    def _auto_batch_size(self, x: np.ndarray) -> int:
        key = (tuple(x.shape[1:]), x.dtype.str)
        if key not in self._auto_rows:
            if len(x) < 2:
                return len(x)
            self._auto_rows[key] = rows_within_budget(self._budget(), lambda k: self._probe_bytes(x[:k]),
                                                      min_row_bytes=2 * x[0].nbytes)  # the row and its gradient
        return max(1, min(len(x), self._auto_rows[key]))

    def _budget(self) -> int:
        torch = self._torch
        if self._memory_budget is not None:
            return self._memory_budget
        if self._device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self._device)
            cached = torch.cuda.memory_reserved(self._device) - torch.cuda.memory_allocated(self._device)
            return max(1, int(CUDA_BUDGET_FRACTION * (free + cached)))
        return get_memory_budget()

    def _probe_bytes(self, rows: np.ndarray) -> int:
        """Peak memory (bytes) of one eager input-gradient step on ``rows`` (see :meth:`auto_batch_size`)."""
        torch = self._torch
        cuda = self._device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self._device)
            torch.cuda.reset_peak_memory_stats(self._device)
            before = torch.cuda.memory_allocated(self._device)
        resident = {t.untyped_storage().data_ptr() for t in (*self._module.parameters(), *self._module.buffers())} \
            if self._module is not None else set()
        saved: dict[int, int] = {}

        def pack(tensor: Any) -> Any:
            try:
                storage = tensor.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError, TypeError):  # tensors without a plain storage
                key, nbytes = id(tensor), tensor.numel() * tensor.element_size()
            if key not in resident:
                saved[key] = nbytes
            return tensor

        xt = self._tensor(rows, private=True).requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = self._run(xt, eager=True)
            grad = self._grad(out, xt, torch.ones_like(out))
        if cuda:
            torch.cuda.synchronize(self._device)
            return int(torch.cuda.max_memory_allocated(self._device) - before)
        tensor_bytes = 2 * xt.numel() * xt.element_size() + grad.numel() * grad.element_size()
        transient = 2 * max(saved.values(), default=0)  # gradients in flight during the backward pass
        return int(sum(saved.values()) + transient + tensor_bytes + out.numel() * out.element_size())

    def _vjp(self, x: np.ndarray, cotangent: np.ndarray,
             extra: Callable[[], contextlib.AbstractContextManager],
             eager: bool = False) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        x = self._rules.check_input(x, torch)
        cotangent = self._rules.check_cotangent(cotangent, len(x))
        outputs, grads = [], []
        with self._call_context():
            for rows in self._chunks(x):
                xt = self._tensor(x[rows], private=False).requires_grad_(True)
                with torch.enable_grad(), extra():
                    out = self._run(xt, eager=eager)
                    ct = self._cotangent_tensor(cotangent[rows], out)
                    grad = self._grad(out, xt, ct)
                outputs.append(self._numpy(out))
                grads.append(self._numpy(grad))
        return self._rules.join(outputs, x), self._rules.join(grads, x)

    @contextlib.contextmanager
    def _call_context(self) -> Iterator[None]:
        torch = self._torch
        if any(m.training for m in self._stochastic):
            warnings.warn(
                "The model is in training mode and has dropout or batch-norm layers: its saliency is that of a "
                "stochastic model (batch statistics, random masks). Call model.eval() first; gradsal leaves "
                "the mode as you set it.", UserWarning, stacklevel=self._rules.user_stacklevel())
        autocast = (torch.autocast(device_type=self._device.type, dtype=self._amp_dtype)
                    if self._amp_dtype is not None else contextlib.nullcontext())
        with self._rules.frozen_parameters(self._module), \
                self._rules.restored_running_stats(self._norm_layers), autocast:
            yield

    def _chunks(self, x: np.ndarray) -> Iterator[slice]:
        n = len(x)
        step = self._auto_batch_size(x) if self._batch_size == "auto" else (self._batch_size or n)
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    def _compute_dtype(self, array: np.ndarray) -> Any:
        torch = self._torch
        if self._param_dtype is not None and self._amp_dtype is None:
            return self._param_dtype
        return torch.float64 if array.dtype == np.float64 and self._param_dtype in (None, torch.float64) \
            else torch.float32

    def _tensor(self, array: np.ndarray, *, private: bool, like: Any = None) -> Any:
        """``array`` as a tensor on the device in the compute dtype; ``private``: never sharing its memory."""
        copied = not (array.flags.c_contiguous and array.flags.writeable and array.dtype.isnative)
        if copied:
            array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C")
        host = self._torch.from_numpy(array)
        dtype = like.dtype if like is not None else self._compute_dtype(array)
        tensor = host.to(device=self._device, dtype=dtype)
        if self._channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=self._torch.channels_last)
        if private and not copied and tensor.data_ptr() == host.data_ptr():
            tensor = tensor.clone()  # the model may write to its input in place (e.g. ReLU(inplace=True))
        return tensor

    def _numpy(self, tensor: Any) -> np.ndarray:
        torch = self._torch
        tensor = tensor.detach()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.contiguous().cpu().numpy()  # C order, also for channels-last gradients

    def _run(self, xt: Any, *, wrap: bool = True, eager: bool = False) -> Any:
        """The model's (selected) output for one chunk, checked; framework failures become BackendError.

        The compiled model (``compile=``) runs unless ``eager``: hooks, function modes and forward-mode AD
        need the eager one.
        """
        model = self._model if eager or self._compiled is None else self._compiled
        try:
            raw = model(xt)
        except GradsalError:
            raise
        except Exception as exc:
            if not wrap:
                raise
            raise self._rules.model_failure(exc, xt) from exc
        return self._select_output(raw, len(xt))

    def _select_output(self, raw: Any, rows: int) -> Any:
        torch = self._torch
        out = raw
        if self._output is not None:
            try:
                out = self._output(raw)
            except Exception as exc:
                raise ModelError(
                    f"The output= callable failed on the model's {type(raw).__name__} output: "
                    f"{type(exc).__name__}: {exc}. Make it map that object to the tensor to explain."
                ) from exc
        if not isinstance(out, torch.Tensor):
            raise ModelError(self._rules.non_tensor_message(out, self._output is not None))
        if not out.is_floating_point():
            raise ModelError(f"The model output has dtype {out.dtype}, which has no gradient (an argmax or a "
                             "label?). Return the logits or scores instead, or select them with output=.")
        if out.ndim == 0 or out.shape[0] != rows:
            raise ModelError(
                f"The model output has shape {tuple(out.shape)} for a batch of {rows} inputs; gradsal needs one "
                "output row per input (N, ...). Return per-sample outputs (no reduction over the batch)."
            )
        return out

    def _cotangent_tensor(self, cotangent: np.ndarray, out: Any) -> Any:
        if cotangent.shape != tuple(out.shape):
            raise InputError(
                f"cotangent shape {cotangent.shape} does not match the model output shape {tuple(out.shape)}: "
                "pass one cotangent shaped like forward(x) (or a target that selects outputs)."
            )
        return self._torch.from_numpy(np.ascontiguousarray(cotangent)).to(device=out.device, dtype=out.dtype)

    def _grad(self, out: Any, wrt: Any, cotangent: Any, what: str = "the input x") -> Any:
        torch = self._torch
        if not out.requires_grad:
            raise ModelError(self._rules.no_dependence_message(what))
        try:
            (grad,) = torch.autograd.grad(out, wrt, cotangent, allow_unused=True)
        except GradsalError:
            raise
        except Exception as exc:
            raise self._rules.model_failure(exc, wrt, stage="backward") from exc
        if grad is None:
            raise ModelError(self._rules.no_dependence_message(what))
        return grad

    def _jvp_chunk(self, xt: Any, tt: Any) -> tuple[Any, Any]:
        torch = self._torch
        if self._forward_ad:
            try:
                with warnings.catch_warnings():  # torch's first forward-AD use scripts decompositions
                    warnings.filterwarnings("ignore", ".*torch.jit.script.* is deprecated", DeprecationWarning)
                    return torch.func.jvp(lambda t: self._run(t, wrap=False, eager=True), (xt,), (tt,))
            except GradsalError:
                raise
            except (RuntimeError, NotImplementedError):
                pass  # no forward-AD formula somewhere in the model: use two reverse passes below
        with torch.enable_grad():
            xg = xt.detach().requires_grad_(True)
            out = self._run(xg, eager=True)
            probe = torch.zeros_like(out, requires_grad=True)
            if not out.requires_grad:
                raise ModelError(self._rules.no_dependence_message())
            try:
                (pullback,) = torch.autograd.grad(out, xg, probe, create_graph=True, allow_unused=True)
                if pullback is None:
                    raise ModelError(self._rules.no_dependence_message())
                (product,) = torch.autograd.grad(pullback, probe, tt, allow_unused=True)
            except GradsalError:
                raise
            except Exception as exc:
                raise self._rules.model_failure(exc, xt, stage="double-backward JVP fallback") from exc
        self._forward_ad = False
        return out, torch.zeros_like(out) if product is None else product

    def _layer_chunk(self, module: Any, layer: str, xt: Any, cotangent: np.ndarray) -> tuple[Any, Any]:
        torch = self._torch
        captured: list[Any] = []

        def capture(_module: Any, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                raise ModelError(f"Layer {layer!r} returns a {type(output).__name__}, not a float tensor; choose a "
                                 "layer whose output is one tensor (e.g. a conv or a block).")
            # A leaf cut from the graph: nothing before the layer is recorded or back-propagated through.
            activation = output.detach().requires_grad_(True)
            captured.append(activation)
            return activation.clone()  # later in-place ops (ReLU(inplace=True), +=) must not touch it

        handle = module.register_forward_hook(capture)
        try:
            with torch.enable_grad():
                out = self._run(xt, eager=True)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ModelError(self._rules.layer_call_message(layer, len(captured), self._model, torch))
        cotangent_tensor = self._cotangent_tensor(cotangent, out)
        return captured[0], self._grad(out, captured[0], cotangent_tensor, what=f"layer {layer!r}")

    def _refuse_script(self, module: Any, why: str) -> None:
        if any(self._rules.is_script(m, self._torch) for m in module.modules()):
            raise UnsupportedModelError(
                f"{why}. Pass the eager nn.Module instead of the scripted one, or export the model to ONNX "
                "(torch.onnx.export) and use OnnxBackend, which has layer gradients and randomization for any model."
            )

    def _named_module(self, layer: str) -> Any:
        if self._module is None:
            raise UnsupportedModelError("Layer gradients need an nn.Module with named submodules; this backend "
                                        "wraps a plain callable.")
        return self._named_module_of(self._module, layer)


class ReluRuleBackend:
    """A :class:`TorchBackend` view whose VJP uses the guided or deconvnet ReLU rule (Springenberg 2015).

    Forward passes are the model's own. The rule is active only inside ``vjp`` and only through a
    ``TorchFunctionMode``; the model and the original backend are not changed.
    """

    def __init__(self, base: TorchBackend, rule: str) -> None:
        self._base = base
        self.rule = rule

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs (the rule changes gradients only)."""
        return self._base.forward(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, R)`` with ``R`` the cotangent pulled back with the ReLU rule in place of ReLU's gradient."""
        modes: list[Any] = []

        def mode() -> Any:
            modes.append(self._base._rules.ReluRuleMode(self.rule))
            return modes[-1]

        result = self._base._vjp(x, cotangent, mode, eager=True)
        if not any(m.relu_calls for m in modes):
            warnings.warn(f"No ReLU was intercepted while running the model, so the {self.rule} rule changed "
                          "nothing: the result is the plain gradient (see gradsal.backends.torch for which ReLU "
                          "calls are rerouted).", UserWarning, stacklevel=self._base._rules.user_stacklevel())
        return result


plugin = BackendPlugin(
    name="torch",
    accepts=_accepts,
    create=TorchBackend,
    accepts_text="a torch.nn.Module (or torch.jit.ScriptModule)",
    extra="torch",
    priority=10,
)
