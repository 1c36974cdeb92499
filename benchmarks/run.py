"""gradsal against the field: vanilla gradient, SmoothGrad and integrated gradients, timed in one process.

For a ResNet-50-sized and a MobileNetV2-sized network (``gradsal.reference_models.architectures``, random
weights) at 224x224 (batch 4 on CPU, 32 on GPU), each row is the median of ``--repeats`` runs, its ratio
to raw ``torch.autograd.grad`` measured in the same process, and its peak memory:

- forward only; raw autograd (input gradient);
- gradsal vanilla / SmoothGrad / IG through TorchBackend, and through OnnxBackend (CPU);
- Captum Saliency, NoiseTunnel(Saliency, smoothgrad) and IntegratedGradients (``bench`` extra);
- PAIR saliency's GradientSaliency, GetSmoothedMask and IntegratedGradients (``bench`` extra; per image,
  as that library works).

Output: a Markdown table on stdout and, with ``--json``, the rows as JSON. Optional libraries that are
missing are reported as such, not skipped silently.

Run: ``python benchmarks/run.py [--device cpu|cuda] [--models resnet50 mobilenet_v2] [--samples 50]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux), so each row reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure(fn: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """(median seconds, peak MiB) of ``fn``: GPU memory on CUDA, process RSS on CPU."""
    import torch

    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        peak_rss_reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()
    return float(np.median(times)), peak


def one_hot(outputs: np.ndarray) -> np.ndarray:
    cotangent = np.zeros_like(outputs)
    cotangent[np.arange(len(outputs)), outputs.argmax(axis=1)] = 1.0
    return cotangent


def rows_for(name: str, args: argparse.Namespace) -> list[dict]:
    import torch

    import gradsal.core as gs
    from gradsal.backends.torch import TorchBackend
    from gradsal.reference_models import architectures

    torch.manual_seed(0)
    device = args.device
    module = getattr(architectures, name)().eval().to(device)
    batch = args.batch or (32 if device == "cuda" else 4)
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    xt = torch.from_numpy(x).to(device)
    with torch.no_grad():
        target = module(xt).argmax(dim=1)
    target_np = target.cpu().numpy()
    n, steps = args.samples, args.samples
    rows: list[dict] = []

    def add(label: str, fn: Callable[[], object], repeats: int | None = None) -> None:
        try:
            seconds, peak = measure(fn, repeats or args.repeats, device)
        except Exception as exc:  # one library failing must not hide the others' numbers
            rows.append({"model": name, "method": label, "error": f"{type(exc).__name__}: {exc}"[:160]})
            return
        rows.append({"model": name, "method": label, "seconds": seconds, "peak_mib": peak})

    with torch.no_grad():
        add("forward only", lambda: module(xt))

    def raw_grad() -> None:
        xi = xt.clone().requires_grad_(True)
        out = module(xi)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xi)

    add("raw torch.autograd.grad", raw_grad)
    backend = TorchBackend(module)
    add("gradsal vanilla (torch)", lambda: gs.vanilla_gradient(backend, x, target_np))
    add(f"gradsal SmoothGrad({n}) (torch)", lambda: gs.smoothgrad(backend, x, target_np, n_samples=n, seed=0), 1)
    add(f"gradsal IG({steps}) (torch)", lambda: gs.integrated_gradients(backend, x, target_np, n_steps=steps), 1)
    if device == "cpu" and not args.no_onnx:
        add_onnx_rows(add, module, x, target_np, n, steps, name)
    add_captum_rows(add, module, xt, target, n, steps)
    add_pair_rows(add, module, x, target_np, n, steps, device)
    raw = next((r["seconds"] for r in rows if r["method"].startswith("raw") and "seconds" in r), None)
    for row in rows:
        if raw and "seconds" in row:
            row["vs_autograd"] = row["seconds"] / raw
    return rows


def add_onnx_rows(add, module, x, target, n, steps, name) -> None:
    import torch

    import gradsal.core as gs
    from gradsal.backends.onnx import OnnxBackend

    folder = Path(tempfile.mkdtemp())
    path = folder / f"{name}.onnx"
    torch.onnx.export(module.cpu(), (torch.from_numpy(x),), str(path), opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    backend = OnnxBackend(str(path))
    add("gradsal vanilla (onnx)", lambda: gs.vanilla_gradient(backend, x, target))
    add(f"gradsal SmoothGrad({n}) (onnx)", lambda: gs.smoothgrad(backend, x, target, n_samples=n, seed=0), 1)
    add(f"gradsal IG({steps}) (onnx)", lambda: gs.integrated_gradients(backend, x, target, n_steps=steps), 1)


def add_captum_rows(add, module, xt, target, n, steps) -> None:
    try:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    except ImportError:
        add("Captum (not installed: pip install 'gradsal[bench]')", _missing)
        return
    saliency = Saliency(module)
    add("Captum Saliency", lambda: saliency.attribute(xt, target=target, abs=False))
    tunnel = NoiseTunnel(saliency)
    add(f"Captum NoiseTunnel({n})", lambda: tunnel.attribute(
        xt, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=len(xt), stdevs=0.15, target=target,
        abs=False), 1)
    ig = IntegratedGradients(module)
    add(f"Captum IntegratedGradients({steps})", lambda: ig.attribute(
        xt, target=target, n_steps=steps, internal_batch_size=len(xt)), 1)


def add_pair_rows(add, module, x, target, n, steps, device) -> None:
    try:
        import saliency.core as pair
    except ImportError:
        add("PAIR saliency (not installed: pip install 'gradsal[bench]')", _missing)
        return
    import torch

    def call_model(images, call_model_args=None, expected_keys=None):
        batch = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))).to(device)
        batch.requires_grad_(True)
        out = module(batch)[:, call_model_args["target"]]
        grads = torch.autograd.grad(out.sum(), batch)[0]
        return {pair.base.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).cpu().numpy()}

    images = np.transpose(x, (0, 2, 3, 1))

    def per_image(method: Callable[..., object], **kwargs) -> Callable[[], None]:
        def run() -> None:
            for image, t in zip(images, target, strict=True):
                method(image, call_model, {"target": int(t)}, **kwargs)
        return run

    gradient = pair.GradientSaliency()
    add("PAIR GradientSaliency", per_image(gradient.GetMask))
    add(f"PAIR GetSmoothedMask({n})", per_image(gradient.GetSmoothedMask, nsamples=n, batch_size=n), 1)
    ig = pair.IntegratedGradients()
    add(f"PAIR IntegratedGradients({steps})", per_image(
        ig.GetMask, x_steps=steps, x_baseline=np.zeros_like(images[0]), batch_size=steps), 1)


def _missing() -> None:
    raise ImportError("not installed")


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | median time | vs raw autograd | peak memory |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['error']} | - | - |")
            continue
        ratio = f"{r['vs_autograd']:.2f}x" if "vs_autograd" in r else "-"
        time_ms = r["seconds"] * 1e3
        lines.append(f"| {r['model']} | {r['method']} | {time_ms:.1f} ms | {ratio} | {r['peak_mib']:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--batch", type=int)
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples and IG steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [row for name in args.models for row in rows_for(name, args)]
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"{time.strftime('%Y-%m-%d')}; {platform.machine()}; torch {torch.__version__}; GPU {gpu}; "
          f"threads {args.threads}; median of {args.repeats} (1 for SmoothGrad/IG rows)")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
