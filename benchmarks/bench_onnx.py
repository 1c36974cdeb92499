"""ONNX backend benchmark: gradient cost against the plain forward, onnx-ad, torch autograd and finite differences.

For each model family in ``gradsal.reference_models.architectures`` (ResNet-, MobileNet-, OCR- and
detector-style, random weights, small inputs; plus the full-size MobileNetV2 at 224x224, and ResNet-50 on
request; and ``ocr_lstm``, a CNN + stacked bidirectional LSTM text recogniser defined here, whose fused
LSTM nodes have their own rule), exported from torch at opset 17, one run measures on the CPU with the same thread count
everywhere:

- the plain onnxruntime forward (ORT_ENABLE_ALL);
- ``OnnxBackend.vjp`` with one cotangent per sample, and its ratio to the forward (target <= 3x);
- onnx-ad 0.3's reverse graph (the one other library that differentiates ONNX; ``bench`` extra), same
  session options, and its ratio (gradsal must be faster on every model);
- torch autograd's input gradient of the same module (the issue-4 target: OnnxBackend <= 1.5x it);
- gradsal's graph build time, and the VJP graph's per-operator time share from onnxruntime's profiler;
- with ``--fd``: the finite-difference FunctionBackend on the same function (extrapolated from a subset
  of coordinates, stated as such), and the speed-up of the gradient graph over it.

- with ``--interleaved R``: the ratio of the fastest of R runs of the forward and of the VJP, taking
  turns in blocks of 4 whose first run is not timed (steadier than the medians on a shared machine; see
  ``interleaved_min_ms``); for ``ocr_lstm`` also the VJP with every LSTM unrolled into standard operators
  (the form peepholes or short sequences take), in the same turns; ``--skip-peers`` leaves out everything
  else;
- with ``--stacking``: SmoothGrad(50) of one image against one VJP of a batch of 50 (the samples are
  stacked along the batch axis; the ratio should be about 1).

Run: ``python benchmarks/bench_onnx.py [--batch 4] [--threads 2] [--repeats 20] [--fd] [--stacking] [--json out.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

FAMILIES = ("small_resnet", "small_mobilenet", "ocr_style", "detector_style")
# full-size networks at 3x224x224 (minutes on 2 cores with onnx-ad and torch beside them)
FULL_SIZE = ("mobilenet_v2", "resnet50")
# families defined in this file, not in gradsal.reference_models
RECURRENT = ("ocr_lstm",)


def ocr_lstm(num_classes: int = 37, hidden: int = 64):
    """CNN + LSTM text recogniser on 1x32x128 lines (the captcha-OCR shape): two Conv-ReLU-MaxPool stages,
    the 32 columns as a sequence, two stacked bidirectional LSTM layers, per-step logits ``(N, 32, classes)``."""
    import torch
    from torch import nn

    class OcrLstm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = (1, 32, 128)
            self.convs = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                       nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 2)))
            self.embed = nn.Linear(64 * 4, hidden)  # (N, 64, 4, 32) -> 32 steps of 256 features
            self.lstm = nn.LSTM(hidden, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(2 * hidden, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.convs(x)
            n, c, h, w = features.shape
            steps = self.embed(features.reshape(n, c * h, w).transpose(1, 2))
            return self.head(self.lstm(steps)[0])

    return OcrLstm()


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def interleaved_min_ms(fns: list[Callable[[], object]], repeats: int, block: int = 4) -> list[float]:
    """The fastest of ``repeats`` timed runs of each function, the functions taking turns in blocks of
    ``block`` runs (two warm-up rounds): load from other jobs slows any one run, but rarely every run of
    one function and none of the other.

    The first run of each block is not timed. With two or more threads, each onnxruntime session has its
    own thread pool, whose workers keep spinning for a while after a run; on a 2-vCPU machine they take a
    core from the other session's next run (measured: the OCR-style VJP 9.1-9.5 ms alone, 12.1-12.4 ms
    right after each forward run). A user runs one of the two, so each is timed once the other is idle.
    """
    for fn in fns * 2:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(max(1, repeats // (block - 1))):
        for i, fn in enumerate(fns):
            fn()
            for _ in range(block - 1):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
    return [1e3 * b for b in best]


def rounds_against_forward(path: Path, x: np.ndarray, graphs: list, options, rounds: int,
                           repeats: int) -> tuple[float, np.ndarray]:
    """The plain forward of the model at ``path`` and each gradient graph (``build_gradient_model``
    results, seeded with the top-class cotangent) taking turns (:func:`interleaved_min_ms`) for ``rounds``
    rounds of ``repeats`` runs, every session made with ``options``: the forward's median time in ms and
    each round's ratio of each graph to the forward (rounds x graphs)."""
    import onnxruntime as ort

    forward = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    cotangent = top_class_cotangent(forward.run(None, {"input": x})[0])
    runs = [lambda: forward.run(None, {"input": x})]
    for graph in graphs:
        session = ort.InferenceSession(graph.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {graph.input_name: x, graph.seed_name: cotangent}
        runs.append(lambda session=session, feeds=feeds: session.run(None, feeds))
    times = np.array([interleaved_min_ms(runs, repeats) for _ in range(rounds)])
    return float(np.median(times[:, 0])), times[:, 1:] / times[:, :1]


@contextlib.contextmanager
def replaced_vjps(vjps: dict, differentiable: dict | None = None) -> Iterator[None]:
    """Register the given VJP rules (op type -> rule; ``differentiable``: op type -> the input positions
    that carry gradient) for the duration of the block, gradsal's own rules restored after it."""
    from gradsal.backends.onnx import rules
    from gradsal.backends.onnx.rules import registry

    rules.load()
    saved = {op: (registry._VJP[op], registry._DIFFERENTIABLE.get(op)) for op in vjps}
    registry._VJP.update(vjps)
    registry._DIFFERENTIABLE.update(differentiable or {})
    try:
        yield
    finally:
        for op, (vjp, positions) in saved.items():
            registry._VJP[op], registry._DIFFERENTIABLE[op] = vjp, positions


def quartile_cells(ratios: np.ndarray) -> str:
    """Table cells ``median (25th-75th percentile)`` of each column of ``ratios`` (rounds x variants)."""
    quartiles = np.percentile(ratios, [25, 50, 75], axis=0).T
    return " | ".join(f"{mid:.2f}x ({low:.2f}-{high:.2f})" for low, mid, high in quartiles)


def top_class_cotangent(logits: np.ndarray) -> np.ndarray:
    """One-hot on each sample's top-scoring class (the last axis; per step for ``(N, T, classes)``): the
    cotangent of a vanilla saliency map (of the greedy decoding, for a sequence)."""
    cotangent = np.zeros_like(logits)
    np.put_along_axis(cotangent, logits.argmax(axis=-1)[..., None], 1.0, axis=-1)
    return cotangent


def session_options(threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def export(name: str, batch: int, folder: Path, symbolic_batch: bool = False):
    """The torch module, its input and the exported ONNX path (static shapes, as onnx-ad requires, unless
    ``symbolic_batch``)."""
    import torch

    from gradsal.reference_models import architectures

    torch.manual_seed(0)
    module = (ocr_lstm() if name == "ocr_lstm" else getattr(architectures, name)()).eval()
    shape = getattr(module, "input_shape", (3, 64, 64))
    x = torch.rand(batch, *shape)
    path = folder / f"{name}{'_dynamic' if symbolic_batch else ''}.onnx"
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if symbolic_batch else None
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; it is what real exports used
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), str(path), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes, dynamo=False)
    return module, x.numpy(), path


