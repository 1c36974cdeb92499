"""The ``explain`` and ``check`` commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core.errors import InputError, ModelError, TargetError
from ..core.methods import by_cli_name
from . import messages, preprocess
from .inputs import (
    DEFAULT_MAX_PIXELS,
    LoadedModel,
    Sample,
    expand_inputs,
    load_model,
    prepare_samples,
    read_constant_inputs,
    read_labels,
)
from .layout import ChannelsLast
from .messages import note


def attribution_function(args: argparse.Namespace) -> Callable[[Any, np.ndarray, Any, int], np.ndarray]:
    """The chosen method with the command line's settings bound, called as ``f(model, x, targets, first)``.

    The method's row in :data:`gradsal.core.methods.METHODS` names the core function and which of the
    flags it takes. ``first`` is the index of ``x``'s first input among all inputs: SmoothGrad seeds its
    noise with ``--seed + first``, so every chunk of inputs draws its own noise, reproducibly.
    """
    method = by_cli_name(args.method)
    if method.needs_layer and not args.layer:
        raise InputError(f"--method {args.method} needs --layer NAME (a Conv output tensor or a module name; see "
                         "gradsal inspect MODEL) or --layer auto")
    function = getattr(core, method.function)

    def explain(model: Any, x: np.ndarray, targets: Any, first: int) -> np.ndarray:
        flags = {"batch_size": args.batch_size, "n_samples": args.samples, "noise_level": args.noise,
                 "seed": args.seed + first, "n_steps": args.steps, "layer": args.layer}
        return function(model, x, targets, **{name: flags[name] for name in method.cli_options})

    return explain


def resolve_targets(target: str, outputs: np.ndarray, labels: list[str] | None) -> np.ndarray:
    """One class index per sample from ``top1``, an index, or a class name from --labels."""
    predicted = outputs.reshape(len(outputs), -1).argmax(axis=1)
    if target == "top1":
        return predicted
    n_classes = outputs.reshape(len(outputs), -1).shape[1]
    if target.lstrip("-").isdigit():
        index = int(target)
    elif labels is not None and target in labels:
        index = labels.index(target)
    else:
        where = "in --labels" if labels else "(pass --labels FILE to use class names)"
        raise TargetError(f"--target {target!r} is neither top1, an index, nor a class name {where}")
    if not 0 <= index < n_classes:
        raise TargetError(f"--target {index} is out of range: the model has {n_classes} outputs")
    return np.full(len(outputs), index)


def method_target(targets: np.ndarray, outputs: np.ndarray) -> np.ndarray | None:
    """What the methods take for ``targets``: the indices, or None where each sample's output is one value
    (``--output-batch-axis none`` on a scalar output), which the methods then explain as it is."""
    return None if outputs.ndim == 1 else targets


def _class_name(index: int, labels: list[str] | None) -> str:
    return labels[index] if labels and index < len(labels) else str(index)


def _progress(total: int, quiet: bool, desc: str) -> Any:
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, unit="input")


def open_model(args: argparse.Namespace, *, quiet: bool | None = None) -> LoadedModel:
    """The model named on the command line with its tensor flags, and the preprocessing its images get
    (from its declared input, a JSON file, a preset and the flags; see :mod:`.preprocess`). A channels-last
    model is wrapped so that everything else works in NCHW; the decisions are noted on stderr."""
    model = load_model(args.model, output_name=args.output_name, input_name=args.input_name,
                       constant_inputs=read_constant_inputs(args.constant_input), model_class=args.model_class,
                       output_batch_axis=args.output_batch_axis, straight_through=args.straight_through)
    overrides = {
        "layout": args.layout, "channel_order": args.channel_order, "resize": args.resize,
        "pixel_range": tuple(args.pixel_range) if args.pixel_range else None,
        "mean": tuple(args.mean) if args.mean else None, "std": tuple(args.std) if args.std else None,
        "size": size_flag(args.size), "crop_fraction": args.crop_fraction,
    }
    json_path = Path(args.preprocess) if args.preprocess else None
    prep, notes = preprocess.choose(model.input_shape, model.path, json_path=json_path, preset=args.preset,
                                    overrides=overrides)
    for remark in notes:
        note(remark, quiet=getattr(args, "quiet", False) if quiet is None else quiet)
    return replace(with_preprocessing(model, prep), notes=tuple(notes))


def with_preprocessing(model: LoadedModel, prep: preprocess.Preprocessing) -> LoadedModel:
    """``model`` fed by ``prep``: a channels-last model wrapped so that everything else works in NCHW."""
    if prep.layout == "NHWC":
        model = replace(model, backend=ChannelsLast(model.backend))
    return replace(model, preprocessing=prep)


def size_flag(values: list[str] | None) -> tuple[int | None, int | None] | None:
    """``--size S`` (S x S) or ``--size H W``, where a side may be ``auto`` (keep the aspect)."""
    if not values:
        return None
    if len(values) > 2:
        raise InputError(f"--size takes H W (or one side S for S x S), got {len(values)} values")
    try:
        sides = tuple(None if v.lower() == "auto" else int(v) for v in values)
    except ValueError as exc:
        raise InputError(f"--size {' '.join(values)}: sides are whole numbers of pixels or auto") from exc
    size = sides * 2 if len(sides) == 1 else sides
    try:
        preprocess.check_size(size)  # type: ignore[arg-type]
    except InputError as exc:
        raise InputError(f"--size {' '.join(values)}: {exc}") from exc
    return size  # type: ignore[return-value]


def _preprocess(args: argparse.Namespace, model: LoadedModel, paths: list[Path],
                same_shape: bool = True) -> list[Sample]:
    prep = model.preprocessing
    if prep is None:  # a model loaded without open_model: its declared input only
        prep = preprocess.detect(model.input_shape)[0]
    samples, notes = prepare_samples(paths, prep, max_pixels=getattr(args, "max_pixels", DEFAULT_MAX_PIXELS),
                                     same_shape=same_shape)
    if not prep.normalised and any(s.placement is not None for s in samples):
        notes.append(preprocess.NORMALISATION_HINT)
    for remark in notes:
        note(remark, quiet=getattr(args, "quiet", False))
    return samples


def _batch_axis_hint(shape: tuple[int, ...], n_inputs: int) -> str:
    axes = [axis for axis, size in enumerate(shape) if size == n_inputs and axis > 0]
    if axes:  # a time-major output, (T, N, C) say
        return (f"if its batch is axis {axes[0]}, pass --output-batch-axis {axes[0]}; else explain a per-sample "
                "tensor with --output-name NAME (see gradsal inspect MODEL)")
    return "explain a per-sample tensor with --output-name NAME (see gradsal inspect MODEL)"


def check_outputs(outputs: Any, n_inputs: int, model: LoadedModel) -> np.ndarray:
    """The model's outputs for ``n_inputs`` inputs, as one row per input, or an error saying what to explain."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 0 or len(outputs) != n_inputs:
        raise ModelError(
            f"{model.path.name}'s explained output has shape {outputs.shape}, not one row per input ({n_inputs}): "
            + _batch_axis_hint(outputs.shape, n_inputs)
        )
    if not np.issubdtype(outputs.dtype, np.floating):
        raise ModelError(
            f"{model.path.name}'s explained output is {outputs.dtype} (e.g. decoded indices), which has no "
            "gradient: explain a floating-point tensor before it with --output-name NAME"
        )
    return outputs


