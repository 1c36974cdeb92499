"""TorchBackend overhead: gradsal's gradients against the same work written by hand with torch.autograd.

One run, one model, one batch; each row is the median of ``--repeats`` timed runs (interleaved with its
baseline, so drifting load on a shared machine hits both alike), its ratio (the median over repeats of
the ratio to the baseline run beside it), and its peak memory (``torch.cuda.max_memory_allocated`` on a
GPU; on the CPU, peak RSS above the pre-run RSS from the kernel's high-water mark, reset before each
measurement):

- raw ``torch.autograd.grad`` of the one-hot class score w.r.t. the input, parameters frozen (the same
  work the backend does) and, for reference, with parameters requiring grad (typical user code);
- ``TorchBackend.vjp`` and gradsal's ``vanilla_gradient`` (target given): ratio to raw autograd; and the
  one-row forward pass that ``vanilla_gradient`` runs first to learn the output shape (gradsal.core's
  target resolution), which is most of the difference between the two;
- gradsal's ``smoothgrad`` (50 samples) and ``integrated_gradients`` (50 steps, riemann_middle): ratio to a
  hand-written batched autograd loop over the same rows in chunks of the same size (noise drawn with
  NumPy as gradsal's core does, and also with ``torch.randn`` on the device for reference).

Targets: vanilla <= 1.05x raw autograd; SmoothGrad/IG <= 1.05x the hand loop. If gradsal.core's methods
are not importable, the SmoothGrad/IG rows time the same loops driven through ``TorchBackend.vjp``.

Run: ``python benchmarks/bench_torch.py --model small --batch 8 --device cpu --repeats 10``
     ``python benchmarks/bench_torch.py --model resnet50 --batch 4 --device cpu --threads 2 --samples 10``
     ``python benchmarks/bench_torch.py --model resnet50 --batch 32 --device cuda --dtype bf16``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradsal.backends.torch import TorchBackend

N_SAMPLES = 50
NOISE_LEVEL = 0.15


class SmallCNN(nn.Module):
    """A ResNet-flavoured CNN for 32x32 inputs: conv-BN-ReLU stem, one residual block, pooling, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                   nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(x))
        return self.head(torch.relu(x + self.block(x)))


def build_model(name: str) -> tuple[nn.Module, tuple[int, int, int], str]:
    if name == "resnet50":
        try:
            from gradsal.reference_models.architectures import resnet50

            return resnet50(num_classes=1000), (3, 224, 224), "reference_models.resnet50"
        except ImportError as exc:
            print(f"note: gradsal.reference_models.architectures.resnet50 unavailable ({exc}); "
                  "using the small CNN at 224x224 instead")
            return SmallCNN(1000), (3, 224, 224), "SmallCNN(1000) @224 (resnet50 fallback)"
    return SmallCNN(10), (3, 32, 32), "SmallCNN(10) @32"