def op_time_share(model_bytes: bytes, feeds: dict, threads: int, folder: Path) -> list[tuple[str, float]]:
    """Per-operator share of node time in onnxruntime's profile of ``model_bytes``."""
    import onnxruntime as ort

    options = session_options(threads, str(folder / "profile"))
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1
    return [(op, 100.0 * t / whole) for op, t in totals.most_common(6)]


def bench_family(name: str, args: argparse.Namespace, folder: Path) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    from gradsal.backends.onnx import OnnxBackend
    from gradsal.backends.onnx._graph import build_gradient_model

    module, x, path = export(name, args.batch, folder)
    forward = ort.InferenceSession(str(path), session_options(args.threads), providers=["CPUExecutionProvider"])
    cotangent = top_class_cotangent(forward.run(None, {"input": x})[0])
    row: dict = {"model": name, "nodes": len(onnx.load(str(path)).graph.node)}
    row["forward_ms"] = median_ms(lambda: forward.run(None, {"input": x}), args.repeats)

    backend = OnnxBackend(str(path), session_options=session_options(args.threads))
    row["gradsal_ms"] = median_ms(lambda: backend.vjp(x, cotangent), args.repeats)
    row["gradsal_ratio"] = row["gradsal_ms"] / row["forward_ms"]
    if args.interleaved:
        runs = [lambda: forward.run(None, {"input": x}), lambda: backend.vjp(x, cotangent)]
        if name in RECURRENT:  # the general unrolling beside the fused LSTM's rule, in the same session
            unrolled = unrolled_lstm_backend(path, x, cotangent, args.threads)
            runs.append(lambda: unrolled.vjp(x, cotangent))
        fastest = interleaved_min_ms(runs, args.interleaved)
        row["interleaved_forward_ms"], row["interleaved_gradsal_ms"] = fastest[:2]
        row["interleaved_ratio"] = fastest[1] / fastest[0]
        if name in RECURRENT:
            row["interleaved_unrolled_ms"] = fastest[2]
            row["interleaved_unrolled_ratio"] = fastest[2] / fastest[0]
    if args.skip_peers:
        return row
    model = onnx.load(str(path))
    start = time.perf_counter()
    built = build_gradient_model(model, x.shape, input_name="input", output_name="logits")
    row["build_s"] = time.perf_counter() - start
    feeds = {built.input_name: x, built.seed_name: cotangent}
    row["gradsal_ops"] = op_time_share(built.model.SerializeToString(), feeds, args.threads, folder)

    row.update(bench_onnx_ad(model, x, cotangent, args))
    if row.get("onnx_ad_ms"):
        row["onnx_ad_ratio"] = row["onnx_ad_ms"] / row["forward_ms"]

    torch.set_num_threads(args.threads)
    xt = torch.from_numpy(x)
    ct = torch.from_numpy(cotangent)
    for p in module.parameters():
        p.requires_grad_(False)

    def autograd() -> None:
        xi = xt.clone().requires_grad_(True)
        torch.autograd.grad(module(xi), xi, ct)

    row["torch_ms"] = median_ms(autograd, args.repeats)
    row["vs_torch"] = row["gradsal_ms"] / row["torch_ms"]
    if args.fd:
        row.update(bench_finite_differences(forward, x, cotangent, row, args))
    if args.stacking:
        row["stacking"] = bench_stacking(name, args, folder)
    return row


