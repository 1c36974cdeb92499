"""Loading, checking and describing ONNX models for :class:`~.backend.OnnxBackend`.

Everything here imports onnx / onnxruntime inside functions only: the package is imported by the
entry-point machinery just to ask whether it accepts a model object.
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import InputError, InputTypeError, MissingDependencyError, ModelError
from ._graph_edit import default_opset, subgraphs

INSTALL_HINT = "pip install 'gradsal[onnx]'"
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
Dim = int | str | None


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"The ONNX backend needs the onnx package (not installed): {INSTALL_HINT}"
        ) from exc
    return onnx


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"The ONNX backend runs models with onnxruntime (not installed): {INSTALL_HINT}"
        ) from exc
    return onnxruntime


# ----------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedModel:
    proto: Any  # onnx.ModelProto, private to gradsal (never the user's object)
    label: str  # how messages name the model: its path, "the model bytes" or "the ModelProto"


def load_model(model: Any) -> LoadedModel:
    """A private ``ModelProto`` from a path, bytes or a ``ModelProto``, checked, external data inlined."""
    onnx = import_onnx()
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        _refuse_unloaded_external_data(proto, "the ModelProto")
        loaded = LoadedModel(proto, "the ModelProto")
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _parse(onnx, bytes(model), "the model bytes")
        _refuse_unloaded_external_data(proto, "the model bytes")
        loaded = LoadedModel(proto, "the model bytes")
    elif isinstance(model, (str, os.PathLike)):
        loaded = _load_path(onnx, Path(os.fspath(model)))
    else:
        raise InputTypeError(
            f"OnnxBackend needs a path to an .onnx file, its bytes or an onnx.ModelProto, got "
            f"{type(model).__module__}.{type(model).__qualname__}."
        )
    _check(loaded)
    return loaded


def _parse(onnx: Any, data: bytes, label: str) -> Any:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(
            f"{label} is not a valid ONNX model: the protobuf parser failed ({' '.join(str(exc).split())}). "
            "The file may be truncated "
            "or corrupted; export or download it again."
        ) from exc
    return proto


def _load_path(onnx: Any, path: Path) -> LoadedModel:
    label = str(path)
    if not path.is_file():
        raise ModelError(f"ONNX model file {label!r} does not exist (or is not a file); check the path.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read ONNX model file {label!r}: {exc}") from exc
    proto = _parse(onnx, data, f"{label!r}")
    folder = path.resolve().parent
    external = list(_external_tensors(proto))
    if external:
        for tensor in external:
            _check_location(tensor, folder, label)
        # each one loaded here, every kind included (onnx's own loader skips sparse and function tensors,
        # which onnxruntime would then resolve against the working directory)
        from onnx.external_data_helper import load_external_data_for_tensor

        try:
            for tensor in external:
                load_external_data_for_tensor(tensor, str(folder))
        except Exception as exc:
            raise ModelError(
                f"cannot load the external data of {label!r} from {str(folder)!r}: {exc}. Keep the data files "
                "next to the .onnx file, as they were saved."
            ) from exc
    return LoadedModel(proto, label)


def _check(loaded: LoadedModel) -> None:
    """Refuse what is not a model at all; onnxruntime judges the rest when the backend opens a session.

    (``onnx.checker`` is stricter than onnxruntime: it rejects models that run, e.g. outputs without
    declared types, so it is not the judge here.)
    """
    proto = loaded.proto
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(
            f"{loaded.label} holds no ONNX graph (no nodes): it is empty, truncated or not an ONNX model."
        )
    if not default_opset(proto):
        raise ModelError(f"{loaded.label} imports no default ('ai.onnx') opset; it is not a usable ONNX model.")


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, sparse initializers, attributes (dense and sparse,
    single and lists), subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in [*sparse_tensors, *attribute.sparse_tensors]:
            yield sparse.values
            yield sparse.indices
        for sub in subgraphs(attribute):
            yield from _graph_tensors(sub)


def _external_tensors(proto: Any) -> Iterator[Any]:
    """Every tensor stored as external data: in the graph and in the model's local functions."""
    from onnx import TensorProto

    in_functions = (t for function in proto.functions for node in function.node for t in _node_tensors(node))
    tensors = itertools.chain(_graph_tensors(proto.graph), in_functions)
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL:
            yield tensor


