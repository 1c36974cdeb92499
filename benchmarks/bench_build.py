"""Gradient-graph build time against model size (the target: under 2 s for a 1,000-node model, then cached).

The model is a stack of transformer-style encoder layers exported from torch at opset 17: hand-written
layer norms (ReduceMean, Sub, Pow, Add, Sqrt, Div, Mul, Add), single-head attention (MatMul, Transpose,
Softmax) and a GELU MLP, over a short sequence, so that building, not probing, dominates. For each depth it
prints the node count, the time of the first ``OnnxBackend.vjp`` call at a new input shape (probe, rules,
checker and session creation together), the graph build alone (``build_gradient_model``), a second call
at the same shape (the cache), and the cost of the VJP call itself.

Run: ``python benchmarks/bench_build.py [--layers 6 12 24] [--threads 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def encoder(layers: int, width: int = 64):
    """A torch encoder of ``layers`` layers on (N, T, width) sequences."""
    import torch
    from torch import nn

    from gradsal.reference_models.architectures import ManualLayerNorm

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = ManualLayerNorm(width), ManualLayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)
            self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            attention = torch.softmax(q @ k.transpose(1, 2) / width ** 0.5, dim=-1)
            x = x + self.out(attention @ v)
            return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*[Layer() for _ in range(layers)])
            self.head = nn.Linear(width, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.layers(x).mean(dim=1))

    torch.manual_seed(0)
    return Encoder().eval()


def export(layers: int, folder: Path, steps: int = 16, width: int = 64) -> tuple[Path, np.ndarray]:
    import torch

    module = encoder(layers, width)
    x = torch.rand(1, steps, width)
    path = folder / f"encoder_{layers}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), str(path), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return path, x.numpy()


def measure(layers: int, threads: int, folder: Path) -> dict:
    import onnx
    import onnxruntime as ort

    from gradsal.backends.onnx import OnnxBackend
    from gradsal.backends.onnx._graph import build_gradient_model

    path, x = export(layers, folder)
    model = onnx.load(str(path))
    x = np.repeat(x, 4, axis=0)
    cotangent = np.eye(10, dtype=np.float32)[np.arange(len(x)) % 10]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    backend = OnnxBackend(str(path), session_options=options)
    start = time.perf_counter()
    backend.vjp(x, cotangent)
    first = time.perf_counter() - start
    start = time.perf_counter()
    backend.vjp(x, cotangent)
    second = time.perf_counter() - start
    start = time.perf_counter()
    built = build_gradient_model(model, x.shape, input_name="input", output_name="logits")
    build = time.perf_counter() - start
    return {"layers": layers, "nodes": len(model.graph.node), "gradient_nodes": len(built.model.graph.node),
            "build_s": build, "first_call_s": first, "cached_call_s": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(layers, args.threads, Path(tmp)) for layers in args.layers]
    print("| layers | model nodes | gradient-graph nodes | build_gradient_model | first vjp (build + session) "
          "| second vjp (cached) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['nodes']} | {r['gradient_nodes']} | {r['build_s']:.2f} s | "
              f"{r['first_call_s']:.2f} s | {1e3 * r['cached_call_s']:.1f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