def unrolled_lstm_backend(path: Path, x: np.ndarray, cotangent: np.ndarray, threads: int):
    """An OnnxBackend whose gradient graph unrolls every LSTM into standard operators (the general form,
    which peepholes and short sequences take), built here by its first VJP, for comparison."""
    from gradsal.backends.onnx import OnnxBackend
    from gradsal.backends.onnx.rules import lstm

    backend = OnnxBackend(str(path), session_options=session_options(threads))
    with lstm.unrolled():
        backend.vjp(x, cotangent)
    return backend


def bench_onnx_ad(model, x: np.ndarray, cotangent: np.ndarray, args: argparse.Namespace) -> dict:
    try:
        import onnx_ad
    except ImportError:
        return {"onnx_ad_ms": None, "onnx_ad_note": "onnx-ad not installed (pip install 'gradsal[bench]')"}
    import onnxruntime as ort

    try:
        adjoint = onnx_ad.reverse(model, layout="onnx")
        session = ort.InferenceSession(adjoint.SerializeToString(), session_options(args.threads),
                                       providers=["CPUExecutionProvider"])
        seed_name = next(i.name for i in session.get_inputs() if i.name != "input")
        seed = cotangent[..., None]
        feeds = {"input": x, seed_name: seed}
        session.run(None, feeds)
    except Exception as exc:  # the peer refusing a model is a result to report, not a crash
        return {"onnx_ad_ms": None, "onnx_ad_note": f"failed: {type(exc).__name__}: {str(exc)[:120]}"}
    return {"onnx_ad_ms": median_ms(lambda: session.run(None, feeds), args.repeats)}


def bench_finite_differences(forward, x, cotangent, row, args) -> dict:
    """Central differences of <f(x), v>: 2 forwards per coordinate, timed on 64 and extrapolated.

    The export has a static batch, so each batched forward perturbs the same coordinate of every sample at
    once (the cheapest finite-difference schedule); the time per image is the batch's time over its size.
    """
    per_image = x[0].size
    eps = 1e-3
    subset = 64

    def some_coordinates() -> None:
        for i in range(subset):
            step = np.zeros(per_image, dtype=x.dtype)
            step[i] = eps
            step = step.reshape(x.shape[1:])
            plus = forward.run(None, {"input": x + step})[0]
            minus = forward.run(None, {"input": x - step})[0]
            float(np.sum((plus - minus) * cotangent))

    ms = median_ms(some_coordinates, 3) * per_image / subset / len(x)
    return {"fd_ms_extrapolated": ms, "fd_speedup": ms / (row["gradsal_ms"] / len(x))}


