"""A model that takes integers, presented as a function of a float tensor computed from them.

Token ids, bytes and category codes have no gradient. What does is the first float tensor the model
computes from them, usually the embedding ``E = table[ids]`` of shape ``(N, L, D)``. :func:`at_tensor`
returns a :class:`TensorBackend`: the model as the function ``E -> output`` with every other input
(attention mask, token types, the ids themselves where the model reads them again, e.g. for a padding
mask) held at the values given. It is an ordinary :class:`~gradsal.core.GradientBackend`, so every method
runs on it unchanged; ``.value`` is ``E`` for the given inputs (the point to explain) and
:meth:`TensorBackend.baseline` makes baselines in the same space (the embedding of a pad token, zeros, an
array). :func:`gradsal.core.token_scores` then gives one score per token. This is Captum's
``LayerIntegratedGradients`` at the embedding layer, generalised to every method and backend.

The backend is bound to the inputs' ``N`` samples: it takes batches of ``N`` rows (sample ``i`` with
the other inputs of sample ``i``), rows that are some of the samples' own values (a chunk of them), or,
when ``N == 1``, any number of rows (the path points and noisy copies of integrated gradients and
SmoothGrad). :meth:`TensorBackend.sample` binds one sample of many.
"""

from __future__ import annotations

import collections
import copy
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..core.errors import InputError, InputTypeError, ModelError, UnsupportedModelError

CACHED_BACKENDS = 4  # inner backends kept per row count (a model whose fixed inputs are folded per count)


