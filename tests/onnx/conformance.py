"""Checking OnnxBackend on ONNX's own node conformance tests (one folder per test, ``model.onnx`` + data).

For every test whose operators gradsal supports and every (float input, float output) pair, the backend
differentiates the output with respect to that input, the other inputs fixed with ``constant_inputs``:

- forward: equal to a plain onnxruntime session on the original model, with every input fed;
- VJP: ``J^T v`` for a random ``v`` against central finite differences of ``<f(x), v>``, element by element
  (a random sample of at most ``MAX_ELEMENTS`` elements), computed by plain onnxruntime sessions on a
  float64 copy of the model where onnxruntime runs one, else a float32 copy (or the model) with larger steps.
  An element where the one-sided differences disagree is a kink (a tie, a clip boundary) and is not judged;
  a pair none of whose elements could be judged is "unjudged" (counted apart, not as a pass);
- JVP: ``<J u, v>`` equal to ``<u, J^T v>`` (the dot-product test), shapes those of the output and input;
- the caller's arrays (``x``, the constants, the seeds) unchanged.

A refusal is right only as :class:`ModelError` "does not depend" where the finite differences are zero, or
as a typed error for a documented limit (``DOCUMENTED_REFUSALS``, counted as "refused").
The reference never uses gradsal's gradient code: it is onnxruntime's forward pass only.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from gradsal.backends.onnx import OnnxBackend, supported_operators
from gradsal.backends.onnx.rules.registry import SHAPE_ONLY_OPS
from gradsal.core.errors import GradsalError, InputError, ModelError, UnsupportedOperatorError

MAX_ELEMENTS = 128
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
# Refusals the README documents, as (pattern of the operator named in the message, pattern of the message).
DOCUMENTED_REFUSALS = (
    ("Resize", "scales or roi computed from"),  # the geometry's own gradient
    ("Upsample", "scales or roi computed from"),
    ("Resize", "has no gradient rule yet"),  # cubic, antialias
    ("BatchNormalization", "training mode|its parameter"),
    ("Dropout", "training mode"),
    ("Pad", "constant_value depends on the input"),
    ("Einsum", "repeats a label"),
    ("", "x is empty"),  # a zero-sized x is refused (InputError)
    ("LSTM|GRU|RNN", "activations .* are not the default|clips its cell input|input_forget=1"),
    ("Scan", r"\(opset 8\)"),  # Scan-8, with its batch axis and sequence_lens, is not unrolled
)
# Operators the graph builder rewrites into others before differentiating (If: its taken branch; Loop of a
# known trip count, Scan, LSTM, GRU, RNN: unrolled), so they have no rule of their own in supported_operators().
BUILDER_OPS = frozenset({"If", "Loop", "Scan", "LSTM", "GRU", "RNN"})
# What finite_difference_check says when no element could be judged (all kinks, or onnxruntime refused).
UNJUDGED = "no element judged"
# Relative tolerance of a gradient computed in each float type, against float64 finite differences.
TOLERANCE = {np.dtype(np.float16): 2e-2, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}

ort.set_default_logger_severity(3)


@dataclass(frozen=True)
class PairResult:
    """The verdict on one (input, output) pair of one node test."""

    test: str
    op: str
    input: str
    output: str
    status: str  # "pass", "unjudged" (right shapes, no element finite differences could judge), "refused"
    # (a documented refusal), "skipped" (onnxruntime cannot run the test), or "fail: <what>"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "refused", "skipped", "unjudged")


# ------------------------------------------------------------------------------------------- discovery
def graph_ops(graph: onnx.GraphProto) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                ops |= graph_ops(sub)
    return ops


@functools.cache
def operator_of(folder: Path) -> str:
    """The operator a node test is about: its single node's, or its un-expanded sibling's."""
    name = folder.name
    base = re.sub(r"_expanded(_ver\d+)?$", "", name)
    for candidate in (folder.parent / base, folder):
        model_path = candidate / "model.onnx"
        if model_path.is_file():
            graph = onnx.load(str(model_path), load_external_data=False).graph
            if len(graph.node) == 1:
                return graph.node[0].op_type
    return "(" + name.removeprefix("test_") + ")"


@functools.cache
def supported_tests(root: Path) -> list[Path]:
    """The node tests all of whose operators have a rule (or only read shapes), with tensor inputs only."""
    allowed = set(supported_operators()) | SHAPE_ONLY_OPS | BUILDER_OPS
    chosen = []
    for folder in sorted(root.iterdir()):
        model_path = folder / "model.onnx"
        if not model_path.is_file() or not (folder / "test_data_set_0").is_dir():
            continue
        model = onnx.load(str(model_path), load_external_data=False)
        if not graph_ops(model.graph) <= allowed:
            continue
        if not all(vi.type.HasField("tensor_type") for vi in [*model.graph.input, *model.graph.output]):
            continue
        if not all(any(vi.type.tensor_type.elem_type in FLOAT_TYPES for vi in values)
                   for values in (model.graph.input, model.graph.output)):
            continue  # nothing to differentiate
        chosen.append(folder)
    return chosen


def representative(tests: list[Path], per_op: int = 1) -> list[Path]:
    """The first ``per_op`` tests of each operator (for the default run)."""
    seen: Counter[str] = Counter()
    slice_ = []
    for folder in tests:
        op = operator_of(folder)
        if seen[op] < per_op:
            seen[op] += 1
            slice_.append(folder)
    return slice_


def load_inputs(folder: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    data = folder / "test_data_set_0"
    arrays = {}
    init = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in init]
    for index, name in enumerate(names):
        path = data / f"input_{index}.pb"
        if not path.is_file():
            break
        tensor = TensorProto()
        tensor.ParseFromString(path.read_bytes())
        arrays[name] = numpy_helper.to_array(tensor)
    return arrays


# ------------------------------------------------------------------------------------------- reference
def widened(model: onnx.ModelProto, to: int = TensorProto.DOUBLE) -> onnx.ModelProto:
    """A copy computing in a wider float type (``to``): float types narrower than it in inputs, outputs,
    initializers, constants and Casts become it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    narrower = _NARROWER[to]
    _widen_graph(copy.graph, to, narrower)
    return copy