def bench_stacking(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """SmoothGrad(50) of one image through OnnxBackend against one VJP of a batch of 50 (issue 9: the
    samples are stacked along the batch axis, so the two should cost about the same). Uses an export
    with a symbolic batch axis, since the benchmark's own exports fix the batch."""
    from gradsal.backends.onnx import OnnxBackend
    from gradsal.core import smoothgrad

    _, image, path = export(name, 1, folder, symbolic_batch=True)
    backend = OnnxBackend(str(path), session_options=session_options(args.threads))
    logits = backend.forward(image)
    target = int(logits.argmax())
    stacked = np.repeat(image, 50, axis=0)
    cotangent = np.zeros((50, logits.shape[1]), dtype=np.float32)
    cotangent[:, target] = 1.0
    repeats = max(3, args.repeats // 4)
    vjp_ms = median_ms(lambda: backend.vjp(stacked, cotangent), repeats)
    sg_ms = median_ms(lambda: smoothgrad(backend, image, target, n_samples=50, seed=0, batch_size=50), repeats)
    return {"model": name, "vjp50_ms": vjp_ms, "smoothgrad50_ms": sg_ms, "stacking_ratio": sg_ms / vjp_ms}


def markdown(rows: list[dict]) -> str:
    if any("onnx_ad_ms" not in r for r in rows):  # --skip-peers: the ratios only
        lines = ["| model | nodes | ORT forward | gradsal VJP | ratio (medians) "
                 "| interleaved min: forward | VJP | ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            fastest = [r.get(k, float("nan")) for k in ("interleaved_forward_ms", "interleaved_gradsal_ms",
                                                         "interleaved_ratio")]
            lines.append(f"| {r['model']} | {r['nodes']} | {r['forward_ms']:.2f} ms | {r['gradsal_ms']:.2f} ms | "
                         f"{r['gradsal_ratio']:.2f}x | {fastest[0]:.2f} ms | {fastest[1]:.2f} ms | {fastest[2]:.2f}x |")
            if "interleaved_unrolled_ms" in r:
                lines.append(f"| {r['model']}, every LSTM unrolled | | | | | {fastest[0]:.2f} ms | "
                             f"{r['interleaved_unrolled_ms']:.2f} ms | {r['interleaved_unrolled_ratio']:.2f}x |")
        return "\n".join(lines)
    lines = [
        "| model | nodes | ORT forward | gradsal VJP | ratio | onnx-ad VJP | ratio | torch autograd | gradsal/torch "
        "| build | top ops in gradsal's VJP graph |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ad = f"{r['onnx_ad_ms']:.2f} ms | {r['onnx_ad_ratio']:.2f}x" if r.get("onnx_ad_ms") else \
            f"{r.get('onnx_ad_note', '-')} | -"
        ops = ", ".join(f"{op} {share:.0f}%" for op, share in r["gradsal_ops"][:4])
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['forward_ms']:.2f} ms | {r['gradsal_ms']:.2f} ms | "
            f"{r['gradsal_ratio']:.2f}x | {ad} | {r['torch_ms']:.2f} ms | {r['vs_torch']:.2f}x | "
            f"{r['build_s']:.2f} s | {ops} |"
        )
    stacked = [r["stacking"] for r in rows if "stacking" in r]
    if stacked:
        lines += ["", "| model | one VJP of batch 50 | SmoothGrad(50) of one image | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['vjp50_ms']:.1f} ms | {r['smoothgrad50_ms']:.1f} ms | "
                  f"{r['stacking_ratio']:.2f}x |" for r in stacked]
    fd = [r for r in rows if "fd_speedup" in r]
    for r in fd:
        lines.append(f"\n{r['model']}: finite differences (extrapolated from 64 coordinates) "
                     f"{r['fd_ms_extrapolated'] / 1e3:.1f} s per image; gradient graph {r['fd_speedup']:.0f}x faster.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=[*FAMILIES, *RECURRENT, "mobilenet_v2"],
                        choices=[*FAMILIES, *FULL_SIZE, *RECURRENT])
    parser.add_argument("--fd", action="store_true", help="also time finite differences (slow)")
    parser.add_argument("--interleaved", type=int, default=0, metavar="R",
                        help="also the ratio of the fastest of R interleaved runs of the forward and the VJP")
    parser.add_argument("--skip-peers", action="store_true",
                        help="only the forward and gradsal's VJP (no onnx-ad, torch, build time or profile)")
    parser.add_argument("--stacking", action="store_true",
                        help="also time SmoothGrad(50) of one image against one VJP of batch 50")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_family(name, args, Path(tmp)) for name in args.models]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; threads={args.threads}; "
          f"batch={args.batch}; onnxruntime {ort.__version__}; median of {args.repeats}")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
