"""The ``demo`` command: the shipped reference models explained by several methods, written as pictures.

Runs offline on the CPU in seconds. For each sample digit it writes one figure per backend (ONNX and
PyTorch, whichever are installed): five rows, one per method (vanilla gradient, SmoothGrad, integrated
gradients, guided backpropagation, Grad-CAM), each row the input | the saliency map | the map over the
input, with a caption naming the method, backend, prediction and target. For one row of the tabular
data it writes a bar chart of the features that drove the prediction and prints the same ranking. It
also prints how closely the two backends' gradients agree on one image.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core.errors import InputError, MissingDependencyError
from ..core.methods import by_cli_name
from ..reference_models import zoo

INSTALL_ALL = "pip install 'gradsal[all]'"
SMOOTHGRAD_SAMPLES = 50  # the defaults of `gradsal explain`, so its results match the demo's
SMOOTHGRAD_NOISE = 0.15
IG_STEPS = 50
TOP_FEATURES = 10
_TEXT_RGB = (20, 20, 20)
_BACKGROUND_RGB = (255, 255, 255)


@dataclass(frozen=True)
class _Method:
    """One attribution method as the demo runs and draws it."""

    key: str  # its command-line name, which names its maps inside the demo
    explanation: str
    run: Callable[[Any, np.ndarray, np.ndarray, str], np.ndarray]  # (backend, x, targets, layer) -> maps
    cmap: str = "jet"

    @property
    def title(self) -> str:
        return by_cli_name(self.key).title


def _abs_map(attributions: np.ndarray) -> np.ndarray:
    return core.to_saliency_map(attributions)  # max over channels of |a|, each map scaled to [0, 1]


_METHODS = (
    _Method(
        "vanilla",
        "|d score / d pixel|: the pixels whose change would move the target's score the most.",
        lambda b, x, t, layer: _abs_map(core.vanilla_gradient(b, x, t)),
    ),
    _Method(
        "smoothgrad",
        f"The gradient averaged over {SMOOTHGRAD_SAMPLES} noisy copies of the input "
        f"(noise {SMOOTHGRAD_NOISE:.0%} of its range): the plain gradient's speckle partly averages out.",
        lambda b, x, t, layer: _abs_map(core.smoothgrad(b, x, t, n_samples=SMOOTHGRAD_SAMPLES,
                                                        noise_level=SMOOTHGRAD_NOISE, seed=0)),
    ),
    _Method(
        "ig",
        f"Each pixel's share of score(input) - score(black image), {IG_STEPS} steps: red pixels raise the "
        "score, blue ones lower it, white ones do not matter (colours saturate at the 99th percentile).",
        lambda b, x, t, layer: core.to_saliency_map(
            core.integrated_gradients(b, x, t, n_steps=IG_STEPS), sign="signed", reduce="sum", normalize="percentile"),
        cmap="bwr",
    ),
    _Method(
        "guided",
        "The gradient, except that every ReLU also blocks negative gradients on the way back; known to "
        "change little with the target class.",
        lambda b, x, t, layer: _abs_map(core.guided_backprop(b, x, t)),
    ),
    _Method(
        "gradcam",
        "Where the last convolutional block (8x8 feature maps, upsampled) finds evidence for the target: "
        "coarse, but class-specific.",
        lambda b, x, t, layer: core.to_saliency_map(core.grad_cam(b, x, t, layer=layer), reduce=None),
    ),
)


@dataclass(frozen=True)
class _Backend:
    """A framework's view of both shipped models, and the digits CNN's Grad-CAM layer in its naming."""

    key: str  # "onnx" or "torch": used in file names
    name: str  # "ONNX" or "PyTorch": used in captions
    digits: Any
    tabular: Any
    layer: str


def _installed(*modules: str) -> bool:
    try:
        for module in modules:
            __import__(module)
    except ImportError:
        return False
    return True


def _pillow() -> tuple[Any, Any, Any]:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise MissingDependencyError(f"gradsal demo draws its pictures with pillow (not installed): {INSTALL_ALL}") \
            from exc
    return Image, ImageDraw, ImageFont


def _font(size: int) -> Any:
    _, _, image_font = _pillow()
    try:
        return image_font.load_default(size=size)
    except TypeError:  # pillow < 10.1 has only its small bitmap font
        return image_font.load_default()


def _backends() -> tuple[list[_Backend], list[str]]:
    """The backends this installation can run, and a sentence for each one it cannot."""
    has_onnx, has_torch = _installed("onnx", "onnxruntime"), _installed("torch")
    if not (has_onnx or has_torch):
        raise MissingDependencyError(
            "gradsal demo needs PyTorch or ONNX Runtime to run its models, and neither is installed: "
            f"{INSTALL_ALL}"
        )
    entry = zoo.metadata("digits_cnn")
    backends, notes = [], []
    if has_onnx:
        import onnxruntime

        from ..backends.onnx import OnnxBackend

        options = onnxruntime.SessionOptions()  # one thread: see _one_torch_thread
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        backends.append(_Backend(
            "onnx", "ONNX", OnnxBackend(str(zoo.load_digits_cnn("onnx")), session_options=options),
            OnnxBackend(str(zoo.load_tabular_mlp("onnx")), session_options=options), entry["gradcam_onnx_tensor"],
        ))
    else:
        notes.append("ONNX Runtime is not installed: running the PyTorch backend only "
                     "(pip install 'gradsal[onnx]' to compare both).")
    if has_torch:
        from ..backends.torch import TorchBackend

        backends.append(_Backend("torch", "PyTorch", TorchBackend(zoo.load_digits_cnn("torch")),
                                 TorchBackend(zoo.load_tabular_mlp("torch")), entry["gradcam_layer"]))
    else:
        notes.append("PyTorch is not installed: running the ONNX backend only "
                     "(pip install 'gradsal[torch]' to compare both).")
    return backends, notes


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread while the demo runs (restored after).

    The shipped models are tiny: one thread runs them fastest, and many times faster than the default
    thread pool on a machine whose cores are busy with other work.
    """
    if not _installed("torch"):
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _say(path: Path, what: str) -> None:
    print(f"  {path}")
    print(f"      {what}")