_NARROWER = {TensorProto.DOUBLE: (TensorProto.FLOAT, TensorProto.FLOAT16), TensorProto.FLOAT: (TensorProto.FLOAT16,)}
_NUMPY = {TensorProto.DOUBLE: np.float64, TensorProto.FLOAT: np.float32}


def _widen_tensor(tensor: TensorProto, to: int, narrower: tuple[int, ...]) -> None:
    if tensor.data_type in narrower:
        array = numpy_helper.to_array(tensor).astype(_NUMPY[to])
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _widen_graph(graph: onnx.GraphProto, to: int, narrower: tuple[int, ...]) -> None:
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type in narrower:
            vi.type.tensor_type.elem_type = to
    for tensor in graph.initializer:
        _widen_tensor(tensor, to, narrower)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attribute.t, to, narrower)
            elif attribute.name in ("to", "dtype") and attribute.i in narrower:
                attribute.i = to
            elif attribute.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attribute.g, to, narrower)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Reference:
    """Plain onnxruntime forward passes of one model (float64 where possible) for finite differences."""

    def __init__(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> None:
        self.float64 = False
        self.session, self.feeds = _session(model), dict(inputs)
        for to in (TensorProto.DOUBLE, TensorProto.FLOAT):
            try:
                feeds = {k: _widen(v, _NUMPY[to]) for k, v in inputs.items()}
                session = _session(widened(model, to))
                session.run(None, feeds)
            except Exception:  # onnxruntime has no kernel for that type
                continue
            self.session, self.feeds, self.float64 = session, feeds, to == TensorProto.DOUBLE
            break

    def output(self, name: str, **changed: np.ndarray) -> np.ndarray:
        feeds = dict(self.feeds)
        for key, value in changed.items():
            feeds[key] = value.astype(self.feeds[key].dtype)
        return np.asarray(self.session.run([name], feeds)[0], dtype=np.float64)

    def dot(self, name: str, v: np.ndarray, **changed: np.ndarray) -> float:
        """<output, v> over the entries where v is not 0 (where the output is NaN or inf, v is 0)."""
        output = self.output(name, **changed)
        return float(np.sum(np.where(v != 0, output, 0.0) * v))


def _widen(array: np.ndarray, to: type) -> np.ndarray:
    kind = array.dtype.kind == "f"
    return array.astype(to) if kind and array.dtype.itemsize < np.dtype(to).itemsize else array


def finite_difference_check(ref: Reference, x_name: str, out_name: str, v: np.ndarray, grad: np.ndarray,
                            rng: np.random.Generator, computed_in: np.dtype) -> str | None:
    """None if ``grad`` (= J^T v) matches central differences of <f, v> on a sample of elements; else why.

    ``computed_in``: the float type the backend computes in (its tolerance). Elements where x is not
    finite, or where onnxruntime refuses the perturbed input (a scale below 1), are not judged.
    """
    x = ref.feeds[x_name].astype(np.float64)
    flat = x.reshape(-1)
    count = flat.size
    picks = rng.choice(count, size=min(count, MAX_ELEMENTS), replace=False) if count else []
    rel = 1e-6 if ref.float64 else 1e-3
    tol = max(1e-5 if ref.float64 else 1e-2, TOLERANCE.get(np.dtype(computed_in), 1e-4))
    base = ref.dot(out_name, v)
    numeric, analytic = [], []
    for k in picks:
        if not np.isfinite(flat[k]):
            continue
        h = rel * max(1.0, abs(flat[k]))
        values = []
        for step in (h, -h):
            moved = flat.copy()
            moved[k] += step
            try:
                values.append(ref.dot(out_name, v, **{x_name: moved.reshape(x.shape)}))
            except Exception:  # onnxruntime's own validation (Resize wants scales >= 1 ...)
                values.append(np.nan)
        right, left = (values[0] - base) / h, (base - values[1]) / h
        central = (values[0] - values[1]) / (2 * h)
        if not (np.isfinite(right) and np.isfinite(left)):
            continue
        if abs(right - left) > (0.01 if ref.float64 else 0.05) * max(abs(right), abs(left), 1e-3):
            continue  # a kink along this axis: the derivative is one-sided, not judged
        numeric.append(central)
        analytic.append(float(grad.reshape(-1)[k]))
    if not numeric:
        return UNJUDGED
    numeric_a, analytic_a = np.array(numeric), np.array(analytic)
    scale = max(1.0, float(np.abs(numeric_a).max()))
    bad = np.abs(numeric_a - analytic_a) > tol * scale + tol * np.abs(numeric_a)
    if not np.all(np.isfinite(analytic_a)):
        return f"non-finite gradient entries ({int((~np.isfinite(analytic_a)).sum())})"
    if bad.any():
        worst = int(np.argmax(np.abs(numeric_a - analytic_a)))
        return (f"{int(bad.sum())} of {len(numeric)} elements differ from finite differences "
                f"(e.g. {analytic_a[worst]:.6g} vs {numeric_a[worst]:.6g})")
    return None


# ------------------------------------------------------------------------------------------- checking
def check_test(folder: Path, seed: int = 0) -> list[PairResult]:
    """Every (float input, float output) pair of one node test, judged."""
    model = onnx.load(str(folder / "model.onnx"))
    inputs = load_inputs(folder, model)
    op = operator_of(folder)
    float_inputs = [n for n, a in inputs.items() if a.dtype.kind == "f"]
    out_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    try:
        ref_plain = _session(model)
        expected = dict(zip([o.name for o in ref_plain.get_outputs()], ref_plain.run(None, inputs), strict=True))
        again = ref_plain.run(None, inputs)
    except Exception as exc:  # onnxruntime lacks the kernel: nothing to compare with
        return [PairResult(folder.name, op, "*", "*", "skipped", f"onnxruntime cannot run it: {exc}"[:300])]
    results = []
    if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(expected.values(), again, strict=True)):
        return [PairResult(folder.name, op, "*", "*", "pass", "random outputs: not differentiated")]
    ref = Reference(model, inputs)
    for out_name, elem in out_types.items():
        if elem not in FLOAT_TYPES:
            continue
        for x_name in float_inputs:
            rng = np.random.default_rng(seed)
            try:
                status, detail = _check_pair(model, inputs, x_name, out_name, expected[out_name], ref, rng)
            except Exception as exc:  # anything not typed is a crash
                status, detail = "fail: crash", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            results.append(PairResult(folder.name, op, x_name, out_name, status, detail))
    return results