def _check_location(tensor: Any, folder: Path, label: str) -> None:
    """Refuse external data outside the model's folder (absolute paths, '..', links leading out)."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    refuse = (
        f"{label!r} stores tensor {tensor.name!r} in external data at {location!r}, which is outside the "
        f"model's folder {str(folder)!r}. gradsal reads external data only from inside that folder (a model "
        "file must not make it read other files): move the data file next to the model and set a relative "
        "location, e.g. with onnx.save_model(model, path, save_as_external_data=True)."
    )
    if not location:
        raise ModelError(f"{label!r}: tensor {tensor.name!r} uses external data but names no file location.")
    pure = Path(location)
    if pure.is_absolute() or location.startswith(("/", "\\")) or ".." in Path(location.replace("\\", "/")).parts:
        raise ModelError(refuse)
    if (len(location) > 1 and location[1] == ":") or pure.drive:
        raise ModelError(refuse)
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        raise ModelError(refuse)


def _refuse_unloaded_external_data(proto: Any, label: str) -> None:
    external = next(_external_tensors(proto), None)
    if external is not None:
        raise ModelError(
            f"{label} refers to external data (tensor {external.name!r}) that is not loaded, and has no folder to "
            "load it from. Pass the path to the .onnx file instead, so gradsal loads the data from its folder."
        )


# ------------------------------------------------------------------------------------- describing the model
def initializer_names(graph: Any) -> set[str]:
    return {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}


def data_inputs(graph: Any) -> list[Any]:
    """Graph inputs that are not initializers (an old-IR model lists its weights as inputs too)."""
    inits = initializer_names(graph)
    return [vi for vi in graph.input if vi.name not in inits]


def declared_shape(value_info: Any) -> tuple[Dim, ...] | None:
    """The declared shape: ints for fixed sizes, the symbol's name for symbolic ones, None if unnamed."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def declared_dtype(value_info: Any) -> np.dtype | None:
    from onnx import helper

    elem = value_info.type.tensor_type.elem_type
    if not elem:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # bfloat16, float8 ...: no plain NumPy dtype
        return None


def format_shape(shape: tuple[Dim, ...] | None) -> str:
    if shape is None:
        return "(undeclared)"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def describe_input(value_info: Any) -> str:
    dtype = declared_dtype(value_info)
    kind = dtype.name if dtype is not None else "tensor"
    return f"{value_info.name!r} {kind}{format_shape(declared_shape(value_info))}"


def tensor_names(graph: Any) -> list[str]:
    """Every tensor a node produces, in graph order, after the graph inputs."""
    names = [vi.name for vi in data_inputs(graph)]
    seen = set(names)
    for node in graph.node:
        for name in node.output:
            if name and name not in seen:
                seen.add(name)
                names.append(name)
    return names


def close_matches(name: str, candidates: Sequence[str], what: str) -> str:
    """A sentence listing the candidates closest to ``name`` (or a few of them when none is close)."""
    candidates = list(dict.fromkeys(candidates))
    by_lower: dict[str, list[str]] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), []).append(candidate)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=6, cutoff=0.5)
    matches = [candidate for lower in close for candidate in by_lower[lower]]
    if matches:
        return f"Close matches: {', '.join(repr(m) for m in matches)}."
    shown = ", ".join(repr(c) for c in candidates[:8])
    more = f" (and {len(candidates) - 8} more)" if len(candidates) > 8 else ""
    return f"The model's {what}: {shown}{more}." if candidates else ""


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node values (dense ``value`` only), by name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = {vi.name for vi in graph.input}
    values = {name: value for name, value in values.items() if name not in inputs}  # overridable defaults
    for node in graph.node:
        if _is_dense_constant(node):
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def constant_value(graph: Any, name: str) -> np.ndarray | None:
    """What :func:`constant_values` holds for ``name`` (None when nothing), reading that one tensor only."""
    from onnx import numpy_helper

    for node in graph.node:
        if _is_dense_constant(node) and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    if any(vi.name == name for vi in graph.input):
        return None
    found = next((init for init in graph.initializer if init.name == name), None)
    return None if found is None else numpy_helper.to_array(found)


def _is_dense_constant(node: Any) -> bool:
    return node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value"


def producers(graph: Any) -> dict[str, Any]:
    return {name: node for node in graph.node for name in node.output if name}


def ancestors(graph: Any, output: str) -> set[str]:
    """Tensors that ``output`` depends on (itself included)."""
    needed = {output}
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            needed.update(name for name in node.input if name)
    return needed


# ------------------------------------------------------------------------------------------ input checks
def check_input_array(x: Any, name: str, shape: tuple[Dim, ...] | None, dtype: np.dtype) -> np.ndarray:
    """``x`` as an array in the model's input dtype, after checking it against the declared shape."""
    declared = f"the model's input {name!r} is declared {dtype.name}{format_shape(shape)}"
    try:
        array = np.asarray(x)
    except Exception as exc:
        raise InputTypeError(
            f"x must be a NumPy array ({declared}); could not convert a {type(x).__name__}: {exc}"
        ) from exc
    floating = dtype.kind == "f"
    allowed = "f" if floating else "iub"
    if not floating and array.dtype.kind == "f":
        raise InputTypeError(
            f"x has dtype {array.dtype}, but {declared}: the model takes integers (token ids, bytes, category "
            "codes), which have no gradient, and casting them to floats does not make one. Differentiate at their "
            "embedding instead: gradsal.backends.at_tensor(model, inputs) (README: 'Models that take integers'); "
            f"to run the model, pass the integer values themselves (x.astype(np.{dtype.name}))."
        )
    if array.dtype.kind not in allowed and not (floating and array.dtype.kind in "iu"):
        kind = "floating-point" if floating else "integer"
        raise InputTypeError(
            f"x has dtype {array.dtype}, but {declared}: pass {kind} values, e.g. x.astype(np.{dtype.name})."
        )
    if floating and array.dtype.kind in "iu":
        raise InputTypeError(
            f"x has integer dtype {array.dtype}, but {declared}. Scale and convert it first "
            f"(e.g. x.astype(np.{dtype.name}) / 255 for 8-bit images, with the model's own preprocessing)."
        )
    if array.size == 0:
        raise InputError(f"x is empty (shape {array.shape}); {declared}. Pass at least one sample.")
    _check_shape(array.shape, shape, declared)
    # always a fresh array: onnxruntime may write into what it is fed (training-mode BatchNormalization
    # updates its running statistics in place), and a rank-0 x keeps its shape (unlike ascontiguousarray)
    return np.array(array, dtype=dtype, order="C", copy=True)


