"""ONNX backend: gradients of an ``.onnx`` model, computed by gradient graphs that onnxruntime runs.

``OnnxBackend(model)`` implements :class:`~gradsal.core.GradientBackend` (``forward``, ``vjp``) and
``SupportsJVP``, ``SupportsLayers``, ``SupportsReluRule`` and ``SupportsRandomization``. onnxruntime only
runs inference, so for each input shape gradsal writes a second ONNX graph computing the output and
``J(x)^T v`` (or ``J(x) u``) with one rule per operator (``_graph.build_gradient_model``), and runs it in
its own ``InferenceSession``; graphs and sessions are cached per (input shape, mode, layer, ReLU rule).

Rules, in the order they apply:

- **Model**: a path, bytes or ``onnx.ModelProto`` (copied; the caller's object is never changed). External
  data is read only from inside the model's folder. A corrupt file is a :class:`ModelError`.
- **Input**: ``input_name`` picks one of several inputs; the others must be fixed with
  ``constant_inputs={name: array}`` (they become constants of gradsal's private copy).
- **Output**: ``output_name`` is any graph output or intermediate tensor (default: the first graph
  output that is not declared integer or boolean, with an :class:`OutputChoiceWarning` when that skips
  one). When that default output is a Softmax/LogSoftmax (possibly through Identity; also a softmax
  written as Exp/ReduceSum/Div or Mul(Reciprocal), with or without the max subtracted) the backend
  explains its input, the logits, and warns (:class:`LogitsWarning`); ``explain_logits=False`` or an
  explicit ``output_name`` keeps the probabilities.
- **Dtypes**: ``x`` is checked against the declared rank and fixed sizes (a symbolic size is a hint, as for
  onnxruntime) and fed, as a copy, in the declared dtype (float16/32/64); results come back as float32, or
  float64 when the model computes in float64. ``output_batch_axis`` names the output's batch axis when it
  is not the first; results and cotangents are batch-first.
- **Sessions**: ``providers`` defaults to the CPU. ``"cuda"``/``"CUDAExecutionProvider"`` is used when
  onnxruntime has it; asking for a provider onnxruntime lacks is an error (:class:`MissingDependencyError`),
  never a silent CPU run. Every session uses ``session_options`` when given, else ``ORT_ENABLE_ALL``.
- **Quantised models**: refused by name (:class:`UnsupportedOperatorError`) unless
  ``quantised="straight_through"``: QuantizeLinear/DequantizeLinear pairs and dynamic quantisation
  (``ConvInteger``/``MatMulInteger``) are then differentiated as the float network they approximate
  (``_straight_through``, with a :class:`StraightThroughWarning`); outputs stay the quantised model's.
- **Fallback**: an operator without a differentiation rule raises :class:`UnsupportedOperatorError`;
  ``fallback="finite_differences"`` instead warns (:class:`FiniteDifferenceWarning`) and differentiates
  the whole model numerically (central differences of ``forward``: slow, approximate). ``layer_vjp``
  has no numerical fallback. A model declared with a fixed batch size gets the perturbed copies of ``x``
  in batches of exactly that size (the last one padded by repeating its last row).
- **Value-dependent shapes**: a graph is built at the first ``x`` of each shape. Where a tensor's shape
  depends on the input's values (a ``Range`` up to ``ReduceMax(x)``), the gradient graph also returns
  those shapes, and a run that finds other shapes than the build's rebuilds the graph at its own ``x``.
"""

from __future__ import annotations

import collections
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.errors import (
    BackendError,
    GradsalError,
    InputError,
    InputTypeError,
    MissingDependencyError,
    ModelError,
    UnsupportedOperatorError,
)
from .._stacklevel import user_stacklevel
from . import _graph_edit as edit
from . import _model_io as io
from . import _output_layout as layout
from . import rules
from ._constant_inputs import checked_constant
from ._float64 import float64_copy
from ._softmax_head import softmax_logits
from ._straight_through import StraightThroughWarning, float_equivalent

RELU_RULES = ("standard", "guided", "deconvnet")
FALLBACKS = (None, "finite_differences")
QUANTISED = ("refuse", "straight_through")
CACHE_SIZE = 8
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
}


class LogitsWarning(UserWarning):
    """The model ends in Softmax/LogSoftmax and gradsal explains the logits instead of the probabilities."""


