"""ONNX models that take integers: the graph cut at a float tensor, which becomes the input.

The tensor is named, or found: the float output of a ``Gather`` that reads an integer input's values
from a float initializer (an embedding table), or else the one float tensor computed from an integer
input's values (a one-hot ``Cast``). Values are followed through every node except ``Shape`` and
``Size``, whose outputs depend on the input's shape only. The cut copy renames the tensor's producer
output (that node is then dead) and declares the tensor a graph input; every original input is then
folded in as a constant (:class:`~.backend.OnnxBackend`'s ``constant_inputs``), one copy per row count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.errors import BackendError, InputError, InputTypeError, ModelError
from .._at_tensor import TensorBackend, bound_inputs
from . import _model_io as io
from ._graph_edit import downstream
from .backend import OnnxBackend, _default_options, _providers

DETACHED_SUFFIX = "__gradsal_detached"  # the cut copy's name for the original producer's output


def at_tensor(model: Any, inputs: Any, tensor: str | None = None, *, output_name: str | None = None,
              id_input: str | None = None, providers: Any = None, session_options: Any = None,
              fallback: str | None = None, explain_logits: bool = True) -> TensorBackend:
    """An ONNX model as a function of the float tensor ``tensor`` (see the module docstring).

    ``inputs``: ``{input name: array}`` with every input of the model (one array for a one-input model).
    ``tensor``: the tensor to differentiate at (default: found, see the module docstring). ``id_input``:
    the integer input it is computed from, when several could be. The other arguments are
    :class:`OnnxBackend`'s (``output_name`` default: the first float graph output).
    """
    io.import_onnx()
    loaded = io.load_model(model)
    proto, label = loaded.proto, loaded.label
    arrays = _named_inputs(proto.graph, bound_inputs(inputs), label)
    types = _tensor_types(proto)
    if tensor is None:
        tensor, id_name = _find_tensor(proto.graph, types, arrays, id_input, label)
    else:
        id_name = _check_tensor(proto.graph, types, arrays, tensor, id_input, label)
    options = {"providers": providers, "session_options": session_options, "fallback": fallback}
    embed = _Embedder(proto, tensor, label, options)
    value = embed(arrays)
    cut = _cut_at(proto, tensor, types.get(tensor), value)

    def make_backend(fixed: dict[Any, np.ndarray]) -> OnnxBackend:
        return OnnxBackend(cut, input_name=tensor, output_name=output_name, explain_logits=explain_logits,
                           constant_inputs=fixed, **options)

    return TensorBackend(name=tensor, inputs=arrays, id_input=id_name, value=value, make_backend=make_backend,
                         embed=embed, label=label)


# ------------------------------------------------------------------------------------------------- inputs
def _named_inputs(graph: Any, arrays: dict[Any, np.ndarray], label: str) -> dict[str, np.ndarray]:
    declared = {vi.name: vi for vi in io.data_inputs(graph)}
    listed = ", ".join(io.describe_input(vi) for vi in declared.values())
    if list(arrays) == [0] and 0 not in declared:
        if len(declared) != 1:
            raise InputError(f"{label} has {len(declared)} inputs ({listed}): pass them all as {{name: array}}.")
        arrays = {next(iter(declared)): arrays[0]}
    unknown = [key for key in arrays if key not in declared]
    missing = [name for name in declared if name not in arrays]
    if unknown or missing:
        raise InputError(f"{label}'s inputs are {listed}; " + (f"it has no input {unknown[0]!r}. " if unknown else "")
                         + (f"pass {', '.join(map(repr, missing))} too (they are held fixed)." if missing else ""))
    named = {}
    for name, array in arrays.items():
        dtype = io.declared_dtype(declared[name])
        if dtype is not None and dtype.kind in "iub" and array.dtype.kind not in "iub":
            raise InputTypeError(f"inputs[{name!r}] has dtype {array.dtype}, but {io.describe_input(declared[name])} "
                                 "takes integers: pass the ids (or bytes, codes) themselves.")
        named[name] = array.astype(dtype) if dtype is not None else array
    return named


def _tensor_types(proto: Any) -> dict[str, int]:
    """ONNX element types of the graph's tensors, from the declarations and onnx's shape inference."""
    import onnx

    graph = proto.graph
    types = {init.name: init.data_type for init in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # inference is a help here, not a requirement: declared types remain
        inferred = graph
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def _is_float(types: dict[str, int], name: str) -> bool:
    from onnx import TensorProto

    return types.get(name) in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _frontier(graph: Any, types: dict[str, int], source: str) -> tuple[set[str], list[tuple[Any, str]]]:
    """Non-float tensors computed from ``source``'s values, and the first float ones (node, tensor)."""
    derived, frontier = {source}, []
    for node in graph.node:
        if node.op_type in ("Shape", "Size") or not any(name in derived for name in node.input):
            continue
        for out in node.output:
            if not out:
                continue
            if _is_float(types, out):
                frontier.append((node, out))
            else:
                derived.add(out)
    return derived, frontier


