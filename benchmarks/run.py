"""gradsal against the field: vanilla gradient, SmoothGrad and integrated gradients, timed in one process.

For a ResNet-50-sized and a MobileNetV2-sized network (``gradsal.reference_models.architectures``, random
weights) at 224x224 (batch 4 on CPU, 32 on GPU), each row is the median of its timed runs, its ratio to
raw ``torch.autograd.grad`` and its peak memory:

- forward only; raw autograd (input gradient of the target logits, the model as the user has it);
- gradsal vanilla / SmoothGrad / IG through TorchBackend (fp32), through the opt-in fast path
  (``TorchBackend(model, fast=True)``: bf16 autocast where the hardware has it, channels-last, and
  ``torch.compile`` on CUDA) with the Spearman rank correlation of its maps with the fp32 maps, and
  through OnnxBackend (CPU only);
- Captum Saliency, NoiseTunnel(Saliency, smoothgrad) and IntegratedGradients (``bench`` extra);
- PAIR saliency's GradientSaliency, GetSmoothedMask and IntegratedGradients (``bench`` extra; one image
  per call, as that library works, and GetSmoothedMask one noisy sample per call).

Fair settings: SmoothGrad noise 0.15 of each image's range in every library, IG from a zero baseline
with the same number of steps (Gauss-Legendre in gradsal and Captum, PAIR's own Riemann rule), and the
same rows per backward pass (``--chunk``) wherever the library lets one choose.

Ratios: every timed run of a row is paired with a raw-autograd run just before it and one just after,
and the row's ratio is the median over its runs of ``time / mean(neighbouring raw runs)``, so machine
load that drifts during the benchmark (a shared CPU) cancels. "vs Captum" divides two such ratios.
Peak memory: ``torch.cuda.max_memory_allocated`` above the memory in use before the call on a GPU; on
the CPU, the rise of the process's resident set (the kernel's high-water mark, reset before the run,
after returning freed heap memory to the system). Spearman: per image, between the fast path's and the
fp32 path's saliency maps (``to_saliency_map``: max over channels of ``|a|``), the minimum over images;
also for the raw attributions. Captum/PAIR rows carry the same statistic against gradsal's fp32 result
(a check that all compute the same thing: near 1 for vanilla and IG, lower for SmoothGrad's other noise).

Output: a Markdown table on stdout (``--markdown`` also writes it to a file) and, with ``--json``, the
rows and the run's settings as JSON. Missing optional libraries are reported as rows, not skipped.

Other modes, each instead of the table:

- ``--paired-captum R``: gradsal SmoothGrad/IG (fp32 and fast) and Captum's, interleaved R times, for a
  precise gradsal/Captum ratio (the table's single long runs are only paired with raw autograd);
- ``--bf16-fidelity K --fidelity-only``: untimed Spearman of the bf16 fast-path configuration against
  fp32 on K images (``--models digits_cnn`` for the shipped trained CNN on its held-out digits);
- ``--memory-check S``: SmoothGrad(S) on 64 ResNet-50 inputs with ``batch_size="auto"``, peak memory.

Run: ``python benchmarks/run.py --device cpu --json /tmp/run_cpu.json``
     ``python benchmarks/run.py --device cuda --json /tmp/run_gpu.json``
     ``python benchmarks/run.py --device cuda --paired-captum 5``
     ``python benchmarks/run.py --device cuda --memory-check 200``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NOISE_LEVEL = 0.15


# ----------------------------------------------------------------------------- measurement
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


class Meter:
    """Times calls paired with raw-autograd runs and records their peak memory (see the module docstring)."""

    def __init__(self, device: str, raw: Callable[[], object]) -> None:
        import torch

        self.torch, self.device, self.raw = torch, device, raw
        self.raw_times: list[float] = []
        with contextlib.suppress(OSError, AttributeError):
            self.libc = ctypes.CDLL("libc.so.6")

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def seconds(self, fn: Callable[[], object]) -> tuple[float, object]:
        self.sync()
        start = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - start, result

    def raw_seconds(self) -> float:
        seconds, _ = self.seconds(self.raw)
        self.raw_times.append(seconds)
        return seconds

    def peak_start(self) -> int:
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        with contextlib.suppress(AttributeError):
            self.libc.malloc_trim(0)
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark (Linux)
        return _status_kib("VmRSS:") * 1024

    def peak_end(self, before: int) -> float:
        if self.device == "cuda":
            return (self.torch.cuda.max_memory_allocated() - before) / 2**20
        return max(0, _status_kib("VmHWM:") * 1024 - before) / 2**20

    def run(self, fn: Callable[[], object], repeats: int, warmup: int) -> dict[str, Any]:
        """Median seconds, paired ratio to raw autograd, peak MiB (first timed run) and the last result."""
        for _ in range(warmup):
            fn()
        times, ratios, peak, result = [], [], 0.0, None
        before_raw = self.raw_seconds()
        for i in range(repeats):
            if i == 0:
                start = self.peak_start()
            seconds, result = self.seconds(fn)
            if i == 0:
                peak = self.peak_end(start)
            after_raw = self.raw_seconds()
            times.append(seconds)
            ratios.append(seconds / ((before_raw + after_raw) / 2))
            before_raw = after_raw
        return {"seconds": float(np.median(times)), "vs_autograd": float(np.median(ratios)), "peak_mib": peak,
                "runs": len(times), "result": result}


# ----------------------------------------------------------------------------- fidelity
def captum_stdev(xt: Any) -> float:
    """Captum NoiseTunnel's one noise std for the batch: gradsal's per-image sigma (NOISE_LEVEL times the
    image's value range), averaged over the images."""
    return float(np.mean([NOISE_LEVEL * float(image.max() - image.min()) for image in xt]))


def fidelity(result: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Minimum over images of the Spearman correlation of saliency maps and of raw attributions."""
    import gradsal.core as gs

    result, reference = np.asarray(result, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    maps, ref_maps = gs.to_saliency_map(result), gs.to_saliency_map(reference)
    return {"spearman_map": min(gs.spearman_correlation(m, r) for m, r in zip(maps, ref_maps, strict=True)),
            "spearman_raw": min(gs.spearman_correlation(m, r) for m, r in zip(result, reference, strict=True))}


# ----------------------------------------------------------------------------- rows
def model_and_inputs(name: str, args: argparse.Namespace) -> tuple[Any, np.ndarray]:
    """An architecture builder's network (seeded random weights) on uniform random images, or, for
    ``digits_cnn``, the shipped trained digits CNN on its held-out test images (1x32x32)."""
    import torch

    from gradsal.reference_models import architectures, holdout_split, load_digits_cnn

    torch.manual_seed(0)
    batch = args.batch or (32 if args.device == "cuda" else 4)
    if name == "digits_cnn":
        images, _ = holdout_split("digits_cnn")
        batch = max(batch, args.bf16_fidelity) if args.fidelity_only else batch
        return load_digits_cnn().to(args.device), np.ascontiguousarray(images[:batch])
    module = getattr(architectures, name)().eval().to(args.device)
    return module, np.random.default_rng(0).random((batch, 3, args.size, args.size), dtype=np.float32)


def model_and_targets(name: str, args: argparse.Namespace) -> tuple:
    """The module and inputs, the inputs on the device, their top classes (tensor and NumPy), the batch
    size and the rows per backward pass (``--chunk``, else 8 batches on CUDA and 4 on the CPU)."""
    import torch

    module, x = model_and_inputs(name, args)
    batch = len(x)
    chunk = args.chunk or (8 if args.device == "cuda" else 4) * batch
    xt = torch.from_numpy(x).to(args.device)
    with torch.no_grad():
        target = module(xt).argmax(dim=1)
    return module, x, xt, target, target.cpu().numpy(), batch, chunk


def rows_for(name: str, args: argparse.Namespace) -> list[dict]:
    import torch

    import gradsal.core as gs
    from gradsal.backends.torch import TorchBackend

    device = args.device
    module, x, xt, target, target_np, _, chunk = model_and_targets(name, args)
    if args.fidelity_only:
        return bf16_fidelity_rows(name, module, x[:args.bf16_fidelity], target_np[:args.bf16_fidelity], args)
    n = args.samples
    fast_repeats, slow_repeats = args.repeats, args.slow_repeats
    slow_warmup = 1 if device == "cuda" else args.slow_warmup

    def raw_grad() -> object:
        xi = xt.clone().requires_grad_(True)
        out = module(xi)
        return torch.autograd.grad(out.gather(1, target[:, None]).sum(), xi)[0]

    meter = Meter(device, raw_grad)
    for _ in range(2):
        raw_grad()
    rows: list[dict] = []
    results: dict[str, np.ndarray] = {}

    def add(label: str, fn: Callable[[], object], slow: bool = False, key: str | None = None,
            reference: str | None = None, warmup: int | None = None) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = meter.run(fn, slow_repeats if slow else fast_repeats,
                                (slow_warmup if slow else 1) if warmup is None else warmup)
        except Exception as exc:  # one library failing must not hide the others' numbers
            rows.append({"model": name, "method": label, "error": f"{type(exc).__name__}: {exc}"[:200]})
            print(f"  {name}: {label}: {rows[-1]['error']}", flush=True)
            return
        result = row.pop("result")
        if isinstance(result, torch.Tensor):
            result = result.detach().float().cpu().numpy()
        if key is not None:
            results[key] = np.asarray(result)
        if reference is not None and reference in results and result is not None:
            row.update(fidelity(np.asarray(result), results[reference]))
        rows.append({"model": name, "method": label, **row})
        print(f"  {name}: {label}: {row['seconds'] * 1e3:.1f} ms, {row['vs_autograd']:.3f}x raw autograd", flush=True)

    def no_grad_forward() -> object:
        with torch.no_grad():
            return module(xt)

    add("forward only", no_grad_forward)
    add("raw torch.autograd.grad", raw_grad)

    def gradsal_rows(backend: Any, tag: str, fast: bool = False) -> None:
        """fp32 rows keep their results as the references ("vanilla fp32", ...); fast rows compare to them."""
        keep = (lambda method: None) if fast else (lambda method: f"{method} fp32")
        compare = (lambda method: f"{method} fp32") if fast else (lambda method: None)
        warm, slow_warm = (max(1, args.fast_warmup), args.fast_warmup) if fast else (None, None)
        add(f"gradsal vanilla ({tag})", lambda: gs.vanilla_gradient(backend, x, target_np, batch_size=chunk),
            key=keep("vanilla"), reference=compare("vanilla"), warmup=warm)
        add(f"gradsal SmoothGrad({n}) ({tag})", lambda: gs.smoothgrad(
            backend, x, target_np, n_samples=n, noise_level=NOISE_LEVEL, seed=0, batch_size=chunk), slow=True,
            key=keep("smoothgrad"), reference=compare("smoothgrad"), warmup=slow_warm)
        add(f"gradsal IG({n}) ({tag})", lambda: gs.integrated_gradients(
            backend, x, target_np, n_steps=n, batch_size=chunk), slow=True,
            key=keep("ig"), reference=compare("ig"), warmup=slow_warm)

    gradsal_rows(TorchBackend(module), "torch")
    if not args.no_fast:
        fast = TorchBackend(module, fast=True)
        with warnings.catch_warnings(record=True) as fell_back:
            warnings.simplefilter("always")
            gs.vanilla_gradient(fast, x, target_np)  # the first VJP runs the fidelity check: label what stays
        parts = [f"autocast {str(fast._amp_dtype).replace('torch.', '')}" if fast._amp_dtype else
                 ("fp32 (bf16 failed the fidelity check)" if any("fidelity" in str(w.message) for w in fell_back)
                  else "fp32"),
                 "channels-last" if fast._channels_last else "", "torch.compile" if fast._compiled else ""]
        gradsal_rows(fast, f"fast: {', '.join(p for p in parts if p)}", fast=True)
    if device == "cpu" and not args.no_onnx:
        add_onnx_rows(add, module, x, target_np, n, chunk, name)
    add_captum_rows(add, module, xt, target, n, chunk)
    add_pair_rows(add, module, x, target_np, n, chunk, device)
    for row in rows:
        row["raw_autograd_median_s"] = float(np.median(meter.raw_times))
    if args.bf16_fidelity:
        rows += bf16_fidelity_rows(name, module, x[:args.bf16_fidelity], target_np[:args.bf16_fidelity], args)
    return rows


def bf16_fidelity_rows(name: str, module: Any, x: np.ndarray, target: np.ndarray, args: argparse.Namespace) -> list:
    """Untimed: Spearman of the GPU fast path's bf16 configuration against fp32, wherever this runs.

    ``TorchBackend(module, fast=True, dtype=torch.bfloat16, compile=False)`` is the fast path a CUDA GPU
    with bf16 gets, less torch.compile (which changes kernels, not the bf16 rounding); on a CPU without
    bf16 hardware oneDNN emulates bf16, slowly, with the same number format. "bf16 everywhere" drops
    the float32 layers (``float32_layers=()``) to show what they are for.
    """
    import torch

    import gradsal.core as gs
    from gradsal.backends.torch import TorchBackend

    n = args.fidelity_samples
    methods = {
        "vanilla": lambda b: gs.vanilla_gradient(b, x, target),
        f"SmoothGrad({n})": lambda b: gs.smoothgrad(b, x, target, n_samples=n, noise_level=NOISE_LEVEL, seed=0),
        f"IG({n})": lambda b: gs.integrated_gradients(b, x, target, n_steps=n),
    }
    configs = {"bf16 fast config": dict(fast=True, dtype=torch.bfloat16, compile=False),
               "bf16 everywhere": dict(fast=True, dtype=torch.bfloat16, compile=False, float32_layers=())}
    rows = []
    for method, run in methods.items():
        reference = run(TorchBackend(module))
        for config, kwargs in configs.items():
            if config == "bf16 everywhere" and method != "vanilla":
                continue
            start = time.perf_counter()
            row = {"model": name, "method": f"gradsal {method}, {config}", "images": len(x),
                   **fidelity(run(TorchBackend(module, **kwargs)), reference)}
            rows.append({**row, "fidelity_only": True, "seconds_untimed": time.perf_counter() - start})
            print(f"  {name}: fidelity {row['method']}: map {row['spearman_map']:.4f}, raw {row['spearman_raw']:.4f}",
                  flush=True)
    return rows


def add_onnx_rows(add: Callable, module: Any, x: np.ndarray, target: np.ndarray, n: int, chunk: int,
                  name: str) -> None:
    import torch

    import gradsal.core as gs

    try:
        from gradsal.backends.onnx import OnnxBackend
    except ImportError as exc:
        add(f"gradsal ONNX backend unavailable ({exc})", _missing)
        return
    path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), opset_version=17, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    backend = OnnxBackend(str(path))
    # gradient graphs are built once per input shape: build the SmoothGrad/IG chunk shapes untimed
    total = len(x) * n
    for rows in sorted({min(chunk, total), total % chunk} - {0}):
        batch = np.resize(x, (rows, *x.shape[1:]))
        backend.vjp(batch, np.ones((rows, *backend.forward(batch[:1]).shape[1:]), dtype=np.float32))
    add("gradsal vanilla (onnx)", lambda: gs.vanilla_gradient(backend, x, target, batch_size=chunk),
        reference="vanilla fp32")
    add(f"gradsal SmoothGrad({n}) (onnx)", lambda: gs.smoothgrad(
        backend, x, target, n_samples=n, noise_level=NOISE_LEVEL, seed=0, batch_size=chunk), slow=True,
        reference="smoothgrad fp32")
    add(f"gradsal IG({n}) (onnx)", lambda: gs.integrated_gradients(backend, x, target, n_steps=n, batch_size=chunk),
        slow=True, reference="ig fp32")


def add_captum_rows(add: Callable, module: Any, xt: Any, target: Any, n: int, chunk: int) -> None:
    try:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    except ImportError:
        add("Captum (not installed: pip install 'gradsal[bench]')", _missing)
        return
    saliency = Saliency(module)
    per_pass = max(1, chunk // len(xt))  # noisy copies of the batch per backward pass
    add("Captum Saliency", lambda: saliency.attribute(xt, target=target, abs=False), reference="vanilla fp32")
    tunnel = NoiseTunnel(saliency)
    # Captum takes one noise scale per input tensor: the mean of gradsal's per-image 0.15 * (max - min)
    stdev = captum_stdev(xt)
    add(f"Captum NoiseTunnel({n})", lambda: tunnel.attribute(
        xt, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=per_pass, stdevs=stdev,
        target=target, abs=False), slow=True, reference="smoothgrad fp32")
    ig = IntegratedGradients(module)
    add(f"Captum IntegratedGradients({n})", lambda: ig.attribute(
        xt, target=target, n_steps=n, internal_batch_size=chunk), slow=True, reference="ig fp32")


def add_pair_rows(add: Callable, module: Any, x: np.ndarray, target: np.ndarray, n: int, chunk: int,
                  device: str) -> None:
    try:
        import saliency.core as pair
    except ImportError:
        add("PAIR saliency (not installed: pip install 'gradsal[bench]')", _missing)
        return
    import torch

    def call_model(images: np.ndarray, call_model_args: dict | None = None, expected_keys: Any = None) -> dict:
        batch = np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)), dtype=np.float32)  # PAIR sends float64
        batch_t = torch.from_numpy(batch).to(device).requires_grad_(True)
        out = module(batch_t)[:, call_model_args["target"]]
        grads = torch.autograd.grad(out.sum(), batch_t)[0]
        return {pair.base.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).cpu().numpy()}

    images = np.transpose(x, (0, 2, 3, 1))

    def per_image(method: Callable[..., np.ndarray], **kwargs: Any) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            maps = [method(image, call_model, {"target": int(t)}, **kwargs)
                    for image, t in zip(images, target, strict=True)]
            return np.transpose(np.stack(maps), (0, 3, 1, 2))
        return run

    gradient = pair.GradientSaliency()
    add("PAIR GradientSaliency", per_image(gradient.GetMask), reference="vanilla fp32")
    add(f"PAIR GetSmoothedMask({n})", per_image(gradient.GetSmoothedMask, nsamples=n, stdev_spread=NOISE_LEVEL,
                                                magnitude=False), slow=True, reference="smoothgrad fp32")
    ig = pair.IntegratedGradients()
    add(f"PAIR IntegratedGradients({n})", per_image(
        ig.GetMask, x_steps=n, x_baseline=np.zeros_like(images[0]), batch_size=min(n, chunk)), slow=True,
        reference="ig fp32")


def _missing() -> None:
    raise ImportError("not installed")


def paired_captum(name: str, args: argparse.Namespace) -> list[dict]:
    """gradsal's SmoothGrad/IG (fp32 and fast) against Captum's, runs interleaved, ``--paired-captum`` times.

    The single runs of the main table are too long to pair with anything but raw autograd; here each
    repeat runs gradsal, gradsal fast and Captum back to back (same chunking, samples, noise scale), and
    the ratio is the median over repeats of ``gradsal time / Captum time`` of the same repeat.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    import gradsal.core as gs
    from gradsal.backends.torch import TorchBackend

    device, n = args.device, args.samples
    module, x, xt, target, target_np, batch, chunk = model_and_targets(name, args)
    plain, fast = TorchBackend(module), TorchBackend(module, fast=True)
    stdev = captum_stdev(xt)
    tunnel, ig = NoiseTunnel(Saliency(module)), IntegratedGradients(module)
    cases = {
        f"SmoothGrad({n})": {
            "gradsal": lambda b: gs.smoothgrad(b, x, target_np, n_samples=n, noise_level=NOISE_LEVEL, seed=0,
                                               batch_size=chunk),
            "captum": lambda: tunnel.attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=stdev, target=target,
                                               nt_samples_batch_size=max(1, chunk // batch), abs=False)},
        f"IG({n})": {
            "gradsal": lambda b: gs.integrated_gradients(b, x, target_np, n_steps=n, batch_size=chunk),
            "captum": lambda: ig.attribute(xt, target=target, n_steps=n, internal_batch_size=chunk)},
    }
    meter = Meter(device, lambda: None)
    rows = []
    for method, case in cases.items():
        fns = {"gradsal fp32": lambda case=case: case["gradsal"](plain),
               "gradsal fast": lambda case=case: case["gradsal"](fast), "Captum": case["captum"]}
        for fn in fns.values():
            fn()  # warm-up (and compilation for the fast path on CUDA)
        times: dict[str, list[float]] = {label: [] for label in fns}
        for _ in range(args.paired_captum):
            for label, fn in fns.items():
                times[label].append(meter.seconds(fn)[0])
        captum = np.array(times["Captum"])
        for label in ("gradsal fp32", "gradsal fast"):
            ratios = np.array(times[label]) / captum
            rows.append({"model": name, "method": f"{label} {method}", "repeats": args.paired_captum,
                         "seconds": float(np.median(times[label])), "captum_seconds": float(np.median(captum)),
                         "vs_captum": float(np.median(ratios)), "vs_captum_min": float(ratios.min()),
                         "vs_captum_max": float(ratios.max()), "ratios": ratios.tolist(), "times": times[label],
                         "captum_times": times["Captum"]})
            print(f"  {name}: {rows[-1]['method']}: {rows[-1]['vs_captum']:.3f}x Captum "
                  f"(runs {ratios.min():.3f}..{ratios.max():.3f})", flush=True)
    return rows


def memory_check(args: argparse.Namespace) -> dict[str, Any]:
    """SmoothGrad on a batch of 64 ResNet-50 inputs through ``TorchBackend(batch_size="auto")``: peak memory
    (``--memory-check-chunks none``: ``batch_size=None``, each core chunk sent whole, for comparison).

    On CUDA the backend's budget is 80% of 80 GiB (an 80 GB card, whatever this one has) and the core's
    host budget 8 GiB, so chunks are large; on the CPU both use the default memory budget and the peak is
    the process's maximum resident set. Memory does not grow with the number of samples (the chunks are
    the same), so a CPU check may use fewer samples than the 200 of the issue.
    """
    import resource

    import torch

    import gradsal.core as gs
    from gradsal.backends.torch import TorchBackend
    from gradsal.core.batching import default_batch_size
    from gradsal.reference_models import architectures

    cuda = args.device == "cuda"
    torch.manual_seed(0)
    module = architectures.resnet50().eval().to(args.device)
    x = np.random.default_rng(0).random((64, 3, args.size, args.size), dtype=np.float32)
    auto = args.memory_check_chunks == "auto"
    backend = TorchBackend(module, batch_size="auto" if auto else None,
                           memory_budget=int(0.8 * 80 * 2**30) if cuda and auto else None)
    with gs.memory_budget(8 * 2**30 if cuda else gs.get_memory_budget()):
        rows = backend.auto_batch_size(x) if auto else None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        gs.smoothgrad(backend, x, 0, n_samples=args.memory_check, seed=0)
        seconds = time.perf_counter() - start
        core_rows = default_batch_size(x[0].nbytes)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": "resnet50", "batch": 64, "n_samples": args.memory_check, "device": args.device,
            "backend_batch_size": args.memory_check_chunks, "auto_rows": rows, "core_chunk_rows": core_rows,
            "seconds": seconds,
            "peak_mib": peak / 2**20, "peak_kind": "cuda max_memory_allocated" if cuda else "process max RSS"}


# ----------------------------------------------------------------------------- report
COUNTERPARTS = {"vanilla": "Captum Saliency", "SmoothGrad": "Captum NoiseTunnel", "IG": "Captum IntegratedGradients"}


def add_captum_ratios(rows: list[dict]) -> None:
    """``vs_captum``: a gradsal row's time over Captum's for the same method and model (ratios to raw autograd)."""
    for row in rows:
        if "vs_autograd" not in row or not row["method"].startswith("gradsal"):
            continue
        for method, captum in COUNTERPARTS.items():
            if row["method"].startswith(f"gradsal {method}"):
                other = next((r for r in rows if r["model"] == row["model"] and r["method"].startswith(captum)
                              and "vs_autograd" in r), None)
                if other:
                    row["vs_captum"] = row["vs_autograd"] / other["vs_autograd"]


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | median time | vs raw autograd | vs Captum | peak memory | Spearman map / raw |",
             "|---|---|---:|---:|---:|---:|---|"]
    fidelity_lines = []
    for r in rows:
        if r.get("fidelity_only"):
            fidelity_lines.append(f"| {r['model']} | {r['method']} | {r['images']} | {r['spearman_map']:.4f} | "
                                  f"{r['spearman_raw']:.4f} |")
            continue
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['error']} | - | - | - | - |")
            continue
        captum = f"{r['vs_captum']:.2f}x" if "vs_captum" in r else ""
        rho = f"{r['spearman_map']:.4f} / {r['spearman_raw']:.4f}" if "spearman_map" in r else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['seconds'] * 1e3:.1f} ms | {r['vs_autograd']:.2f}x | "
                     f"{captum} | {r['peak_mib']:.0f} MiB | {rho} |")
    if len(lines) == 2:  # no timed rows (--fidelity-only)
        lines = []
    if fidelity_lines:
        lines += ["", "| model | fidelity (untimed) | images | Spearman map (min) | Spearman raw (min) |",
                  "|---|---|---:|---:|---:|", *fidelity_lines]
    return "\n".join(lines).strip("\n")