class OutputChoiceWarning(UserWarning):
    """The model's first output is not a float tensor; gradsal explains its first float output instead."""


class FiniteDifferenceWarning(UserWarning):
    """gradsal differentiates the model numerically because an operator has no gradient rule."""


def load_rules() -> None:
    """Import the per-operator rule modules so that their rules register (they need onnx)."""
    rules.load()


@dataclass(frozen=True)
class _Built:
    """A gradient graph, its session and what its seed input must look like."""

    graph: Any  # _graph.GradientGraph
    session: Any  # onnxruntime.InferenceSession
    seed_shape: tuple[int, ...]
    seed_dtype: np.dtype


_FALLBACK = object()  # cache entry: this key is differentiated by finite differences
_STALE = object()  # a run's verdict: the graph is not valid at this x (another shape); rebuild it there
# After a run where a speculative graph's guard fired, this many calls at that shape use the exact graph
# directly, then the speculative one is tried again: inputs on which a guard fires every time (a max pool
# over flat regions ties on every call) pay the speculative run once in this many + 1.
EXACT_CALLS_AFTER_A_GUARD = 16


class _Shared:
    """State shared by an OnnxBackend and its ``with_relu_rule`` twins: model, sessions, graph cache."""

    def __init__(self, proto: Any, label: str, settings: dict[str, Any]) -> None:
        self.proto = proto
        self.label = label
        self.settings = settings
        self.gradient_proto = proto  # what gradient graphs differentiate (the float network, straight-through)
        self.cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.lock = threading.Lock()
        # per (shape, mode, wrt, relu rule): calls left that go straight to the exact graph, after a run of
        # the speculative one where a guard fired
        self.exact_calls_left: dict[tuple, int] = {}