# ---------------------------------------------------------------------------------------------- figures


def _stack(heading: list[str], rows: list[Any]) -> Any:
    """``rows`` (pictures of one width) one under the other, below a heading of a few lines of text."""
    image_module, image_draw, _ = _pillow()
    big, small = _font(18), _font(14)
    width = max(r.width for r in rows)
    line_heights = [26] + [20] * (len(heading) - 1)
    top = 12 + sum(line_heights) + 6
    separator = 2
    height = top + sum(r.height for r in rows) + separator * (len(rows) - 1)
    canvas = image_module.new("RGB", (width, height), _BACKGROUND_RGB)
    draw = image_draw.Draw(canvas)
    y = 12
    for k, (line, step) in enumerate(zip(heading, line_heights, strict=True)):
        draw.text((10, y), line, fill=_TEXT_RGB, font=big if k == 0 else small)
        y += step
    y = top
    for k, row in enumerate(rows):
        if k:
            draw.rectangle([0, y, width, y + separator - 1], fill=(120, 120, 120))
            y += separator
        canvas.paste(row, (0, y))
        y += row.height
    return canvas


def _digit_figures(backend: _Backend, digits: zoo.SampleImages, out: Path) -> tuple[list[tuple[Path, str]], np.ndarray]:
    """One figure per sample digit through ``backend``: the files with a line on each, and the vanilla gradients."""
    from ..core import visualize

    x = digits.images
    logits = backend.digits.forward(x)
    predicted = logits.argmax(axis=1)
    maps = {m.key: m.run(backend.digits, x, predicted, backend.layer) for m in _METHODS}
    files = []
    for i, path in enumerate(digits.paths):
        label, guess = int(digits.labels[i]), int(predicted[i])
        verdict = "correct" if guess == label else "WRONG"
        rows = []
        for method in _METHODS:
            caption = (f"{method.title} | {backend.name} backend | predicted {guess} (logit {logits[i, guess]:.3g}, "
                       f"{verdict}) | target {guess} (the prediction) | true label {label}\n{method.explanation}")
            rows.append(visualize.side_by_side(x[i, 0], maps[method.key][i], caption=caption, cmap=method.cmap))
        heading = [
            f"Digit {label} ({path.name}) explained through the {backend.name} backend",
            "Each row is one method: the input | its saliency map (colour scale below it) | the map over the "
            "input.",
            "Every map explains the logit of the predicted class of the shipped digits CNN.",
        ]
        file = out / f"digit_{label}_{backend.key}.png"
        _stack(heading, rows).save(file)
        files.append((file, f"sample digit {label}: predicted {guess} ({verdict}, logit {logits[i, guess]:.3g})"))
    return files, core.vanilla_gradient(backend.digits, x, predicted)