# ----------------------------------------------------------------------------- measurement
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: list[Callable[[], object]], repeats: int, device: torch.device,
                      warmup: int = 2) -> list[np.ndarray]:
    """Seconds per run of each function, runs interleaved (a, b, a, b, ...) after ``warmup`` runs each.

    Interleaving pairs each run with its baselines under the same machine load, so the median of the
    per-repeat ratios (:func:`paired_ratio`) is robust to load that drifts during the benchmark.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            bucket.append(time.perf_counter() - start)
    return [np.array(t) for t in times]


def paired_ratio(times: np.ndarray, baseline: np.ndarray) -> float:
    """Median over repeats of ``time / baseline time`` of the same repeat."""
    return float(np.median(times / baseline))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def exact_cpu_memory_accounting(trim_only: bool = False) -> None:
    """Make RSS follow live memory: glibc then maps every block over 128 KiB on its own and unmaps it on
    free, and freed heap memory is returned, instead of staying resident for reuse (which would hide a
    call's peak). Called after the timings, as it makes allocation slower."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        if not trim_only:
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call above what was in use before it."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    exact_cpu_memory_accounting(trim_only=True)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark (Linux)
    before = _rss_kib("VmRSS:")
    fn()
    return max(0, _rss_kib("VmHWM:") - before) / 1024


# ----------------------------------------------------------------------------- hand-written baselines
class Hand:
    """The same computations as gradsal's methods, written directly with torch.autograd."""

    def __init__(self, model: nn.Module, device: torch.device, amp: torch.dtype | None) -> None:
        self.model, self.device, self.amp = model, device, amp

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def grad(self, xt: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        xt = xt.detach().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            out = self.model(xt)
            cotangent = torch.zeros_like(out).scatter_(1, classes[:, None], 1.0)
            (grad,) = torch.autograd.grad(out, xt, cotangent)
        return grad.float()

    def vanilla(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x).to(self.device)
        return self.grad(xt, torch.from_numpy(classes).to(self.device)).cpu().numpy()

    def _rows(self, x: np.ndarray, classes: np.ndarray, n: int, chunk: int,
              make: Callable[[torch.Tensor, int, int], torch.Tensor], weights: np.ndarray) -> torch.Tensor:
        """sum_s weights[s] * grad(make(x, s)), for s = 0..n-1, in chunks of whole copies of the batch."""
        xt = torch.from_numpy(x).to(self.device)
        classes_t = torch.from_numpy(classes).to(self.device)
        copies = max(1, chunk // len(x))
        total = torch.zeros_like(xt, dtype=torch.float32)
        for start in range(0, n, copies):
            stop = min(n, start + copies)
            grads = self.grad(make(xt, start, stop), classes_t.repeat(stop - start))
            w = torch.as_tensor(weights[start:stop], device=self.device, dtype=torch.float32)
            total += (grads.view(stop - start, *xt.shape) * w.view(-1, *[1] * xt.ndim)).sum(0)
        return total

    def smoothgrad(self, x: np.ndarray, classes: np.ndarray, chunk: int, numpy_noise: bool) -> np.ndarray:
        sigma = NOISE_LEVEL * (x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1))
        sigma_t = torch.from_numpy(sigma.astype(x.dtype)).to(self.device).view(1, -1, *[1] * (x.ndim - 1))
        rng = np.random.default_rng(0)

        def noisy(xt: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            shape = (stop - start, *xt.shape)
            if numpy_noise:
                noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(self.device)
            else:
                noise = torch.randn(shape, device=self.device)
            return (xt[None] + sigma_t * noise).flatten(0, 1)

        weights = np.full(N_SAMPLES, 1.0 / N_SAMPLES)
        return self._rows(x, classes, N_SAMPLES, chunk, noisy, weights).cpu().numpy()

    def integrated_gradients(self, x: np.ndarray, classes: np.ndarray, chunk: int) -> np.ndarray:
        alphas = (np.arange(N_SAMPLES) + 0.5) / N_SAMPLES  # riemann_middle, baseline 0

        def path(xt: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            a = torch.as_tensor(alphas[start:stop], device=self.device, dtype=xt.dtype)
            return (a.view(-1, *[1] * xt.ndim) * xt[None]).flatten(0, 1)

        weights = np.full(N_SAMPLES, 1.0 / N_SAMPLES)
        total = self._rows(x, classes, N_SAMPLES, chunk, path, weights)
        return (torch.from_numpy(x).to(self.device) * total).cpu().numpy()


# ----------------------------------------------------------------------------- gradsal side
def gradsal_methods(backend: TorchBackend, chunk: int) -> tuple[dict[str, Callable], str]:
    """gradsal's vanilla/SmoothGrad/IG as (x, classes) -> attributions; backend-only loops without core."""
    try:
        from gradsal.core import integrated_gradients, smoothgrad, vanilla_gradient
    except ImportError:
        return backend_loops(backend, chunk), "gradsal.core methods missing: backend.vjp loops"
    return {
        "vanilla": lambda x, c: vanilla_gradient(backend, x, c, batch_size=len(x)),
        "smoothgrad": lambda x, c: smoothgrad(backend, x, c, n_samples=N_SAMPLES, noise_level=NOISE_LEVEL,
                                              seed=0, batch_size=chunk),
        "ig": lambda x, c: integrated_gradients(backend, x, c, n_steps=N_SAMPLES, method="riemann_middle",
                                                batch_size=chunk),
    }, "gradsal.core methods"


def backend_loops(backend: TorchBackend, chunk: int) -> dict[str, Callable]:
    def onehot(classes: np.ndarray, n_classes: int) -> np.ndarray:
        return np.eye(n_classes, dtype=np.float32)[classes]

    def rows(x: np.ndarray, classes: np.ndarray, make: Callable[[int, int], np.ndarray]) -> np.ndarray:
        copies = max(1, chunk // len(x))
        n_classes = backend.forward(x[:1]).shape[1]
        total = np.zeros_like(x)
        for start in range(0, N_SAMPLES, copies):
            stop = min(N_SAMPLES, start + copies)
            cot = onehot(np.tile(classes, stop - start), n_classes)
            grads = backend.vjp(make(start, stop), cot)[1]
            total += grads.reshape(stop - start, *x.shape).sum(0) / N_SAMPLES
        return total

    def smooth(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(0)
        sigma = NOISE_LEVEL * (x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1))
        sigma = sigma.reshape(1, -1, *[1] * (x.ndim - 1)).astype(x.dtype)
        return rows(x, classes, lambda a, b: (x[None] + sigma * rng.standard_normal(
            (b - a, *x.shape), dtype=np.float32)).reshape(-1, *x.shape[1:]))

    def ig(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        alphas = ((np.arange(N_SAMPLES) + 0.5) / N_SAMPLES).astype(x.dtype)
        return x * rows(x, classes, lambda a, b: (alphas[a:b].reshape(-1, *[1] * x.ndim) * x[None]).reshape(
            -1, *x.shape[1:]))

    return {"vanilla": lambda x, c: backend.vjp(x, onehot(c, backend.forward(x[:1]).shape[1]))[1],
            "smoothgrad": smooth, "ig": ig}


# ----------------------------------------------------------------------------- main
def main() -> None:
    global N_SAMPLES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["small", "resnet50"], default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=None,
                        help="rows per SmoothGrad/IG backward pass (default: 400 small; resnet50: 64 on GPU, "
                             "4 batches on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each function first")
    parser.add_argument("--slow-repeats", type=int, default=None,
                        help="timed runs of the SmoothGrad/IG rows (default: max(3, repeats // 2))")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--samples", type=int, default=N_SAMPLES,
                        help="SmoothGrad samples and IG steps (default 50; fewer for a ResNet-50 on a CPU)")
    args = parser.parse_args()
    N_SAMPLES = args.samples
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    chunk = args.chunk or (400 if args.model == "small" else 64 if device.type == "cuda" else 4 * args.batch)

    torch.manual_seed(0)
    model, in_shape, label = build_model(args.model)
    model = model.to(device).eval()
    x = np.random.default_rng(0).normal(size=(args.batch, *in_shape)).astype(np.float32)
    classes = np.arange(args.batch, dtype=np.int64) % 10
    hand = Hand(model, device, amp)
    backend = TorchBackend(model, dtype=amp)
    methods, source = gradsal_methods(backend, chunk)
    cot = np.eye(backend.forward(x[:1]).shape[1], dtype=np.float32)[classes]

    print(f"bench_torch: {label}, batch {args.batch}, {args.device} ({args.dtype}), chunk {chunk} rows, "
          f"{args.repeats} repeats, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; gradsal side: {source}")
    rows: list[tuple[str, Callable[[], object], np.ndarray, np.ndarray | None, str]] = []

    def raw_frozen() -> object:
        with contextlib.ExitStack() as stack:
            params = [p for p in model.parameters() if p.requires_grad]
            for p in params:
                p.requires_grad_(False)
            stack.callback(lambda: [p.requires_grad_(True) for p in params])
            return hand.vanilla(x, classes)

    def raw_typical() -> object:
        return hand.vanilla(x, classes)

    def backend_vjp() -> object:
        return backend.vjp(x, cot)

    def vanilla() -> object:
        return methods["vanilla"](x, classes)

    def probe() -> object:  # what gradsal.core's target resolution runs before the gradient: one row's forward
        return backend.forward(x[:1])

    raw_t, typical_t, vjp_t, vanilla_t, probe_t = interleaved_times(
        [raw_frozen, raw_typical, backend_vjp, vanilla, probe], args.repeats, device, args.warmup)
    rows += [("raw autograd.grad (params frozen)", raw_frozen, raw_t, None, ""),
             ("raw autograd.grad (params requiring grad)", raw_typical, typical_t, raw_t, "raw (frozen)"),
             ("TorchBackend.vjp", backend_vjp, vjp_t, raw_t, "raw (frozen)"),
             ("gradsal vanilla_gradient", vanilla, vanilla_t, raw_t, "raw (frozen)"),
             ("  of which: target probe forward(x[:1])", probe, probe_t, raw_t, "raw (frozen)")]

    slow_repeats = args.slow_repeats or max(3, args.repeats // 2)
    smooth = lambda: methods["smoothgrad"](x, classes)  # noqa: E731
    hand_np = lambda: hand.smoothgrad(x, classes, chunk, numpy_noise=True)  # noqa: E731
    hand_t = lambda: hand.smoothgrad(x, classes, chunk, numpy_noise=False)  # noqa: E731
    ours_s, np_s, t_s = interleaved_times([smooth, hand_np, hand_t], slow_repeats, device, args.warmup)
    rows += [(f"hand SmoothGrad({N_SAMPLES}) loop, NumPy noise", hand_np, np_s, None, ""),
             (f"hand SmoothGrad({N_SAMPLES}) loop, torch.randn noise", hand_t, t_s, None, ""),
             (f"gradsal smoothgrad({N_SAMPLES})", smooth, ours_s, np_s, "hand (NumPy noise)"),
             (f"gradsal smoothgrad({N_SAMPLES})", smooth, ours_s, t_s, "hand (torch.randn noise)")]

    ig = lambda: methods["ig"](x, classes)  # noqa: E731
    hand_ig = lambda: hand.integrated_gradients(x, classes, chunk)  # noqa: E731
    ours_ig, hand_ig_s = interleaved_times([ig, hand_ig], slow_repeats, device, args.warmup)
    rows += [(f"hand IG({N_SAMPLES}) loop", hand_ig, hand_ig_s, None, ""),
             (f"gradsal integrated_gradients({N_SAMPLES})", ig, ours_ig, hand_ig_s, "hand IG loop")]

    if device.type == "cpu":
        exact_cpu_memory_accounting()
    print(f"{'row':<44}{'median ms':>11}{'ratio':>10}{'peak MiB':>10}  baseline")
    records = []
    for name, fn, seconds, base, base_name in rows:
        ratio = paired_ratio(seconds, base) if base is not None else None
        median_ms = 1e3 * float(np.median(seconds))
        peak = peak_memory_mib(fn, device)
        shown = f"{ratio:9.3f}x" if ratio is not None else " " * 10
        print(f"{name:<44}{median_ms:>11.2f}{shown}{peak:>10.1f}  {base_name}", flush=True)
        records.append({"row": name, "median_ms": median_ms, "ratio": ratio, "baseline": base_name or None,
                        "peak_mib": peak, "runs": len(seconds)})
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        Path(args.json).write_text(json.dumps({"model": label, "settings": settings, "chunk": chunk,
                                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "gradsal_side": source, "rows": records}, indent=2))


if __name__ == "__main__":
    main()