class TensorBackend:
    """The model as a function of one float tensor (``name``), its other inputs fixed.

    Built by :func:`at_tensor`. ``value``: that tensor for the bound inputs, ``(N, ...)``.
    ``make_backend(inputs)``: an inner backend of the model at that tensor with the integer ``inputs``
    (arrays with one row per backend row) held fixed. ``embed(inputs)``: the tensor's value for other
    inputs. ``id_input``: the key of the input whose values the tensor is computed from (the ids).
    """

    def __init__(self, *, name: str, inputs: dict[Any, np.ndarray], id_input: Any, value: np.ndarray,
                 make_backend: Callable[[dict[Any, np.ndarray]], Any],
                 embed: Callable[[dict[Any, np.ndarray]], np.ndarray], label: str) -> None:
        self._name = name
        self._inputs = inputs
        self._id_input = id_input
        self._value = value
        self._make_backend = make_backend
        self._embed = embed
        self._label = label
        self._relu_rule = "standard"
        self._cache: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def __repr__(self) -> str:
        return (f"TensorBackend({self._label}, at {self._name!r} {self._value.dtype}{list(self._value.shape)}, "
                f"{len(self._value)} sample(s))")

    # ------------------------------------------------------------------------------------------- values
    @property
    def name(self) -> str:
        """The tensor differentiated at: an ONNX tensor name, or ``"<module> output"``/``"<module> input"``."""
        return self._name

    @property
    def value(self) -> np.ndarray:
        """The tensor for the bound inputs ``(N, ...)``: the ``x`` to pass to every method (a copy)."""
        return self._value.copy()

    @property
    def ids(self) -> np.ndarray:
        """The bound integer input the tensor is computed from (a copy)."""
        return self._inputs[self._id_input].copy()

    def embed(self, ids: Any) -> np.ndarray:
        """The tensor for other values of the id input (same shape as :attr:`ids`), the other inputs as bound."""
        array = _integer_array(ids, "ids")
        if array.shape != self._inputs[self._id_input].shape:
            raise InputError(f"ids have shape {array.shape}; pass the shape of the bound ids, "
                             f"{self._inputs[self._id_input].shape}.")
        return self._embed({**self._inputs, self._id_input: array})

    def baseline(self, value: Any = "zeros", *, token_id: int | None = None, keep: Iterable[int] = ()) -> np.ndarray:
        """A baseline in the tensor's space, shaped like :attr:`value` (float64).

        ``token_id``: the embedding of that token (a pad or mask token) at every position, except where
        the bound ids are in ``keep`` (e.g. the ``[CLS]`` and ``[SEP]`` ids), which keep their own.
        Otherwise ``value``: ``"zeros"`` (the default), or an array broadcastable to :attr:`value`.
        """
        if token_id is not None:
            if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
                raise InputTypeError(f"token_id must be an integer id, got {token_id!r}.")
            ids = self._inputs[self._id_input]
            replaced = np.where(np.isin(ids, np.asarray(list(keep), dtype=np.int64)), ids, token_id)
            return self.embed(replaced.astype(ids.dtype)).astype(np.float64)
        if isinstance(value, str):
            if value != "zeros":
                raise InputError(f"baseline {value!r} is not known: pass 'zeros', token_id=ID or an array.")
            return np.zeros(self._value.shape)
        array = np.asarray(value, dtype=np.float64)
        try:
            return np.broadcast_to(array, self._value.shape).copy()
        except ValueError:
            raise InputError(f"baseline has shape {array.shape}, which does not broadcast to the tensor's shape "
                             f"{self._value.shape}.") from None

    def sample(self, index: int) -> TensorBackend:
        """The backend bound to sample ``index`` alone (it then takes any number of rows)."""
        n = len(self._value)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -n <= index < n:
            raise InputError(f"sample index {index!r} is out of range for {n} bound sample(s).")
        part = slice(index % n, index % n + 1)
        twin = copy.copy(self)
        twin._inputs = {key: array[part] for key, array in self._inputs.items()}
        twin._value = self._value[part]
        twin._cache = collections.OrderedDict()
        return twin

    # ----------------------------------------------------------------------------------------- protocol
    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._backend_for(x).forward(x)

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._backend_for(x).vjp(x, cotangent)

    def jvp(self, x: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._backend_for(x).jvp(x, tangent)

    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._backend_for(x).layer_vjp(x, layer, cotangent)

    def with_relu_rule(self, rule: str) -> TensorBackend:
        """A twin whose inner backends follow the ReLU ``rule`` (guided backprop, deconvnet)."""
        twin = copy.copy(self)
        twin._relu_rule = rule
        twin._cache = collections.OrderedDict()
        return twin

    # ----------------------------------------------------------------------------------------- internals
    def _backend_for(self, x: Any) -> Any:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != self._value.ndim or tuple(shape[1:]) != self._value.shape[1:]:
            raise InputError(
                f"x has shape {shape}, but the tensor {self._name!r} has shape {self._value.shape}: pass rows shaped "
                f"like it, (rows, {', '.join(str(d) for d in self._value.shape[1:])}), e.g. .value or a baseline.")
        rows, bound = int(shape[0]), len(self._value)
        if bound == 1:
            key, chosen = rows, np.zeros(rows, dtype=np.intp)
        elif rows == bound:
            key, chosen = rows, np.arange(rows)
        else:
            chosen = self._samples_of(np.asarray(x))
            key = tuple(int(i) for i in chosen)
        if key not in self._cache:
            inner = self._make_backend({k: array[chosen] for k, array in self._inputs.items()})
            if self._relu_rule != "standard":
                inner = inner.with_relu_rule(self._relu_rule)
            self._cache[key] = inner
            while len(self._cache) > CACHED_BACKENDS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _samples_of(self, x: np.ndarray) -> np.ndarray:
        """Which bound sample each row is, for rows that are bound values themselves (a method's probe of
        one sample, a chunk of the batch); any other rows are ambiguous."""
        flat = self._value.reshape(len(self._value), -1)
        bound = len(flat)
        chosen = []
        for row in x.reshape(len(x), -1):
            same = np.nonzero((flat == row).all(axis=1))[0]
            if not len(same):
                raise InputError(
                    f"this backend holds the other inputs of {bound} samples, so it takes {bound} "
                    f"rows (sample i with the inputs of sample i), not {len(x)}. For integrated gradients, SmoothGrad "
                    "and the like, explain one sample at a time: backend.sample(i) takes any number of rows.")
            chosen.append(same[0])
        return np.array(chosen, dtype=np.intp)


def _integer_array(value: Any, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iub":
        raise InputTypeError(f"{what} have dtype {array.dtype}: pass the integer values the model takes "
                             "(token ids, bytes, codes).")
    return array


def bound_inputs(inputs: Any, what: str = "inputs") -> dict[Any, np.ndarray]:
    """The model inputs as ``{key: array}`` with a batch axis: a dict is copied, an array becomes ``{0: it}``,
    a tuple or list ``{0: ..., 1: ...}`` (positional arguments)."""
    if isinstance(inputs, Mapping):
        items = dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        items = dict(enumerate(inputs))
    else:
        items = {0: inputs}
    if not items:
        raise InputError(f"{what} are empty: pass the model's integer input(s), e.g. {{'input_ids': ids}}.")
    arrays: dict[Any, np.ndarray] = {}
    sizes = set()
    for key, value in items.items():
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            value = value.detach().cpu().numpy()
        try:
            array = np.array(value)  # a private copy: the caller's arrays are never changed
        except Exception as exc:
            raise InputTypeError(f"{what}[{key!r}] is not an array: {exc}") from exc
        if array.ndim < 1 or array.shape[0] == 0:
            raise InputError(f"{what}[{key!r}] has shape {array.shape}: pass a batch (N, ...) with N >= 1, e.g. "
                             "ids[None] for one text.")
        sizes.add(array.shape[0])
        arrays[key] = array
    if len(sizes) != 1:
        raise InputError(f"{what} have different batch sizes {sorted(sizes)}: give every input the same N.")
    return arrays


def at_tensor(model: Any, inputs: Any, tensor: Any = None, **options: Any) -> TensorBackend:
    """The model as a function of a float tensor computed from its integer inputs (see the module docstring).

    ``model``: an ONNX model (path, bytes, ``ModelProto``) or a ``torch.nn.Module``. ``inputs``: the
    model's inputs for the samples to explain: ONNX: ``{input name: array}`` (or one array for a one-input
    model); torch: the positional arguments (one array/tensor or a tuple) or keyword arguments (a dict).
    ``tensor``: ONNX: a tensor name (default: the float output of the ``Gather`` that reads an integer
    input from a float table, or else the one float tensor computed from an integer input's values);
    torch: a module or its dotted name (default: the model's one ``nn.Embedding``). Other options go to
    :func:`gradsal.backends.onnx.at_tensor` or :func:`gradsal.backends.torch_embedding.at_module`
    (``output_name=``/``output=``, ``id_input=``, ...).
    """
    from ..core.registry import module_type_matches
    from .onnx.backend import is_onnx_path

    if is_onnx_path(model) or isinstance(model, (bytes, bytearray)) or module_type_matches(model, "onnx",
                                                                                            "ModelProto"):
        from .onnx._embedding import at_tensor as onnx_at_tensor

        return onnx_at_tensor(model, inputs, tensor, **options)
    if module_type_matches(model, "torch.nn", "Module"):
        from ._torch_embedding import at_module

        return at_module(model, inputs, tensor, **options)
    if isinstance(model, str):
        raise ModelError(f"{model!r} is not an .onnx file: at_tensor takes an ONNX model or a torch.nn.Module.")
    raise UnsupportedModelError(f"at_tensor takes an ONNX model (a path, bytes or onnx.ModelProto) or a "
                                f"torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}.")