def _check_pair(model: onnx.ModelProto, inputs: dict[str, np.ndarray], x_name: str, out_name: str,
                expected: np.ndarray, ref: Reference, rng: np.random.Generator) -> tuple[str, str]:
    originals = {k: v.copy() for k, v in inputs.items()}
    caller = {k: v.copy() for k, v in inputs.items()}
    constants = {k: v for k, v in caller.items() if k != x_name}
    x = caller[x_name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend = OnnxBackend(model, input_name=x_name, output_name=out_name, explain_logits=False,
                                  constant_inputs=constants)
            output = backend.forward(x)
    except GradsalError as exc:
        return _refusal(exc, "forward")
    if output.shape != expected.shape:
        return "fail: forward shape", f"{output.shape} vs {expected.shape}"
    if not np.allclose(output, expected.astype(output.dtype), rtol=1e-4, atol=1e-5, equal_nan=True):
        return "fail: forward", f"max diff {np.nanmax(np.abs(output - expected)):.3g}"
    v = rng.standard_normal(expected.shape) * np.isfinite(expected)  # no weight on NaN/inf outputs
    u = rng.standard_normal(x.shape) * np.isfinite(x)
    v_caller, u_caller = v.copy(), u.copy()
    try:
        _, grad = backend.vjp(x, v)
    except ModelError as exc:
        if "does not depend" not in str(exc):
            return "fail: refused VJP", f"ModelError: {exc}"
        zero = np.zeros(x.shape)
        problem = finite_difference_check(ref, x_name, out_name, v, zero, rng, x.dtype)
        if problem == UNJUDGED:
            return "unjudged", "does not depend (finite differences could not judge it)"
        if problem is not None:
            return "fail: false 'does not depend'", problem
        return "pass", "does not depend (finite differences agree)"
    except GradsalError as exc:
        return _refusal(exc, "VJP")
    if grad.shape != x.shape:
        return "fail: VJP shape", f"{grad.shape} vs {x.shape}"
    problem = finite_difference_check(ref, x_name, out_name, v, grad, rng, min(x.dtype, expected.dtype,
                                                                                key=_precision))
    if problem is not None and problem != UNJUDGED:
        return "fail: VJP", problem
    try:
        _, product = backend.jvp(x, u)
    except GradsalError as exc:
        return _refusal(exc, "JVP")
    if product.shape != expected.shape:
        return "fail: JVP shape", f"{product.shape} vs {expected.shape}"
    lhs = float(np.sum(np.where(v != 0, product, 0.0) * v))
    rhs = float(np.sum(np.where(u != 0, grad, 0.0) * u))
    tol = TOLERANCE.get(min(x.dtype, expected.dtype, key=_precision), 1e-4) * 10
    if not abs(lhs - rhs) <= tol * max(1.0, abs(lhs), abs(rhs)):
        return "fail: JVP", f"<Ju, v> = {lhs:.6g} but <u, J^T v> = {rhs:.6g}"
    changed = [k for k in caller if not np.array_equal(caller[k], originals[k], equal_nan=True)]
    if not np.array_equal(v, v_caller) or not np.array_equal(u, u_caller):
        changed.append("seed")
    if changed:
        return "fail: changed the caller's arrays", ", ".join(changed)
    return ("unjudged", "VJP not judged by finite differences") if problem == UNJUDGED else ("pass", "")


def _precision(dtype: np.dtype) -> int:
    return np.dtype(dtype).itemsize if np.dtype(dtype).kind == "f" else 8


def _refusal(exc: GradsalError, stage: str) -> tuple[str, str]:
    """A typed refusal: "refused" when documented (see DOCUMENTED_REFUSALS), else a failure."""
    text = f"{type(exc).__name__}: {exc}"
    typed = isinstance(exc, (UnsupportedOperatorError, InputError))
    documented = typed and any(re.search(op, text) and re.search(pattern, text) for op, pattern in DOCUMENTED_REFUSALS)
    return ("refused", text) if documented else (f"fail: refused {stage}", text)


def report(results: list[PairResult]) -> str:
    """A table: per operator, the node tests checked and fully right, and the pairs passed, refused, failed."""
    tests: dict[str, dict[str, bool]] = {}
    pairs: dict[str, Counter[str]] = {}
    for result in results:
        ok = tests.setdefault(result.op, {})
        ok[result.test] = ok.get(result.test, True) and result.ok
        kind = result.status if result.ok else "fail"
        pairs.setdefault(result.op, Counter())[kind] += 1
    lines = [f"{'operator':22} {'tests':>5} {'right':>5} {'pairs':>5} {'pass':>5} {'unjudged':>8} {'refused':>7} "
             f"{'fail':>4}"]
    total: Counter[str] = Counter()
    for op in sorted(tests):
        row = Counter(tests=len(tests[op]), right=sum(tests[op].values()), **pairs[op])
        row["pairs"] = row["pass"] + row["unjudged"] + row["refused"] + row["fail"]
        row["right"] -= row["skipped"]
        row["tests"] -= row["skipped"]
        total.update(row)
        lines.append(_row(op, row))
    lines.append(_row("total", total))
    return "\n".join(lines)


def _row(name: str, c: Counter[str]) -> str:
    return (f"{name:22} {c['tests']:5} {c['right']:5} {c['pairs']:5} {c['pass']:5} {c['unjudged']:8} "
            f"{c['refused']:7} {c['fail']:4}")
