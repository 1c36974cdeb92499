"""Time the ways gradsal can express a Conv's input gradient (and a MaxPool's) in onnxruntime.

For each layer of the table in /work/shared/measurements/README.md (batch 4) it builds the one-Conv model,
asks gradsal's rules for the VJP graph under each strategy (``with correlation.forced(conv=...)``, see
``backends/onnx/rules/correlation.py``), keeps only the gradient part (input: the cotangent, output: the
input gradient) and times it against the forward Conv, with the same session options (ORT_ENABLE_ALL,
``--threads`` intra-op threads). Every variant is checked against the ConvTranspose one before it is
timed, and the strategy gradsal chooses for the layer is marked with a star. Strategies:

- ``conv``: one stride-1 Conv with the kernel flipped and channels swapped per group; a strided layer
  first gets zeros inserted between cotangent entries (a one-channel one-hot ConvTranspose over N*C
  images);
- ``convtranspose``: ConvTranspose with the layer's weight.

(A third variant, splitting a strided layer's input positions into stride phases, one Conv over all
phases and a Transpose interleaving them, lost on every layer to onnxruntime's slow fine-grained Transpose
and was dropped; BENCHMARKS.md has its numbers.)

Then the MaxPool adjoint (gradsal's: MaxPool with Indices, then MaxUnpool for disjoint float32 windows or
one ScatterElements, ``reduction="add"`` when windows overlap at opset 16+, per-phase scatters before),
against an equality mask (``x == upsampled y``; comparison only: correct only without ties and for
disjoint windows); the AveragePool adjoint under both window-sum strategies; and the Resize adjoint
(nearest x2: Reshape + ReduceSum; linear: interpolation-matrix MatMuls).

Run: ``python benchmarks/measure_conv_grad.py [--threads 1] [--repeats 15] [--skip-pool | --skip-conv]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

BATCH = 4
# label, in channels, out channels, kernel, stride, input size, groups
LAYERS = [
    ("stem 3x3 s2, 3->16, 224", 3, 16, 3, 2, 224, 1),
    ("pointwise 1x1, 16->64, 112", 16, 64, 1, 1, 112, 1),
    ("depthwise 3x3 s1, C=96, 56", 96, 96, 3, 1, 56, 96),
    ("depthwise 3x3 s2, C=96, 112", 96, 96, 3, 2, 112, 96),
    ("regular 3x3, 64->64, 56", 64, 64, 3, 1, 56, 1),
    ("stem 7x7 s2, 3->64, 224", 3, 64, 7, 2, 224, 1),
    ("downsample 1x1 s2, 64->128, 56", 64, 128, 1, 2, 56, 1),
    ("regular 3x3 s2, 64->128, 56", 64, 128, 3, 2, 56, 1),
    ("grouped 3x3 g=8, 64->64, 56", 64, 64, 3, 1, 56, 8),
    ("grouped 3x3 s2 g=8, 64->64, 56", 64, 64, 3, 2, 56, 8),
    ("depthwise 5x5 s2, C=96, 56", 96, 96, 5, 2, 56, 96),
]
STRATEGIES = ("conv", "convtranspose")


def quartile_ms(fn: Callable[[], object], repeats: int) -> float:
    """25th percentile of the run times in ms: on a shared machine the lower quartile is the stable one."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.percentile(times, 25))


def session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def one_node_model(node, x: np.ndarray, initializers: dict[str, np.ndarray], opset: int = 17):
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_empty_tensor_value_info(name) for name in node.output if name][:1],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def gradient_only(model, x_shape):
    """gradsal's VJP graph of ``model`` with the forward part removed (cotangent in, gradient out)."""
    import onnx
    from onnx import helper

    from gradsal.backends.onnx._graph import build_gradient_model

    built = build_gradient_model(model, x_shape, input_name="x", output_name=model.graph.output[0].name)
    graph = built.model.graph
    needed, keep = {built.result_name}, []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    keep.reverse()
    inputs = [vi for vi in graph.input if vi.name in needed]
    outputs = [vo for vo in graph.output if vo.name == built.result_name]
    inits = [init for init in graph.initializer if init.name in needed]
    new = helper.make_graph(keep, "gradient", inputs, outputs, inits)
    result = helper.make_model(new, opset_imports=list(built.model.opset_import))
    result.ir_version = built.model.ir_version
    onnx.checker.check_model(result)
    return result, [vi.name for vi in inputs]


