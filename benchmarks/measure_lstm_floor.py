"""How fast could any exact gradient graph of ``ocr_lstm`` be, given its parts? Lower bounds, measured.

``ocr_lstm`` (``bench_onnx``): two Conv-ReLU-MaxPool stages, then two stacked bidirectional LSTM layers.
Its VJP's cost beyond the matrix products sits in two places: the max-pool adjoints (a mask of each
window's maximum over the full-size input, a tie check, the ReLU's mask) and the LSTM's adjoint recurrence
(stepped: about ten small nodes a step for both directions, 32 steps a layer). This script times,
interleaved against the plain onnxruntime forward (``bench_onnx``'s session options and timer), four VJP
graphs that differ only in those rules:

- ``exact``: gradsal's own rules;
- ``pools free``: every MaxPool's VJP a bare nearest upsampling of its cotangent and every Relu's VJP the
  identity. Wrong on purpose: an exact rule must at least upsample the cotangent, so no exact max-pool
  adjoint can beat this graph;
- ``recurrence free``: every LSTM's gate cotangents dz = [dY, dY, dY, dY] M taken at once for all steps,
  with no stepped recurrence (the gate recomputation, M and the products for dx kept). Wrong too: the
  floor of any way of stepping the recurrence;
- ``both free``: both replacements.

Each round gives each graph's fastest run over the forward's fastest run in that round; the table shows
the median ratio over the rounds and its interquartile range. The script restores gradsal's rules before
it returns. Run: ``python benchmarks/measure_lstm_floor.py [--batch 4] [--threads 1] [--rounds 9]
[--repeats 10]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_onnx import export, quartile_cells, replaced_vjps, rounds_against_forward, session_options

VARIANTS = ("exact", "pools free", "recurrence free", "both free")


def upsampled_cotangent(ctx, node, grads):
    """A MaxPool's cotangent repeated over each window (nearest upsampling): the least an adjoint does."""
    from gradsal.backends.onnx.rules import pooling

    kernel = [axis.kernel for axis in pooling._pool_axes(ctx, node)]
    scales = ctx.const(np.array([1.0, 1.0, *kernel], dtype=np.float32))
    up = ctx.emit1("Resize", [grads[0], ctx.const(np.zeros(0, np.float32)), scales], mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    ctx.record(up, node.input[0])
    return [up]


def passed_through(ctx, node, grads):
    return [grads[0]]


def unstepped_lstm(ctx, node, grads):
    """dz = [dY, dY, dY, dY] M for every step at once (no recurrence), then dx as the rule computes it."""
    from gradsal.backends.onnx.rules import lstm

    cell = lstm._Lstm(ctx, node)
    cell.primal()
    dy = cell.to_steps(grads[0], cell.hidden)
    dz = ctx.emit1("Mul", [ctx.emit1("Concat", [dy] * 4, axis=3), cell.m])
    result = [None] * len(node.input)
    result[0] = cell.x_grad(cell.reshape(dz, (cell.directions, cell.steps * cell.batch, 4 * cell.hidden)))
    return result


def gradient_graphs(model, shape) -> dict[str, object]:
    from gradsal.backends.onnx._graph import build_gradient_model

    def build():
        return build_gradient_model(model, shape, input_name="input", output_name="logits")

    pools = {"MaxPool": upsampled_cotangent, "Relu": passed_through}
    recurrence = {"LSTM": unstepped_lstm}
    graphs = {"exact": build()}
    for name, replacements in (("pools free", pools), ("recurrence free", recurrence),
                               ("both free", {**pools, **recurrence})):
        with replaced_vjps(replacements):
            graphs[name] = build()
    return graphs


def measure(batch: int, threads: int, rounds: int, repeats: int, folder: Path) -> tuple[float, np.ndarray]:
    """The forward's median time in ms, and each round's ratio of each variant to the forward."""
    import onnx

    _, x, path = export("ocr_lstm", batch, folder)
    graphs = list(gradient_graphs(onnx.load(str(path)), x.shape).values())
    return rounds_against_forward(path, x, graphs, session_options(threads), rounds, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each graph per round")
    args = parser.parse_args()
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; ocr_lstm, batch {args.batch}, {args.threads} thread(s); median "
          f"(interquartile range) over {args.rounds} rounds of the fastest of {args.repeats} interleaved runs")
    print("")
    print(f"| forward ms | {' | '.join(f'{v} / forward' for v in VARIANTS)} |")
    print("|---|" + "---|" * len(VARIANTS))
    with tempfile.TemporaryDirectory() as tmp:
        forward_ms, ratios = measure(args.batch, args.threads, args.rounds, args.repeats, Path(tmp))
    print(f"| {forward_ms:.2f} | {quartile_cells(ratios)} |")


if __name__ == "__main__":
    main()