def _integer_inputs(graph: Any, arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, array in arrays.items() if array.dtype.kind in "iub"]


def _find_tensor(graph: Any, types: dict[str, int], arrays: Mapping[str, np.ndarray], id_input: str | None,
                 label: str) -> tuple[str, str]:
    sources = _sources(graph, arrays, id_input, label)
    floats = {init.name for init in graph.initializer if _is_float(types, init.name)}
    lookups, others = [], []
    for source in sources:
        derived, frontier = _frontier(graph, types, source)
        for node, out in frontier:
            is_lookup = node.op_type == "Gather" and node.input[0] in floats and node.input[1] in derived
            (lookups if is_lookup else others).append((out, source))
    found = lookups or others
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelError(f"{label}: no float tensor is computed from the values of {', '.join(map(repr, sources))}, "
                         "so there is nothing to differentiate at; pass tensor= to name one.")
    listed = ", ".join(f"{out!r} (from {source!r})" for out, source in found[:8])
    raise ModelError(f"{label} computes several float tensors from its integer inputs: {listed}. Pass tensor= to say "
                     "which to differentiate at (and id_input= for the input it is computed from).")


def _sources(graph: Any, arrays: Mapping[str, np.ndarray], id_input: str | None, label: str) -> list[str]:
    integers = _integer_inputs(graph, arrays)
    if id_input is None:
        if not integers:
            raise ModelError(f"{label} has no integer inputs; differentiate it directly (OnnxBackend).")
        return integers
    if id_input not in integers:
        raise InputError(f"id_input={id_input!r} is not an integer input of {label}; its integer inputs are "
                         f"{', '.join(map(repr, integers)) or 'none'}.")
    return [id_input]


def _check_tensor(graph: Any, types: dict[str, int], arrays: Mapping[str, np.ndarray], tensor: Any,
                  id_input: str | None, label: str) -> str:
    if not isinstance(tensor, str):
        raise InputTypeError(f"tensor must be a tensor name (str), got {type(tensor).__name__}.")
    produced = set(io.producers(graph))
    if tensor not in produced:
        raise ModelError(f"{label} has no node output named {tensor!r} to differentiate at. "
                         + io.close_matches(tensor, sorted(produced), "tensors"))
    if tensor in types and not _is_float(types, tensor):
        raise ModelError(f"{label}: tensor {tensor!r} is not a float tensor; gradients need one (an embedding).")
    sources = _sources(graph, arrays, id_input, label)
    feeding = []
    for source in sources:
        derived, frontier = _frontier(graph, types, source)
        firsts = {out for _, out in frontier}
        reach, _ = downstream(graph, firsts)
        if tensor in derived or tensor in reach:
            feeding.append(source)
    if len(feeding) == 1:
        return feeding[0]
    if not feeding:
        raise ModelError(f"{label}: tensor {tensor!r} is not computed from the values of any integer input "
                         f"({', '.join(map(repr, sources))}).")
    raise ModelError(f"{label}: tensor {tensor!r} is computed from several integer inputs "
                     f"({', '.join(map(repr, feeding))}); pass id_input= to say whose values baselines replace.")


# -------------------------------------------------------------------------------------------- the two graphs
class _Embedder:
    """The tensor's value for given inputs: the model run up to the tensor, in one cached session."""

    def __init__(self, proto: Any, tensor: str, label: str, options: dict[str, Any]) -> None:
        self._proto, self._tensor, self._label, self._options = proto, tensor, label, options
        self._session: Any = None

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._session is None:
            self._session = self._open()
        try:
            (value,) = self._session.run([self._tensor], dict(arrays))
        except Exception as exc:
            fed = ", ".join(f"{name} {a.dtype}{list(a.shape)}" for name, a in arrays.items())
            raise BackendError(f"onnxruntime failed computing {self._tensor!r} of {self._label} (fed {fed}): "
                               f"{' '.join(str(exc).split())[:1500]}") from exc
        return io.as_result(value)

    def _open(self) -> Any:
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        del proto.graph.output[:]
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(self._tensor))
        ort = io.import_onnxruntime()
        providers = _providers(ort, self._options["providers"])
        options = self._options["session_options"] or _default_options(ort)
        try:
            return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {self._label}: {' '.join(str(exc).split())[:1500]}") from exc


def _cut_at(proto: Any, tensor: str, elem_type: int | None, value: np.ndarray) -> Any:
    """A copy of ``proto`` in which ``tensor`` is a graph input (batch axis symbolic) instead of computed."""
    import onnx
    from onnx import helper

    cut = onnx.ModelProto()
    cut.CopyFrom(proto)
    graph = cut.graph
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == tensor:
                node.output[i] = tensor + DETACHED_SUFFIX
    kept = [vi for vi in graph.value_info if vi.name != tensor]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    elem = elem_type or helper.np_dtype_to_tensor_dtype(value.dtype)
    graph.input.append(helper.make_tensor_value_info(tensor, elem, ["rows", *value.shape[1:]]))
    return cut