def environment(args: argparse.Namespace) -> dict[str, str]:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("onnxruntime", "captum", "saliency", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "gpu": gpu, "threads": str(torch.get_num_threads()),
            **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"],
                        help="builders in gradsal.reference_models.architectures")
    parser.add_argument("--batch", type=int, help="default: 4 on CPU, 32 on GPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples and IG steps")
    parser.add_argument("--chunk", type=int, help="rows per backward pass (default: 4 batches on CPU, 8 on GPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the forward and vanilla rows")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed runs of the SmoothGrad/IG rows")
    parser.add_argument("--slow-warmup", type=int, default=0,
                        help="untimed SmoothGrad/IG runs first on CPU (the vanilla rows already warm the kernels; "
                             "always 1 on GPU)")
    parser.add_argument("--fast-warmup", type=int, default=1, help="untimed runs of each fast-path row (compiles)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--no-fast", action="store_true")
    parser.add_argument("--bf16-fidelity", type=int, default=0, metavar="IMAGES",
                        help="also compute, untimed, the Spearman of the bf16 fast-path configuration against fp32 "
                             "on the first IMAGES images (emulated, slow, on a CPU without bf16)")
    parser.add_argument("--fidelity-samples", type=int, default=10, help="SmoothGrad/IG samples for --bf16-fidelity")
    parser.add_argument("--fidelity-only", action="store_true", help="only the --bf16-fidelity rows, no timings")
    parser.add_argument("--paired-captum", type=int, default=0, metavar="REPEATS",
                        help="only: gradsal SmoothGrad/IG vs Captum's, interleaved REPEATS times (precise ratios)")
    parser.add_argument("--memory-check", type=int, default=0, metavar="SAMPLES",
                        help="only: SmoothGrad(SAMPLES) on 64 ResNet-50 inputs with batch_size='auto'; peak memory")
    parser.add_argument("--memory-check-chunks", choices=["auto", "none"], default="auto",
                        help="TorchBackend batch_size for --memory-check: 'auto', or 'none' (the core's chunks whole)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if args.fidelity_only and not args.bf16_fidelity:
        parser.error("--fidelity-only needs --bf16-fidelity IMAGES")
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    env = environment(args)
    print("; ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    if args.paired_captum:
        rows = [row for name in args.models for row in paired_captum(name, args)]
        lines = ["| model | method | median time | Captum median | vs Captum (median) | range over repeats |",
                 "|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['model']} | {r['method']} | {r['seconds']:.2f} s | {r['captum_seconds']:.2f} s | "
                  f"{r['vs_captum']:.3f}x | {r['vs_captum_min']:.3f}..{r['vs_captum_max']:.3f} |" for r in rows]
        print("\n".join(lines))
        if args.markdown:
            Path(args.markdown).write_text("\n".join(lines) + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps({"environment": env, "settings": vars(args), "rows": rows},
                                                  indent=2))
        return
    if args.memory_check:
        report = {"environment": env, **memory_check(args)}
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return
    rows = [row for name in args.models for row in rows_for(name, args)]
    add_captum_ratios(rows)
    table = markdown(rows)
    print(f"median of {args.repeats} runs ({args.slow_repeats} for SmoothGrad/IG rows), {args.samples} samples/steps")
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
        Path(args.json).write_text(json.dumps({"environment": env, "settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
