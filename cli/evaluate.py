"""The ``evaluate`` command: time, deletion / insertion AUC and randomisation correlation per method.

Runs :func:`gradsal.core.compare_methods` on the inputs (one batch, each explained for its top-1 class),
prints the table, and writes ``curves.png`` (mean deletion and insertion curves) and ``evaluation.json``
(the table, the inputs and their targets, and the curves) into ``--out``.

The randomisation column comes from a cascading model-randomisation test over every weight layer the
model has, from the output back to the input. When the backend cannot re-initialise layers, or no weight
layers are found, the column shows ``-`` and a note under the table says why.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core._validate import call_backend
from ..core.errors import GradsalError, InputError
from ..core.methods import METHODS as METHOD_TABLE
from ..core.methods import by_cli_name
from .commands import _preprocess, check_outputs, open_model, resolve_targets
from .inputs import LoadedModel, expand_inputs

# command-line name -> gradsal.core method name, for the methods that need no layer
METHODS = {method.cli_name: method.function for method in METHOD_TABLE
           if method.cli_name is not None and not method.needs_layer}
ONNX_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PLOT_NAME = "curves.png"
TABLE_NAME = "evaluation.json"
SHOWN = 8  # inputs named on stdout; all of them are in the JSON


def run_evaluate(args: argparse.Namespace) -> int:
    """Compare the chosen methods on the inputs; print the table, write the plot and the JSON."""
    methods = _chosen_methods(args.methods)
    paths = expand_inputs(args.inputs)  # before loading the model: a typo in a path fails fast
    model = open_model(args)
    samples = _preprocess(args, model, paths)
    if model.static_batch is not None:  # the curves run many perturbed copies of each input at once
        raise InputError(
            f"{model.path.name} was exported with a fixed batch of {model.static_batch} (torch.export without "
            "dynamic_shapes), and evaluate runs many copies of the inputs together: export it with "
            "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
        )
    x = np.stack([s.array for s in samples])
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {str(out)!r}: {exc}") from exc
    targets = resolve_targets("top1", check_outputs(model.backend.forward(x), len(x), model), None)
    if not 0.0 < args.step <= 1.0:
        raise InputError(f"--step must be a share of the pixels in (0, 1], got {args.step}")
    if args.no_randomization:
        layers, layer_note = [], "randomisation skipped (--no-randomization)"
    else:
        layers, layer_note = randomization_layers(model)
    if layers:
        layers, layer_note = _probe_randomization(model.backend, x, layers, args.seed)
    method_kwargs = {label: {"seed": args.seed} for label in methods if by_cli_name(label).seeded}
    _warm_up(model.backend, x, targets, methods, method_kwargs)
    comparison = core.compare_methods(
        model.backend, x, targets, methods=methods, method_kwargs=method_kwargs, step=args.step,
        layers=layers or None, seed=args.seed, score=args.score,
    )
    if layer_note:
        comparison = replace(comparison, notes=(*comparison.notes, layer_note))
    plot = core.plot_curves(comparison, out / PLOT_NAME)
    _add_caption(plot, _caption(model, len(samples), comparison))
    table = out / TABLE_NAME
    report = evaluation_report(comparison, model, samples, targets, layers)
    table.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    names = ", ".join(f"{s.name} (class {int(t)})" for s, t in zip(samples[:SHOWN], targets, strict=False))
    if len(samples) > SHOWN:
        names += f", ... ({len(samples) - SHOWN} more in {TABLE_NAME})"
    print(f"evaluated {len(samples)} input(s), each for its top-1 class: {names}")
    if layers:
        print(f"randomisation: cascading over {len(layers)} weight layer(s), output first: {', '.join(layers)}")
    print(comparison.to_text())
    print(f"wrote {plot} (deletion and insertion curves) and {table}")
    return 0


def _chosen_methods(names: list[str]) -> dict[str, str]:
    """``{command-line name: core method name}``, in the order given, repeats dropped."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    return {name: METHODS[name] for name in dict.fromkeys(names)}


def _warm_up(backend: Any, x: np.ndarray, targets: np.ndarray, methods: dict[str, str],
             method_kwargs: dict[str, dict[str, Any]]) -> None:
    """Run each method once so that the timed run does not pay for one-off setup (e.g. ONNX graph building)."""
    for label, name in methods.items():
        getattr(core, name)(backend, x, targets, **method_kwargs.get(label, {}))


def randomization_layers(model: LoadedModel) -> tuple[list[str] | None, str | None]:
    """The weight layers to randomise, output first, and a note when there are none to use.

    A backend without ``randomized`` still gets the list: :func:`~gradsal.core.compare_methods` then notes
    that it lacks the capability.
    """
    layers = _onnx_weight_layers(model) if model.kind == "onnx" else _torch_weight_layers(model.backend)
    if layers is None:
        return None, "randomisation skipped: cannot list the model's weight layers"
    if not layers:
        return None, "randomisation skipped: the model has no layers with weights to re-initialise"
    return layers[::-1], None