class OnnxBackend:
    """Gradients of an ONNX model with respect to its input, NumPy in and NumPy out.

    ``model``: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``. ``input_name``: the input
    to differentiate (required when the model has several; fix the others with ``constant_inputs``).
    ``output_name``: the tensor to explain, any graph output or intermediate tensor. ``providers``:
    onnxruntime execution providers (default CPU; ``"cuda"`` for the GPU). ``fallback``:
    ``"finite_differences"`` to differentiate numerically when an operator has no rule.
    ``session_options``: an ``onnxruntime.SessionOptions`` used for every session. ``explain_logits``:
    explain a final Softmax's input (see the module docstring). ``constant_inputs``: values for the other
    inputs (checked against their declared shapes and dtypes). ``output_batch_axis``: the explained output's
    batch axis when it is not the first (a time-major ``(T, N, C)`` output: 1), or None when the output has
    no batch axis (one sample per call); results and cotangents are batch-first either way. ``quantised``:
    ``"straight_through"`` differentiates a quantised model as the float network it approximates.
    """

    def __init__(
        self,
        model: Any,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        providers: Sequence[Any] | str | None = None,
        fallback: str | None = None,
        session_options: Any = None,
        explain_logits: bool = True,
        constant_inputs: Mapping[str, Any] | None = None,
        output_batch_axis: int | None = 0,
        quantised: str = "refuse",
    ) -> None:
        io.import_onnx()
        ort = io.import_onnxruntime()
        if fallback not in FALLBACKS:
            raise InputError(f"fallback must be None or 'finite_differences', got {fallback!r}.")
        if quantised not in QUANTISED:
            raise InputError(f"quantised must be 'refuse' or 'straight_through', got {quantised!r}.")
        for arg, value in (("input_name", input_name), ("output_name", output_name)):
            if value is not None and not isinstance(value, str):
                raise InputTypeError(f"{arg} must be a tensor name (str) or None, got {type(value).__name__}.")
        if session_options is not None and not isinstance(session_options, ort.SessionOptions):
            raise InputTypeError(
                f"session_options must be an onnxruntime.SessionOptions, got {type(session_options).__name__}."
            )
        self._output_batch_axis = layout.check_axis(output_batch_axis)
        loaded = io.load_model(model)
        load_rules()
        settings = {
            "providers": _providers(ort, providers),
            "fallback": fallback,
            "quantised": quantised,
            "session_options": session_options if session_options is not None else _default_options(ort),
        }
        self._setup(loaded.proto, loaded.label, settings, input_name, output_name, explain_logits,
                    constant_inputs)

    # ----------------------------------------------------------------------------------------- setup
    def _setup(self, proto: Any, label: str, settings: dict[str, Any], input_name: str | None,
               output_name: str | None, explain_logits: bool, constant_inputs: Mapping[str, Any] | None) -> None:
        graph = proto.graph
        input_vi = _choose_input(graph, input_name, label, constant_inputs)
        if constant_inputs:
            _fold_constant_inputs(proto, constant_inputs, input_vi.name, label)
        self._folded_constants = bool(constant_inputs)
        self._input_name = input_vi.name
        self._input_shape = io.declared_shape(input_vi)
        dtype = io.declared_dtype(input_vi)
        if dtype is None or dtype.kind not in "fiub":
            raise ModelError(
                f"{label}: input {io.describe_input(input_vi)} has an element type gradsal cannot feed "
                "from NumPy (float16, float32, float64 or integers are supported)."
            )
        self._input_dtype = dtype
        self._output_name = _choose_output(graph, output_name, explain_logits, label)
        self._relu_rule = "standard"
        self._shared = _Shared(proto, label, settings)
        if settings.get("quantised") == "straight_through":
            self._shared.gradient_proto = _straight_through(proto, label)
        self._forward_session = self._make_forward_session()

    def _make_forward_session(self) -> Any:
        onnx = io.import_onnx()
        proto = self._shared.proto
        if [o.name for o in proto.graph.output] != [self._output_name]:  # run only what the output needs
            proto = onnx.ModelProto()
            proto.CopyFrom(self._shared.proto)
            declared = {vi.name: vi for vi in proto.graph.value_info}
            vi = declared.get(self._output_name) or onnx.helper.make_empty_tensor_value_info(self._output_name)
            del proto.graph.output[:]
            proto.graph.output.append(vi)
        try:
            return self._session(proto)
        except GradsalError:
            raise
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {self._shared.label}: {_message(exc)}") from exc

    def _session(self, proto: Any) -> Any:
        ort = io.import_onnxruntime()
        settings = self._shared.settings
        session = ort.InferenceSession(
            proto.SerializeToString(), settings["session_options"], providers=settings["providers"]
        )
        wanted = [p if isinstance(p, str) else p[0] for p in settings["providers"]]
        missing = [p for p in wanted if p not in session.get_providers()]
        if missing:
            raise MissingDependencyError(
                f"onnxruntime could not start the execution provider(s) {missing} (it runs with "
                f"{session.get_providers()}). For CUDA install onnxruntime-gpu with a matching CUDA/cuDNN "
                "(pip install onnxruntime-gpu), or pass providers=['CPUExecutionProvider']."
            )
        return session

    def __repr__(self) -> str:
        shape = io.format_shape(self._input_shape)
        return (f"OnnxBackend({self._shared.label!r}, input {self._input_name!r} {self._input_dtype}{shape}, "
                f"output {self._output_name!r}, relu_rule={self._relu_rule!r})")

    # ------------------------------------------------------------------------------------- properties
    @property
    def input_name(self) -> str:
        """The model input that is differentiated."""
        return self._input_name

    @property
    def output_name(self) -> str:
        """The tensor that is explained (the logits when the model ends in Softmax, see the docstring)."""
        return self._output_name

    @property
    def input_shape(self) -> tuple[int | str | None, ...] | None:
        """The input's declared shape: ints, symbol names (``"batch"``) or None; None if undeclared."""
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype ``x`` is fed in (the input's declared element type)."""
        return self._input_dtype

    @property
    def relu_rule(self) -> str:
        """How gradient graphs treat Relu: ``"standard"``, ``"guided"`` or ``"deconvnet"``."""
        return self._relu_rule

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions run on."""
        return list(self._forward_session.get_providers())

    # ---------------------------------------------------------------------------------------- protocol
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The explained tensor for a batch, from a plain onnxruntime session on the original model."""
        x = self._check_x(x)
        (output,) = self._run(self._forward_session, [self._output_name], {self._input_name: x}, "forward")
        return io.as_result(self._batch_first(output))

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, J(x)^T cotangent)`` from the reverse-mode gradient graph at ``x``'s shape."""
        x = self._check_x(x)
        results = self._gradient(x, "vjp", None, self._model_layout(cotangent, "cotangent"), "VJP")
        if results is None:
            return self._numeric(x).vjp(x, cotangent)
        output, grad = results
        return io.as_result(self._batch_first(self._quantised_output(x, output))), io.as_result(grad)

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(outputs, J(x) tangent)`` from the forward-mode gradient graph at ``x``'s shape."""
        x = self._check_x(x)
        results = self._gradient(x, "jvp", None, tangent, "JVP")
        if results is None:
            return self._numeric(x).jvp(x, tangent)
        output, product = results
        output = self._quantised_output(x, output)
        return io.as_result(self._batch_first(output)), io.as_result(self._batch_first(product))

    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(activation, d<outputs, cotangent>/d activation)`` at the tensor named ``layer``.

        Any intermediate tensor is a layer; for Grad-CAM use a Conv output (see :meth:`layer_names`).
        """
        self._check_layer(layer)
        x = self._check_x(x)
        if layer == self._input_name:
            _, grad = self.vjp(x, cotangent)
            return io.as_result(x.copy()), grad  # a copy: x may be the caller's own array
        activation, grad = self._gradient(x, "vjp", layer, self._model_layout(cotangent, "cotangent"),
                                          f"layer VJP at {layer!r}")
        return io.as_result(activation), io.as_result(grad)

    def layer_names(self, op_types: Sequence[str] | str = ("Conv",)) -> list[str]:
        """Tensors produced by nodes of ``op_types`` that the explained output depends on, in graph order.

        The candidates for :meth:`layer_vjp` (Grad-CAM usually takes the last Conv output).
        """
        wanted = {op_types} if isinstance(op_types, str) else set(op_types)
        graph = self._shared.proto.graph
        needed = io.ancestors(graph, self._output_name)
        return [node.output[0] for node in graph.node
                if node.op_type in wanted and node.output and node.output[0] in needed]

    def with_relu_rule(self, rule: str) -> OnnxBackend:
        """A backend sharing this model whose gradient graphs pass cotangents through Relu by ``rule``.

        ``"guided"``: only positive cotangents through positive activations; ``"deconvnet"``: positive
        cotangents regardless of the activation (Springenberg et al. 2015); ``"standard"``: the true
        gradient. Only ONNX ``Relu`` nodes follow the rule; the original backend is unchanged.
        """
        if rule not in RELU_RULES:
            raise InputError(f"unknown ReLU rule {rule!r}: use one of {', '.join(RELU_RULES)}.")
        if rule != "standard" and not self.layer_names("Relu"):
            warnings.warn(
                f"No Relu node lies between the input and the explained output, so the {rule} rule changes nothing: "
                "the result is the plain gradient (only ONNX Relu nodes follow the rule; ReLU6 exported as Clip, "
                "HardSwish and LeakyRelu do not).", UserWarning, stacklevel=user_stacklevel())
        twin = object.__new__(OnnxBackend)
        twin.__dict__.update(self.__dict__)
        twin._relu_rule = rule
        return twin

    def randomized(self, layers: Sequence[str] | str, seed: int) -> OnnxBackend:
        """A backend on a copy of the model whose named weights are redrawn (Adebayo et al. 2018).

        ``layers``: initializer names, node names, or tensors produced by a node (e.g. a Conv output);
        a node's floating-point initializers (weights and biases) are redrawn. Values are normal with the
        original's standard deviation (non-negative where the original is, e.g. variances), seeded by
        ``seed``; this backend and its model are unchanged.
        """
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise InputError("randomized() needs at least one layer name.")
        proto = io.randomize(self._shared.proto, names, int(seed))
        return self._twin(proto, f"{self._shared.label} (randomised {', '.join(names)})")

    def float64(self) -> OnnxBackend | None:
        """A backend on a float64 copy of the model (see ``_float64``), for gradient checks as strict as
        ``torch.autograd.gradcheck``; None where onnxruntime lacks a double kernel for one of its operators
        or its gradient graph's (``Conv`` on the CPU, for one). This backend and its model are unchanged."""
        if self._input_dtype == np.float64:
            return self
        if self._input_dtype != np.float32:
            return None
        try:
            return self._twin(float64_copy(self._shared.proto), f"{self._shared.label} (float64)")
        except GradsalError:
            return None

    def _twin(self, proto: Any, label: str) -> OnnxBackend:
        """A backend on another version of this model (same input, output, settings and ReLU rule)."""
        twin = object.__new__(OnnxBackend)
        with warnings.catch_warnings():  # the user was told once, by this backend
            warnings.simplefilter("ignore", StraightThroughWarning)
            twin._setup(proto, label, self._shared.settings, self._input_name, self._output_name, False, None)
        twin._relu_rule = self._relu_rule
        twin._folded_constants = self._folded_constants
        twin._output_batch_axis = self._output_batch_axis
        return twin

    # ---------------------------------------------------------------------------------------- internals
    def _check_x(self, x: Any) -> np.ndarray:
        x = io.check_input_array(x, self._input_name, self._input_shape, self._input_dtype)
        layout.check_one_sample(x, self._output_batch_axis)
        return x

    def _batch_first(self, output: np.ndarray) -> np.ndarray:
        return layout.to_batch_first(output, self._output_batch_axis, self._output_name)

    def _model_layout(self, seed: Any, what: str) -> Any:
        return layout.to_model_layout(seed, self._output_batch_axis, self._output_name, what)

    def _quantised_output(self, x: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The model's own output: a straight-through gradient graph computes the float network's."""
        if self._shared.gradient_proto is self._shared.proto:
            return output
        return self._run(self._forward_session, [self._output_name], {self._input_name: x}, "forward")[0]

    def _check_layer(self, layer: Any) -> None:
        if not isinstance(layer, str):
            raise InputTypeError(f"layer must be a tensor name (str), got {type(layer).__name__}.")
        names = io.tensor_names(self._shared.proto.graph)
        if layer not in names:
            raise ModelError(
                f"the model has no tensor named {layer!r} to use as a layer. "
                + io.close_matches(layer, names, "tensors")
                + " OnnxBackend.layer_names() lists the Conv outputs."
            )

    def _graph_key(self, x: np.ndarray, mode: str, wrt: str | None) -> tuple:
        """What a gradient graph is built for (the cache adds whether it is the exact, non-speculative one)."""
        return (tuple(x.shape), mode, wrt, self._relu_rule)

    def _built(self, x: np.ndarray, mode: str, wrt: str | None, speculative: bool, stale: Any = None) -> Any:
        """The cached graph for ``x``'s shape, built (probed at ``x``) if missing or if it is ``stale``."""
        key = (*self._graph_key(x, mode, wrt), not speculative)
        shared = self._shared
        with shared.lock:
            if key in shared.cache and (stale is None or shared.cache[key] is not stale):
                shared.cache.move_to_end(key)
                return shared.cache[key]
            built = self._build(x, mode, wrt, speculative)
            shared.cache[key] = built
            shared.cache.move_to_end(key)
            while len(shared.cache) > CACHE_SIZE:
                shared.cache.popitem(last=False)
            return built

    def _gradient(self, x: np.ndarray, mode: str, wrt: str | None, seed: Any, what: str) -> list[np.ndarray] | None:
        """``[output or activation, result]`` from the gradient graph at ``x``, or None for the fallback.

        The graph may speculate (``GradientGraph.guards``): where one of its guards fires, the run is redone
        on the exact graph, which the next calls at this shape then use directly for a while.
        """
        key = self._graph_key(x, mode, wrt)
        speculative = self._speculation_allowed(key)
        results = self._run_valid(x, mode, wrt, seed, what, speculative)
        if results is not None and any(bool(fired) for fired in results[2:]):  # only a speculative graph has guards
            with self._shared.lock:
                self._shared.exact_calls_left[key] = EXACT_CALLS_AFTER_A_GUARD
            results = self._run_valid(x, mode, wrt, seed, what, speculative=False)
        return None if results is None else results[:2]

    def _speculation_allowed(self, key: tuple) -> bool:
        """False while the calls that go straight to the exact graph (a recent call's guard fired) last."""
        with self._shared.lock:
            left = self._shared.exact_calls_left.get(key, 0)
            if left:
                self._shared.exact_calls_left[key] = left - 1
            return left == 0

    def _run_valid(self, x: np.ndarray, mode: str, wrt: str | None, seed: Any, what: str,
                   speculative: bool) -> list[np.ndarray] | None:
        """``[output or activation, result, *guard outputs]`` from a graph valid at ``x``, or None for the fallback.

        A graph with tensors whose shapes vary with the input's values (``shape_checks``) is valid only
        where they have the shapes of its build: if a run finds others (or fails, or the seed has another
        shape than the build's output), the graph is rebuilt once at this ``x``.
        """
        built = self._built(x, mode, wrt, speculative)
        results = self._run_checked(built, x, mode, wrt, seed, what, last_try=False)
        if results is _STALE:
            built = self._built(x, mode, wrt, speculative, stale=built)
            results = self._run_checked(built, x, mode, wrt, seed, what, last_try=True)
        return results  # type: ignore[return-value]

    def _run_checked(self, built: Any, x: np.ndarray, mode: str, wrt: str | None, seed: Any, what: str,
                     last_try: bool) -> Any:
        """Run ``built``: its results (outputs, then guards), None for the fallback, or ``_STALE`` when the
        graph is not valid at ``x`` and may be rebuilt (``last_try``: it was; raise instead)."""
        if built is _FALLBACK:
            return None
        graph = built.graph
        checks = graph.shape_checks
        like = "x" if mode == "jvp" else "the model output"
        names = [graph.wrt_name if wrt is not None else graph.output_name, graph.result_name]
        try:
            seed_array = io.check_seed(seed, built.seed_shape, built.seed_dtype,
                                       "tangent" if mode == "jvp" else "cotangent", like)
            feeds = {graph.input_name: x, graph.seed_name: seed_array}
            wanted = [*names, *(check for check, _, _ in checks), *(guard.output for guard in graph.guards)]
            results = self._run(built.session, wanted, feeds, what)
        except (InputError, BackendError):
            if not checks or last_try:
                raise
            return _STALE
        found_shapes = results[len(names):len(names) + len(checks)]
        moved = [(tensor, shape, tuple(int(d) for d in found))
                 for (_, tensor, shape), found in zip(checks, found_shapes, strict=True)
                 if tuple(int(d) for d in found) != shape]
        if not moved:
            return [*results[:len(names)], *results[len(names) + len(checks):]]
        if last_try:
            raise BackendError(
                f"gradsal internal error: the {what} graph of {self._shared.label}, rebuilt at this x, "
                f"still finds other shapes than its build ({moved}). Please report this with the model."
            )
        return _STALE

    def _build(self, x: np.ndarray, mode: str, wrt: str | None, speculative: bool) -> Any:
        from ._graph import build_gradient_model

        if self._input_dtype.kind != "f" and wrt is None:
            raise ModelError(
                f"the model's input {self._input_name!r} is {self._input_dtype}: there is no gradient with respect "
                "to integers. Differentiate at a float tensor computed from it (its embedding): "
                "gradsal.backends.at_tensor(model, inputs) runs every method there (README: 'Models that take "
                "integers'); layer_vjp(x, layer, cotangent) gives the gradient at one such tensor."
            )
        shape = tuple(x.shape)
        try:
            graph = build_gradient_model(
                self._shared.gradient_proto, shape, input_name=self._input_name, output_name=self._output_name,
                mode=mode, wrt=wrt, relu_rule=self._relu_rule, probe_input=x, speculative=speculative,
            )
        except UnsupportedOperatorError as exc:
            if self._shared.settings["fallback"] != "finite_differences" or wrt is not None:
                raise
            warnings.warn(
                f"{exc} Using the finite-difference fallback: gradsal differentiates the whole model numerically "
                "(central differences of the forward pass; approximate, and about 2 forward passes per input "
                "element).", FiniteDifferenceWarning, stacklevel=5)
            return _FALLBACK
        except GradsalError:
            raise
        except Exception as exc:
            raise BackendError(
                f"gradsal internal error while building the {mode.upper()} graph of {self._shared.label} at input "
                f"shape {tuple(shape)}: {type(exc).__name__}: {exc}. Please report this with the model."
            ) from exc
        try:
            session = self._session(graph.model)
        except GradsalError:
            raise
        except Exception as exc:
            raise BackendError(
                f"onnxruntime rejected the {mode.upper()} graph gradsal built for {self._shared.label} at input "
                f"shape {tuple(shape)}: {_message(exc)}. Please report this with the model."
            ) from exc
        seed_vi = next(vi for vi in graph.model.graph.input if vi.name == graph.seed_name)
        seed_shape = tuple(int(d.dim_value) for d in seed_vi.type.tensor_type.shape.dim)
        return _Built(graph, session, seed_shape, io.declared_dtype(seed_vi) or np.dtype(np.float32))

    def _run(self, session: Any, names: list[str], feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
        try:
            return session.run(names, feeds)
        except Exception as exc:
            fed = ", ".join(f"{name} {value.dtype}{list(value.shape)}" for name, value in feeds.items())
            raise BackendError(
                f"onnxruntime failed running the {what} of {self._shared.label} (fed {fed}): {_message(exc)}"
            ) from exc

    def _numeric(self, x: np.ndarray | None = None) -> Any:
        from ..numpy import FunctionBackend

        batch = self._input_shape[0] if self._input_shape else None
        if not isinstance(batch, int) and self._folded_constants and x is not None and x.ndim:
            batch = x.shape[0]  # a constant input (a recurrent state) may be sized for x's batch only
        if self._output_batch_axis is None:
            batch = 1  # one sample per run
        return FunctionBackend(self._forward_in_batches_of(batch) if isinstance(batch, int) else self.forward)

    def _forward_in_batches_of(self, batch: int) -> Any:
        """``forward`` of any number of rows for a model declared with a fixed batch size: the rows go in
        chunks of ``batch``, the last chunk padded by repeating its last row (the padding's outputs are
        dropped). The finite-difference fallback stacks perturbed copies of ``x`` along axis 0."""

        def forward(rows: np.ndarray) -> np.ndarray:
            if len(rows) == batch:
                return self.forward(rows)
            outputs = []
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                real = len(chunk)
                if real < batch:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
                output = self.forward(chunk)
                if output.ndim == 0 or output.shape[0] != batch:
                    raise BackendError(
                        f"the finite-difference fallback perturbs the {batch} samples of {self._shared.label} "
                        f"along axis 0, but its output {self._output_name!r} has shape {output.shape}, not one row "
                        "per sample. Explain a per-sample tensor (output_name=...), or export the model with a "
                        "symbolic batch axis."
                    )
                outputs.append(output[:real])
            return np.concatenate(outputs)

        return forward


# ------------------------------------------------------------------------------------------- helpers
def _default_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _providers(ort: Any, providers: Sequence[Any] | str | None) -> list[Any]:
    """Provider names resolved (``"cuda"`` -> ``CUDAExecutionProvider``), CPU last as the fallback."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str) or (isinstance(providers, tuple) and len(providers) == 2
                                       and isinstance(providers[1], Mapping)):
        providers = [providers]  # one name, or one (name, options) pair
    resolved: list[Any] = []
    for entry in providers:
        if isinstance(entry, str):
            name, options = entry, None
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Mapping):
            name, options = entry
        else:
            name, options = None, None
        if not isinstance(name, str):
            raise InputTypeError(f"providers must be names or (name, options) pairs, got {entry!r}.")
        name = _PROVIDER_ALIASES.get(name.lower(), name)
        resolved.append(name if options is None else (name, dict(options)))
    available = ort.get_available_providers()
    missing = [p if isinstance(p, str) else p[0] for p in resolved]
    missing = [p for p in missing if p not in available]
    if missing:
        hint = " Install onnxruntime-gpu (pip install onnxruntime-gpu) for CUDA." if any(
            "CUDA" in p or "Tensorrt" in p for p in missing) else ""
        raise MissingDependencyError(
            f"onnxruntime {ort.__version__} has no execution provider {', '.join(missing)} (available: "
            f"{', '.join(available)}).{hint} Or pass providers=['CPUExecutionProvider'] (the default)."
        )
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in resolved]:
        resolved.append("CPUExecutionProvider")
    return resolved


def _choose_input(graph: Any, input_name: str | None, label: str, constant_inputs: Mapping[str, Any] | None) -> Any:
    inputs = io.data_inputs(graph)
    listed = ", ".join(io.describe_input(vi) for vi in inputs)
    if not inputs:
        raise ModelError(f"{label} has no inputs (every graph input is an initializer); nothing to explain.")
    constants = set(constant_inputs or {})
    if input_name is None:
        free = [vi for vi in inputs if vi.name not in constants]
        if len(free) != 1:
            raise ModelError(
                f"{label} has {len(inputs)} inputs: {listed}. Pass input_name= to say which one to differentiate "
                "(and constant_inputs={name: array} to fix the others)."
            )
        return free[0]
    chosen = next((vi for vi in inputs if vi.name == input_name), None)
    if chosen is None:
        raise ModelError(
            f"{label} has no input named {input_name!r}; its inputs are {listed}. "
            + io.close_matches(input_name, [vi.name for vi in inputs], "inputs")
        )
    others = [vi for vi in inputs if vi.name != input_name and vi.name not in constants]
    if others:
        raise ModelError(
            f"{label} has other inputs besides {input_name!r}: {', '.join(io.describe_input(vi) for vi in others)}. "
            "gradsal differentiates one input: fix the others with constant_inputs={name: array}."
        )
    return chosen


def _fold_constant_inputs(proto: Any, constant_inputs: Mapping[str, Any], input_name: str, label: str) -> None:
    from onnx import numpy_helper

    inputs = {vi.name: vi for vi in io.data_inputs(proto.graph)}
    for name, value in constant_inputs.items():
        if name == input_name or name not in inputs:
            raise ModelError(
                f"constant_inputs names {name!r}, which is not another input of {label}; its inputs are "
                f"{', '.join(io.describe_input(vi) for vi in inputs.values())}."
            )
        array = checked_constant(value, inputs[name], label)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        kept = [vi for vi in proto.graph.input if vi.name != name]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)


def _choose_output(graph: Any, output_name: str | None, explain_logits: bool, label: str) -> str:
    if output_name is not None:
        names = io.tensor_names(graph)
        if output_name not in names:
            raise ModelError(
                f"{label} has no tensor named {output_name!r} to explain. "
                + io.close_matches(output_name, [o.name for o in graph.output] + names, "tensors")
            )
        return output_name
    if not graph.output:
        raise ModelError(f"{label} has no graph outputs; pass output_name= to explain an intermediate tensor.")
    first = _first_float_output(graph, label)
    if not explain_logits:
        return first
    made_by = io.producers(graph)
    node = made_by.get(first)
    while node is not None and node.op_type == "Identity":
        node = made_by.get(node.input[0])
    if node is None:
        return first
    if node.op_type in ("Softmax", "LogSoftmax") and edit.is_standard(node):
        logits, head = node.input[0], node.op_type
    else:
        logits, head = softmax_logits(node, graph, made_by), "softmax (Exp/ReduceSum/Div)"
        if logits is None:
            return first
    warnings.warn(
        f"The model's output {first!r} is the {head} of {logits!r}: gradsal explains the logits "
        f"{logits!r} (gradients of normalised probabilities mix in every other class). Pass "
        f"output_name={first!r} or explain_logits=False to explain the probabilities.",
        LogitsWarning, stacklevel=4)
    return logits


def _first_float_output(graph: Any, label: str) -> str:
    """The first graph output that is not declared integer or boolean, said in one warning when it is not the
    first output (an integer output, such as a copy of the token ids, has no gradient to explain)."""
    declared = [(vi.name, io.declared_dtype(vi)) for vi in graph.output]
    chosen = next((name for name, dtype in declared if dtype is None or dtype.kind in "fc"), None)
    if chosen is None:
        listed = ", ".join(f"{name!r} {dtype}" for name, dtype in declared)
        raise ModelError(f"{label} has only integer or boolean outputs ({listed}), which have no gradient: pass "
                         "output_name= to explain a float tensor inside the model.")
    if chosen != declared[0][0]:
        skipped = ", ".join(f"{name!r} ({dtype})" for name, dtype in declared[:[n for n, _ in declared].index(chosen)])
        warnings.warn(f"{label}: explaining its first float output {chosen!r}, not {skipped} (integer outputs have "
                      "no gradient); pass output_name= to choose another.", OutputChoiceWarning, stacklevel=5)
    return chosen


def _straight_through(proto: Any, label: str) -> Any:
    """The float network a quantised model approximates (the model itself when it has no such pattern)."""
    rewritten, count = float_equivalent(proto)
    if not count:
        return proto
    warnings.warn(f"{label}: gradients are those of the float network this quantised model approximates "
                  f"(straight-through: {count} quantised pattern(s) differentiated as float operations).",
                  StraightThroughWarning, stacklevel=user_stacklevel())
    return rewritten


def _message(exc: BaseException) -> str:
    """The framework's message, kept whole up to a sane length (onnxruntime's are mostly one line)."""
    text = " ".join(str(exc).split())
    return (text[:1500] + " ...") if len(text) > 1500 else text or type(exc).__name__


def is_onnx_path(model: Any) -> bool:
    """True for a str or os.PathLike whose name ends in ``.onnx`` (any case); never touches the disk."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    return isinstance(model, str) and model.lower().endswith(".onnx")