def _check_static_batch(args: argparse.Namespace, model: LoadedModel, n_inputs: int) -> None:
    """A model saved with a fixed batch size takes that many rows per call: say how to get there."""
    fixed = model.static_batch
    if fixed is None or args.batch_size == fixed:
        return
    rows = fixed + 1 if by_cli_name(args.method).many_rows_per_input else n_inputs
    if rows > fixed:
        raise InputError(
            f"{model.path.name} was exported with a fixed batch of {fixed} (torch.export without dynamic_shapes), "
            f"but {args.method} on {n_inputs} input(s) runs more rows at once: pass --batch-size {fixed}, or "
            "export with dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
        )


def _resolve_layer(args: argparse.Namespace, model: LoadedModel, x: np.ndarray) -> None:
    if not by_cli_name(args.method).needs_layer or args.layer != "auto":
        return
    from .inspect import auto_layer

    args.layer = auto_layer(model, x)
    note(f"--layer auto: Grad-CAM on {args.layer!r}, the last activation with a spatial grid larger than 1x1",
         quiet=args.quiet)


def run_explain(args: argparse.Namespace) -> int:
    """Explain each input and write an overlay (and raw arrays if asked) plus summary.json."""
    paths = expand_inputs(args.inputs)  # before loading the model: a typo in a path fails fast
    labels = read_labels(args.labels)
    explain = attribution_function(args)  # also before loading: a missing --layer fails fast
    model = open_model(args)
    samples = _preprocess(args, model, paths, same_shape=False)  # e.g. text lines at a fixed height
    _check_static_batch(args, model, len(samples))
    _resolve_layer(args, model, samples[0].array[None])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(1, args.batch_size or 16)
    summary = []
    bar = _progress(len(samples), args.quiet, f"gradsal {args.method}")
    for start, batch in _batches(samples, chunk):
        x = np.stack([s.array for s in batch])
        outputs = check_outputs(model.backend.forward(x), len(x), model)
        targets = resolve_targets(args.target, outputs, labels)
        attributions = explain(model.backend, x, method_target(targets, outputs), start)
        summary += _write_results(args, out, batch, outputs, targets, attributions, labels)
        messages.flush()  # the first results are in: what was decided on the way is worth reading now
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        print(f"wrote {len(summary)} explanation(s) and {out / 'summary.json'}")
    return 0