def measure_convs(threads: int, repeats: int) -> None:
    from onnx import helper

    from gradsal.backends.onnx.rules import correlation
    from gradsal.backends.onnx.rules.windows import Axis

    rng = np.random.default_rng(0)
    print(f"Conv input gradient, batch {BATCH}, {threads} thread(s), 25th percentile of {repeats} runs "
          "(ms; ratio to the forward Conv; * gradsal's choice)")
    print(f"{'layer':34s} {'forward':>8s} " + " ".join(f"{s:>21s}" for s in STRATEGIES))
    for label, cin, cout, k, s, size, groups in LAYERS:
        x = rng.standard_normal((BATCH, cin, size, size)).astype(np.float32)
        w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                pads=[k // 2] * 4, group=groups)
        model = one_node_model(node, x, {"W": w})
        forward = session(model, threads)
        y = forward.run(None, {"x": x})[0]
        g = rng.standard_normal(y.shape).astype(np.float32)
        t_forward = quartile_ms(lambda: forward.run(None, {"x": x}), repeats)  # noqa: B023
        axes = [Axis(size, y.shape[2], k, s, 1, k // 2)] * 2
        chosen = correlation.measured_conv_strategy(axes, groups, cin, groups > 1 and cin == groups)
        cells, reference = {}, None
        for strategy in ("convtranspose", "conv"):
            with correlation.forced(conv=strategy):
                grad_model, names = gradient_only(model, x.shape)
            sess = session(grad_model, threads)
            feeds = {name: g for name in names}
            gx = sess.run(None, feeds)[0]
            if reference is None:
                reference = gx
            error = float(np.abs(gx - reference).max() / np.abs(reference).max())
            assert error < 1e-4, (label, strategy, error)
            t = quartile_ms(lambda: sess.run(None, feeds), repeats)  # noqa: B023
            cells[strategy] = f"{t:7.2f} ({t / t_forward:4.2f}x){'*' if strategy == chosen else ' '}"
        print(f"{label:34s} {t_forward:8.2f} " + " ".join(f"{cells[s]:>21s}" for s in STRATEGIES))


def maxpool_mask_graph(x_shape, y_shape, k: int):
    """Comparison only: g * (x == nearest-upsampled y), for non-overlapping k x k windows (ties: all win)."""
    from onnx import helper, numpy_helper

    n, c = x_shape[:2]
    _, _, oh, ow = y_shape
    up, full = [n, c, oh, 1, ow, 1], [n, c, oh, k, ow, k]
    nodes = [
        helper.make_node("Reshape", ["y", "up"], ["y6"]),
        helper.make_node("Expand", ["y6", "full"], ["y6e"]),
        helper.make_node("Reshape", ["y6e", "xs"], ["yx"]),
        helper.make_node("Equal", ["x", "yx"], ["eq"]),
        helper.make_node("Reshape", ["g", "up"], ["g6"]),
        helper.make_node("Expand", ["g6", "full"], ["g6e"]),
        helper.make_node("Reshape", ["g6e", "xs"], ["gx_all"]),
        helper.make_node("Where", ["eq", "gx_all", "zero"], ["gx"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), name)
             for name, v in (("up", up), ("full", full), ("xs", list(x_shape)))]
    inits.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"))
    info = helper.make_tensor_value_info
    f32 = helper.np_dtype_to_tensor_dtype(np.dtype(np.float32))
    graph = helper.make_graph(
        nodes, "mask", [info("x", f32, list(x_shape)), info("y", f32, list(y_shape)), info("g", f32, list(y_shape))],
        [info("gx", f32, list(x_shape))], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def time_gradient(model, x: np.ndarray, threads: int, repeats: int, rng) -> tuple[float, float]:
    """(forward ms, gradient-only ms) of a one-node model."""
    forward = session(model, threads)
    y = forward.run(None, {"x": x})[0]
    g = rng.standard_normal(y.shape).astype(np.float32)
    t_forward = quartile_ms(lambda: forward.run(None, {"x": x}), repeats)
    grad_model, names = gradient_only(model, x.shape)
    sess = session(grad_model, threads)
    feeds = {name: (x if name == "x" else g) for name in names}
    return t_forward, quartile_ms(lambda: sess.run(None, feeds), repeats)


def measure_maxpool(threads: int, repeats: int) -> None:
    from onnx import helper

    rng = np.random.default_rng(1)
    print(f"\nMaxPool input gradient, batch {BATCH} (ms; ratio to the forward MaxPool)")
    cases = [("3x3 s2 p1, C=64, 112", 64, 112, 3, 2, 1), ("2x2 s2, C=64, 56", 64, 56, 2, 2, 0)]
    for label, channels, size, k, s, p in cases:
        x = rng.permutation(BATCH * channels * size * size).astype(np.float32).reshape(BATCH, channels, size, size)
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        row = []
        for opset in (17, 13):
            t_forward, t = time_gradient(one_node_model(node, x, {}, opset=opset), x, threads, repeats, rng)
            row.append(f"scatter, opset {opset}: {t:6.2f} ({t / t_forward:4.2f}x)")
        if k == s:
            forward = session(one_node_model(node, x, {}), threads)
            y = forward.run(None, {"x": x})[0]
            mask = session(maxpool_mask_graph(x.shape, y.shape, k), threads)
            feeds = {"x": x, "y": y, "g": rng.standard_normal(y.shape).astype(np.float32)}
            t = quartile_ms(lambda: mask.run(None, feeds), repeats)  # noqa: B023
            row.append(f"equality mask: {t:6.2f} ({t / t_forward:4.2f}x)")
        print(f"{label:22s} forward {t_forward:5.2f} | " + " | ".join(row))


def measure_average_pool_and_resize(threads: int, repeats: int) -> None:
    from onnx import helper

    from gradsal.backends.onnx.rules import correlation

    rng = np.random.default_rng(2)
    print(f"\nAveragePool (window-sum adjoint strategies) / Resize input gradient, batch {BATCH} "
          "(ms; ratio to the forward)")
    pools = [("avgpool 2x2 s2, C=64, 56", 64, 56, 2, 2, 0), ("avgpool 3x3 s1 p1, C=64, 56", 64, 56, 3, 1, 1),
             ("avgpool 3x3 s2 p1, C=64, 56", 64, 56, 3, 2, 1)]
    for label, channels, size, k, s, p in pools:
        x = rng.standard_normal((BATCH, channels, size, size)).astype(np.float32)
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        row = []
        for strategy in ("transpose", "conv"):
            with correlation.forced(window_sum=strategy):
                t_forward, t = time_gradient(one_node_model(node, x, {}), x, threads, repeats, rng)
            row.append(f"{strategy}: {t:6.2f} ({t / t_forward:4.2f}x)")
        print(f"{label:36s} forward {t_forward:6.2f} | " + " | ".join(row))
    resizes = [("nearest x2, C=64, 28 -> 56", "nearest", 64, 28), ("linear x2, C=64, 28 -> 56", "linear", 64, 28),
               ("linear x2, C=16, 112 -> 224", "linear", 16, 112)]
    for label, mode, channels, size in resizes:
        x = rng.standard_normal((BATCH, channels, size, size)).astype(np.float32)
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)
        model = one_node_model(node, x, {"scales": np.array([1, 1, 2, 2], np.float32)})
        t_forward, t = time_gradient(model, x, threads, repeats, rng)
        print(f"{label:36s} forward {t_forward:6.2f} | gradient {t:6.2f} ({t / t_forward:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-pool", action="store_true", help="only the Conv table")
    parser.add_argument("--skip-conv", action="store_true", help="only the pooling/resize tables")
    args = parser.parse_args()
    if not args.skip_conv:
        measure_convs(args.threads, args.repeats)
    if not args.skip_pool:
        measure_maxpool(args.threads, args.repeats)
        measure_average_pool_and_resize(args.threads, args.repeats)


if __name__ == "__main__":
    main()
