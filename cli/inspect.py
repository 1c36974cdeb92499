"""``gradsal inspect MODEL``: what a model takes and gives, how images would be fed, and its Grad-CAM layers.

Grad-CAM needs a layer whose activation is a spatial grid, ``(N, C, H, W)`` with ``H * W > 1``; the
obvious choice, the last convolution, is useless when it follows global pooling (a 1x1 grid, as in
PP-LCNet or MobileNetV3 heads: its map is constant). The candidates are found by running the model once
on a zero input and recording the shapes: for ONNX, the outputs of convolutions and of the
layout-keeping operators that follow them (activations, normalisation, pooling, sums); for an
``nn.Module``, the submodules whose output is such a grid. ``--layer auto`` takes the last candidate.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..core.errors import InputError
from .inputs import LoadedModel
from .preprocess import NORMALISATION_HINT

# ONNX operators whose output keeps the (N, C, H, W) layout of their first input
_LAYOUT_KEEPING = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Mish", "Gelu", "BatchNormalization", "InstanceNormalization", "LRN", "Add", "Sub", "Mul",
    "Div", "Sum", "Max", "Min", "Identity", "Dropout", "MaxPool", "AveragePool", "LpPool", "Concat", "Pad",
    "Resize", "Upsample",
}
_GRID_MAKERS = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}
DEFAULT_SIDE = 224  # a dynamic spatial side, when nothing else says how large the input is


def gradcam_candidates(model: LoadedModel, x: np.ndarray | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """``[(layer name, activation shape)]`` of the layers with a spatial grid larger than 1x1, in the
    order the model computes them. ``x``: one input in the layout the command line uses (NCHW); a zero
    input of the declared (or default) shape when None."""
    if x is None:
        x = _zero_input(model)
    if model.preprocessing is not None and model.preprocessing.layout == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    if model.kind == "onnx":
        return _onnx_candidates(model, x[:1], dict(model.constant_inputs or {}))
    return _torch_candidates(model, x[:1])


def auto_layer(model: LoadedModel, x: np.ndarray) -> str:
    """The last Grad-CAM candidate: what ``--layer auto`` means."""
    candidates = gradcam_candidates(model, x)
    if not candidates:
        raise InputError(f"{model.path.name} has no layer with a spatial grid larger than 1x1 on the way to the "
                         "explained output, so Grad-CAM has nothing to localise: use another --method")
    return candidates[-1][0]


def _zero_input(model: LoadedModel) -> np.ndarray:
    prep = model.preprocessing
    channels = (prep.channels if prep else None) or model.input_chw[0] or 3
    size = prep.size if prep and prep.size else None
    height, width = size if size else (None, None)
    height = height or width or DEFAULT_SIDE
    width = width or height
    if model.input_shape is not None and len(model.input_shape) == 2:  # a feature vector
        return np.zeros((1, channels), np.float32)
    return np.zeros((1, channels, height, width), np.float32)


def _onnx_candidates(model: LoadedModel, x: np.ndarray, constants: dict[str, np.ndarray]) -> list[tuple[str, tuple]]:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model.path))
    graph = proto.graph
    needed = _ancestors(graph, model.backend.output_name)
    grids: list[str] = []
    on_grid: set[str] = set()
    for node in graph.node:
        if not node.output or node.output[0] not in needed:
            continue
        if node.op_type in _GRID_MAKERS or (node.op_type in _LAYOUT_KEEPING
                                            and any(name in on_grid for name in node.input)):
            on_grid.add(node.output[0])
            grids.append(node.output[0])
    if not grids:
        return []
    declared = {o.name for o in graph.output}
    for name in grids:
        if name not in declared:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {model.backend.input_name: x.astype(model.backend.input_dtype), **constants}
    values = session.run(grids, feeds)
    return [(name, tuple(v.shape)) for name, v in zip(grids, values, strict=True)
            if v.ndim == 4 and v.shape[2] * v.shape[3] > 1]


def _ancestors(graph: Any, output: str) -> set[str]:
    made_by = {out: node for node in graph.node for out in node.output}
    seen, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = made_by.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def _torch_candidates(model: LoadedModel, x: np.ndarray) -> list[tuple[str, tuple]]:
    import torch

    module = getattr(model.backend, "model", None)
    if module is None or isinstance(module, torch.jit.ScriptModule) or not hasattr(module, "named_modules"):
        raise InputError(f"cannot list the layers of {model.path.name} (a TorchScript or torch.export file keeps "
                         "no hookable submodules): pass --layer NAME, or load its weights with --model-class")
    found: list[tuple[str, tuple]] = []
    handles = []

    def recorder(name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
                found.append((name, tuple(output.shape)))
        return record

    for name, sub in module.named_modules():
        if name:
            handles.append(sub.register_forward_hook(recorder(name)))
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()
    return found


def _describe_onnx_io(model: LoadedModel) -> list[str]:
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    initialised = {init.name for init in graph.initializer}

    def line(vi: Any) -> str:
        tensor = vi.type.tensor_type
        dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
        try:
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, ValueError):
            dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        return f"  {vi.name}: ({', '.join(dims)}) {dtype}"

    lines = ["inputs:"] + [line(vi) for vi in graph.input if vi.name not in initialised]
    lines += ["outputs:"] + [line(vi) for vi in graph.output]
    lines.append(f"explained: {model.backend.output_name!r} with respect to {model.backend.input_name!r}")
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    """Print the model's inputs and outputs, the preprocessing images would get, and its Grad-CAM layers."""
    from .commands import open_model

    model = open_model(args, quiet=True)
    print(f"model: {model.path} ({model.kind})")
    if model.kind == "onnx":
        lines = _describe_onnx_io(model)
    else:
        shape = model.input_shape
        lines = [f"input: {'(' + ', '.join(map(str, shape)) + ')' if shape else 'shape not recorded in the file'}"]
    print("\n".join(lines))
    print(f"preprocessing: {model.preprocessing.describe()}")
    remarks = list(model.notes)
    if not model.preprocessing.normalised:
        remarks.append(NORMALISATION_HINT)
    for remark in remarks:
        print(f"  note: {remark}")
    x = None
    if args.inputs:  # the grid sizes of a model with a dynamic input size, at this input's size
        from .commands import _preprocess
        from .inputs import expand_inputs

        args.quiet = True  # inspect prints its own notes
        x = _preprocess(args, model, expand_inputs(args.inputs)[:1])[0].array[None]
    try:
        candidates = gradcam_candidates(model, x)
    except InputError as exc:
        print(f"Grad-CAM layers: {exc}")
        return 0
    if not candidates:
        print("Grad-CAM layers: none (no activation with a spatial grid larger than 1x1)")
        return 0
    print("Grad-CAM layers (activations with a spatial grid larger than 1x1; --layer auto takes the last):")
    for name, shape in candidates:
        print(f"  {name}: {shape}")
    return 0