def _probe_randomization(backend: Any, x: np.ndarray, layers: list[str],
                         seed: int) -> tuple[list[str] | None, str | None]:
    """Re-initialise the first layer and run the copy once, so that a backend whose randomised copies fail
    (e.g. a TorchScript module that does not deep-copy cleanly) gives a note instead of ending the command.
    A backend without ``randomized`` keeps its layers: compare_methods notes the missing capability.
    """
    if not callable(getattr(backend, "randomized", None)):
        return layers, None
    try:
        copy = call_backend(backend, "randomized", [layers[0]], int(seed))
        call_backend(copy, "forward", x[:1])
    except GradsalError as exc:
        reason = " ".join(str(exc).split())
        return None, f"randomisation skipped: re-initialising {layers[0]!r} failed ({reason})"
    return layers, None


def _onnx_weight_layers(model: LoadedModel) -> list[str] | None:
    """Outputs of Conv/Gemm/MatMul nodes with float weights (that the explained output depends on, where the
    backend can say so with ``layer_names``), in graph order."""
    try:
        import onnx
    except ImportError:
        return None
    listing = getattr(model.backend, "layer_names", None)
    candidates = set(listing(ONNX_WEIGHT_OPS)) if callable(listing) else None
    graph = onnx.load(str(model.path), load_external_data=False).graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    weights = {init.name for init in graph.initializer if init.data_type in floats}
    return [node.output[0] for node in graph.node
            if node.op_type in ONNX_WEIGHT_OPS and node.output and any(i in weights for i in node.input)
            and (candidates is None or node.output[0] in candidates)]


def _torch_weight_layers(backend: Any) -> list[str] | None:
    """Named submodules that hold parameters of their own, in registration order."""
    module = getattr(backend, "model", None)
    if module is None or not hasattr(module, "named_modules"):
        return None
    return [name for name, sub in module.named_modules()
            if name and next(iter(sub.parameters(recurse=False)), None) is not None]


def _caption(model: LoadedModel, n_inputs: int, comparison: Any) -> list[str]:
    """What the plot shows, in words: the panels' y axis and each curve's baseline and reading."""
    first = comparison.rows[0]
    return [
        f"{model.path.name}: {n_inputs} input(s), each explained for its top-1 class",
        ("y axis: the softmax probability of that class" if first.deletion.score == "probability" else
         "y axis: the model's output for that class") + ", mean over the inputs; x axis: share of pixels changed",
        f"deletion: the most salient pixels are replaced first (baseline: {first.deletion.baseline}); "
        "lower AUC = more faithful",
        f"insertion: the most salient pixels are revealed first (baseline: {first.insertion.baseline}); "
        "higher AUC = more faithful",
    ]


def _add_caption(path: Path, lines: list[str]) -> None:
    """Put ``lines`` above the plot at ``path`` (pillow is there: plot_curves needed it)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # pillow < 10.1: the fixed-size bitmap font
        font = ImageFont.load_default()
    with Image.open(path) as plot:
        plot.load()
    wrapped = [part for line in lines for part in textwrap.wrap(line, max(40, plot.width // 6))]
    line_height = 15
    canvas = Image.new("RGB", (plot.width, plot.height + line_height * len(wrapped) + 10), "white")
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(wrapped):
        draw.text((8, 6 + line_height * index), line, fill="black", font=font)
    canvas.paste(plot, (0, line_height * len(wrapped) + 10))
    canvas.save(path, format="PNG")


def evaluation_report(comparison: Any, model: LoadedModel, samples: list[Any], targets: np.ndarray,
                      layers: list[str] | None) -> dict[str, Any]:
    """The JSON written next to the plot: the table, what was evaluated, and the curves of every row."""
    report = comparison.as_dict()
    report["model"] = str(model.path)
    report["inputs"] = [{"input": s.name, "target": int(t)} for s, t in zip(samples, targets, strict=True)]
    report["randomized_layers"] = layers
    for row, entry in zip(comparison.rows, report["methods"], strict=True):
        entry["deletion_curve"] = _curve_dict(row.deletion)
        entry["insertion_curve"] = _curve_dict(row.insertion)
    return _finite(report)


def _curve_dict(curve: Any) -> dict[str, Any]:
    return {"baseline": curve.baseline, "score": curve.score, "fractions": curve.fractions.tolist(),
            "mean_scores": curve.mean_scores().tolist(), "auc_per_input": curve.auc.tolist()}


def _finite(value: Any) -> Any:
    """NaN and infinities (e.g. the rank correlation of a constant map) as null, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
