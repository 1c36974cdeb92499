"""The ``explain`` and ``check`` commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core.errors import InputError, TargetError
from .inputs import LoadedModel, Sample, expand_inputs, load_model, load_samples, read_labels

METHODS = ("vanilla", "gradxinput", "smoothgrad", "ig", "guided", "gradcam")


def attribution_function(args: argparse.Namespace) -> Callable[[Any, np.ndarray, Any, int], np.ndarray]:
    """The chosen method with the command line's settings bound, called as ``f(model, x, targets, first)``.

    ``first`` is the index of ``x``'s first input among all inputs: SmoothGrad seeds its noise with
    ``--seed + first``, so every chunk of inputs draws its own noise, reproducibly.
    """
    batch = {"batch_size": args.batch_size}
    methods: dict[str, Callable[[Any, np.ndarray, Any, int], np.ndarray]] = {
        "vanilla": lambda m, x, t, first: core.vanilla_gradient(m, x, t, **batch),
        "gradxinput": lambda m, x, t, first: core.gradient_x_input(m, x, t, **batch),
        "smoothgrad": lambda m, x, t, first: core.smoothgrad(
            m, x, t, n_samples=args.samples, noise_level=args.noise, seed=args.seed + first, **batch
        ),
        "ig": lambda m, x, t, first: core.integrated_gradients(m, x, t, n_steps=args.steps, **batch),
        "guided": lambda m, x, t, first: core.guided_backprop(m, x, t),
        "gradcam": lambda m, x, t, first: core.grad_cam(m, x, t, layer=args.layer),
    }
    if args.method == "gradcam" and not args.layer:
        raise InputError("--method gradcam needs --layer NAME (a Conv output tensor or a module name)")
    return methods[args.method]


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


def _preprocess(args: argparse.Namespace, model: LoadedModel, paths: list[Path]) -> list[Sample]:
    channels, height, width = model.input_chw
    size = tuple(args.size) if args.size else (height, width) if height and width else None
    return load_samples(paths, size=size, channels=channels, mean=args.mean, std=args.std)


def run_explain(args: argparse.Namespace) -> int:
    """Explain each input and write an overlay (and raw arrays if asked) plus summary.json."""
    paths = expand_inputs(args.inputs)  # before loading the model: a typo in a path fails fast
    labels = read_labels(args.labels)
    explain = attribution_function(args)  # also before loading: a missing --layer fails fast
    model = load_model(args.model, output_name=args.output_name)
    samples = _preprocess(args, model, paths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(1, args.batch_size or 16)
    summary = []
    bar = _progress(len(samples), args.quiet, f"gradsal {args.method}")
    for start in range(0, len(samples), chunk):
        batch = samples[start:start + chunk]
        x = np.stack([s.array for s in batch])
        outputs = model.backend.forward(x)
        targets = resolve_targets(args.target, outputs, labels)
        attributions = explain(model.backend, x, targets, start)
        summary += _write_results(args, out, batch, outputs, targets, attributions, labels)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        print(f"wrote {len(summary)} explanation(s) and {out / 'summary.json'}")
    return 0


def _write_results(args, out, batch, outputs, targets, attributions, labels) -> list[dict[str, Any]]:
    flat = outputs.reshape(len(outputs), -1)
    maps = attributions if args.method == "gradcam" else core.to_saliency_map(attributions)
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
            picture = visualize.side_by_side(sample.display, maps[i], caption=caption)
            picture.save(out / f"{sample.name}_{args.method}.png")
            row["files"].append(f"{sample.name}_{args.method}.png")
        rows.append(row)
    return rows


def run_check(args: argparse.Namespace) -> int:
    """Check the model's gradients against finite differences; exit 1 when they disagree."""
    paths = expand_inputs(args.inputs) if args.inputs else []
    model = load_model(args.model, output_name=args.output_name)
    if paths:
        x = np.stack([s.array for s in _preprocess(args, model, paths)])[:1]
    else:
        channels, height, width = model.input_chw
        if channels is None or (height is None) != (width is None):
            raise InputError(
                f"{args.model} does not declare a fixed input shape: give an INPUT image or .npy file"
            )
        shape = (1, channels) if height is None else (1, channels, height, width)
        x = np.random.default_rng(args.seed).random(shape).astype(np.float32)
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