def _batches(samples: list[Sample], size: int) -> list[tuple[int, list[Sample]]]:
    """``(index of the first, samples)`` runs of at most ``size`` consecutive samples of one shape."""
    runs: list[tuple[int, list[Sample]]] = []
    for index, sample in enumerate(samples):
        last = runs[-1][1] if runs else None
        if last is not None and len(last) < size and last[0].array.shape == sample.array.shape:
            last.append(sample)
        else:
            runs.append((index, [sample]))
    return runs


def _write_results(args, out, batch, outputs, targets, attributions, labels) -> list[dict[str, Any]]:
    flat = outputs.reshape(len(outputs), -1)
    maps = attributions if by_cli_name(args.method).returns_map else core.to_saliency_map(attributions)
    rows = []
    for i, sample in enumerate(batch):
        predicted = int(flat[i].argmax())
        row = {
            "input": sample.name, "method": args.method,
            "predicted": predicted, "predicted_name": _class_name(predicted, labels),
            "target": int(targets[i]), "target_name": _class_name(int(targets[i]), labels),
            "score": float(flat[i, targets[i]]), "files": [],
        }
        if "npy" in args.format:
            np.save(out / f"{sample.name}_{args.method}.npy", attributions[i])
            row["files"].append(f"{sample.name}_{args.method}.npy")
        if "png" in args.format and sample.display is not None:
            from ..core import visualize

            caption = (f"{args.method} | predicted {row['predicted_name']} | "
                       f"target {row['target_name']} ({row['score']:.3g})")
            shown = maps[i] if sample.placement is None else sample.placement.to_original(maps[i])
            picture = visualize.side_by_side(sample.display, shown, caption=caption)
            picture.save(out / f"{sample.name}_{args.method}.png")
            row["files"].append(f"{sample.name}_{args.method}.png")
        rows.append(row)
    return rows


def _random_input_shape(args: argparse.Namespace, model: LoadedModel) -> tuple[int, ...]:
    """The shape of the random input ``check`` uses without an INPUT: the declared one, sides from --size."""
    shape, prep = model.input_shape, model.preprocessing
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return (1, shape[1])
    channels = prep.channels if prep is not None else None
    size = prep.size if prep is not None else None
    if shape is None or len(shape) != 4 or channels is None or size is None or None in size:
        declared = "no input shape" if shape is None else "input shape (" + ", ".join(map(str, shape)) + ")"
        raise InputError(f"{model.path.name} declares {declared}, without a fixed channel count, height and width: "
                         "give an INPUT image or .npy file, or --size H W")
    return (1, channels, *size)  # type: ignore[return-value]


def run_check(args: argparse.Namespace) -> int:
    """Check the model's gradients against finite differences; exit 1 when they disagree."""
    paths = expand_inputs(args.inputs) if args.inputs else []
    model = open_model(args)
    if paths:
        x = np.stack([s.array for s in _preprocess(args, model, paths)])[:1]
    else:
        x = np.random.default_rng(args.seed).random(_random_input_shape(args, model)).astype(np.float32)
    x = x.astype(np.float64) if args.float64 else x
    computes_in = np.asarray(model.backend.forward(x[:1])).dtype if args.float64 else None
    if computes_in is not None and computes_in != np.float64:
        print(f"Note: {args.model} computes in {computes_in}, so --float64 cannot make the check float64 (export "
              "or save the model in float64 for that); checking at its own precision.")
    nudge = "auto" if args.nudge is None else args.nudge
    options = {"seed": args.seed, "n_directions": args.directions, "nudge": nudge}
    report = core.check_gradients(model.backend, x, **options)
    print(report)
    if report.inconclusive:
        # images with flat backgrounds put ReLUs at 0 and tie max-pool windows: judge at a generic point,
        # the uniform random input that `gradsal check MODEL` uses
        generic = np.random.default_rng(args.seed).random(x.shape).astype(x.dtype)
        print("The input lies on kinks of the model; checking again at a uniform random input in [0, 1) of the "
              "same shape:")
        report = core.check_gradients(model.backend, generic, **options)
        print(report)
    return 0 if report.passed else 1