def _check_shape(actual: tuple[int, ...], shape: tuple[Dim, ...] | None, declared: str) -> None:
    """Rank and fixed sizes must match; a symbolic size is a hint, as for onnxruntime (two axes named
    alike, or '?', may differ: exporters reuse names loosely and onnxruntime runs such inputs)."""
    if shape is None:
        return
    if len(actual) != len(shape):
        raise InputError(
            f"x has shape {actual} (rank {len(actual)}), but {declared} (rank {len(shape)}). "
            "Reshape x to match (a batch axis first)."
        )
    for axis, (size, dim) in enumerate(zip(actual, shape, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise InputError(
                f"x has shape {actual}, but {declared}: axis {axis} must be {dim}, not {size}. "
                "Resize or reshape the input to the size the model was exported with."
            )


def check_seed(seed: Any, shape: tuple[int, ...], dtype: np.dtype, what: str, like: str) -> np.ndarray:
    """A cotangent/tangent as an array of ``shape`` in ``dtype``."""
    try:
        array = np.asarray(seed)
    except Exception as exc:
        raise InputTypeError(f"the {what} must be a NumPy array shaped like {like} {shape}: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise InputTypeError(f"the {what} has dtype {array.dtype}; pass real numbers shaped like {like} {shape}.")
    if array.shape != tuple(shape):
        raise InputError(
            f"the {what} has shape {array.shape}, but it must have the shape of {like}, {tuple(shape)}."
        )
    return np.array(array, dtype=dtype, order="C", copy=True)  # a fresh array, rank 0 kept


def as_result(array: np.ndarray) -> np.ndarray:
    """float64 stays float64, other floats become float32 (float16 results are widened)."""
    if array.dtype == np.float64:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    return array


# ---------------------------------------------------------------------------------------- randomisation
def randomize(proto: Any, names: Sequence[str], seed: int) -> Any:
    """A copy of ``proto`` with the named weights replaced by seeded random values of the same shape and scale.

    A name is an initializer, a node, or a tensor a node produces (its node's float initializers are
    redrawn). New values are normal with the original's standard deviation (its mean magnitude when
    constant), and keep its sign when it is all non-negative (variances, scales).
    """
    onnx = import_onnx()
    from onnx import numpy_helper

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node if node.name}
    made_by = producers(graph)
    chosen: list[str] = []
    for name in names:
        targets = _weights_named(name, inits, nodes, made_by)
        chosen.extend(t for t in targets if t not in chosen)
    rng = np.random.default_rng(seed)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    index = {init.name: i for i, init in enumerate(copy.graph.initializer)}
    for name in chosen:
        original = numpy_helper.to_array(inits[name])
        new = _redraw(original, rng)
        copy.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(new, name))
    return copy


def _weights_named(name: str, inits: dict[str, Any], nodes: dict[str, Any], made_by: dict[str, Any]) -> list[str]:
    if not isinstance(name, str):
        raise InputTypeError(f"layer names must be strings (initializer, node or tensor names), got {name!r}.")
    if name in inits:
        if not _is_float(inits[name]):
            raise ModelError(f"initializer {name!r} is not a floating-point weight; it cannot be randomised.")
        return [name]
    node = nodes.get(name) or made_by.get(name)
    if node is None:
        candidates = sorted({*inits, *nodes})
        raise ModelError(
            f"no initializer, node or tensor named {name!r} to randomise. "
            + close_matches(name, candidates, "initializers and nodes")
        )
    weights = [i for i in node.input if i in inits and _is_float(inits[i])]
    if not weights:
        raise ModelError(
            f"node {node.name or node.op_type!r} ({node.op_type}) has no floating-point weights (initializers) "
            "to randomise; name a node with weights, such as a Conv or Gemm."
        )
    return weights


def _is_float(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def _redraw(original: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = original.astype(np.float64)
    scale = float(values.std()) if values.size > 1 else 0.0
    if scale == 0.0:
        scale = float(np.abs(values).mean()) or 1e-2
    new = rng.normal(0.0, scale, size=original.shape)
    if values.size and values.min() >= 0:
        new = np.abs(new)
    return new.astype(original.dtype)

def node_attribute(node: Any, name: str, default: object = None) -> object:
    """The value of ``node``'s attribute ``name`` (strings decoded), or ``default`` when it is absent."""
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, list):
                return [v.decode() if isinstance(v, bytes) else v for v in value]
            return value
    return default