def _tabular_figure(backend: _Backend, out: Path) -> tuple[Path, str, list[str]]:
    """The bar chart of one tabular sample's top features: the file, the ranking as text, lines about it."""
    from ..core import visualize

    rows = zoo.sample_tabular()
    x = rows.features[:1]
    logits = backend.tabular.forward(x)[0]
    guess, label = int(logits.argmax()), int(rows.labels[0])
    other = 1 - guess
    # the evidence for the predicted class over the other one: explain logit[guess] - logit[other]
    contrast = np.zeros(len(logits), dtype=np.float32)
    contrast[guess], contrast[other] = 1.0, -1.0
    attributions = core.integrated_gradients(backend.tabular, x, contrast, n_steps=IG_STEPS)[0]
    names, classes = rows.feature_names, rows.class_names
    title = (f"Why '{classes[guess]}' rather than '{classes[other]}'? Patient 1 (true: {classes[label]}), "
             f"integrated gradients, {backend.name}")
    chart = visualize.feature_bar_chart(names, attributions, top_k=TOP_FEATURES, title=title, width=860)
    file = out / f"tabular_{backend.key}.png"
    chart.save(file)
    margin = float(logits[guess] - logits[other])
    zero = np.zeros_like(x)  # standardised features: zero is the training set's average patient
    base_logits = backend.tabular.forward(zero)[0]
    base_margin = float(base_logits[guess] - base_logits[other])
    about = [
        f"patient 1 of the shipped breast-cancer samples (true: {classes[label]}): predicted {classes[guess]}, "
        f"logit margin {margin:.2f} over {classes[other]}",
        f"integrated gradients from the average patient (margin {base_margin:.2f}): the {len(names)} features' "
        f"shares add up to {float(attributions.sum()):.2f}, the change of margin {margin - base_margin:.2f}",
    ]
    return file, visualize.feature_ranking_text(names, attributions, TOP_FEATURES), about


# ------------------------------------------------------------------------------------------------ command


def run_demo(args: argparse.Namespace) -> int:
    """Explain the shipped models through every installed backend and write the pictures to ``args.out``."""
    started = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out!r} is a file: give the folder the demo should write its pictures to")
    _pillow()
    with _one_torch_thread():
        return _demo(out, started)


def _demo(out: Path, started: float) -> int:
    backends, notes = _backends()
    out.mkdir(parents=True, exist_ok=True)
    digits = zoo.sample_images()
    accuracy = zoo.metadata("digits_cnn")["test_accuracy"]
    names = " and ".join(b.name for b in backends)
    print(f"gradsal demo: the shipped digits CNN ({accuracy:.1%} test accuracy) and breast-cancer MLP, explained "
          f"through the {names} backend{'s' if len(backends) > 1 else ''}.")
    for note in notes:
        print(note)
    methods = ", ".join(m.title for m in _METHODS)
    gradients: dict[str, np.ndarray] = {}
    written = 0
    for backend in backends:
        print(f"\n{backend.name} backend, one figure per sample digit; rows: {methods}; "
              "columns: input | saliency map | overlay")
        files, gradients[backend.key] = _digit_figures(backend, digits, out)
        for file, what in files:
            _say(file, what)
        written += len(files)
    tabular_backend = backends[0]
    file, ranking, about = _tabular_figure(tabular_backend, out)
    written += 1
    print(f"\nTabular MLP ({tabular_backend.name} backend): the {TOP_FEATURES} features that weigh most in one "
          "prediction")
    _say(file, "bar chart: red bars push towards the prediction, blue bars against it")
    for line in about:
        print(f"  {line}")
    print("\n".join(f"    {line}" for line in ranking.splitlines()))
    print()
    if "onnx" in gradients and "torch" in gradients:
        onnx_grad, torch_grad = gradients["onnx"][1], gradients["torch"][1]
        relative = float(np.abs(onnx_grad - torch_grad).max() / max(float(np.abs(torch_grad).max()), 1e-30))
        print(f"Trust check: the ONNX and PyTorch gradients of {digits.paths[1].name} differ by at most "
              f"{relative:.2g} of the largest gradient (float32 rounding is about 1e-7).")
    else:
        print("Trust check skipped: comparing the ONNX and PyTorch gradients needs both backends installed.")
    print(f"Wrote {written} pictures to {out} in {time.perf_counter() - started:.1f} s.")
    return 0
