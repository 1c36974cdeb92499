"""How fast could any VJP rule for one activation make the gradient graph? A lower bound, measured.

For each model it times, interleaved against the plain onnxruntime forward (``bench_onnx``'s session
options and timer), four VJP graphs that differ only in the rule used for one operator (``--op``):

- ``exact``: gradsal's own rule;
- ``times x``: the cotangent multiplied once by the operator's input, ``g * x``. This is wrong on
  purpose. Every exact rule for HardSwish must read ``x`` (the derivative jumps at -3 and 3 and is
  negative on (-3, -1.5)), and needs at least that one multiply, so no exact rule can beat this graph;
- ``recomputed x``: ``g * x'`` where ``x'`` is a second copy of the Conv that produced ``x`` (where one
  did, with a copy of its weight), so that the forward keeps the Conv and the activation fused as in the
  plain forward: the floor of an exact rule that recomputes ``x`` instead of keeping it;
- ``times y``: ``g * y``, reading only the output, which also keeps the forward fused. Wrong too: the
  floor of a rule that never reads ``x``, which exists for ReLU6 (a box mask of ``y``) but not for
  HardSwish, which is not invertible on (-3, 0).

The four graphs and the forward take turns (``bench_onnx.interleaved_min_ms``) for ``--rounds`` rounds;
each round gives each graph's fastest run over the forward's fastest run in that round, and the table
shows the median ratio over the rounds and its interquartile range: on a shared 2-vCPU machine single
runs swing by up to 1.5x, paired rounds much less. With two threads, five sessions taking turns leave
their thread pools spinning into each other's runs; ``--no-spinning`` turns spinning off in every
session, the forward's included. The script restores gradsal's rule before it returns.
Run: ``python benchmarks/measure_activation_floor.py [--models small_mobilenet] [--batches 1 4 16]
[--threads 1 2] [--op HardSwish] [--rounds 15] [--repeats 9] [--no-spinning]``
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_onnx
from bench_onnx import export, quartile_cells, replaced_vjps, rounds_against_forward

VARIANTS = ("exact", "times x", "recomputed x", "times y")
SPINNING = {"allowed": True}


def session_options(threads: int):
    """``bench_onnx``'s session options, without thread-pool spinning where ``--no-spinning`` asks."""
    options = bench_onnx.session_options(threads)
    if not SPINNING["allowed"]:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@contextlib.contextmanager
def single_multiply_rule(op_type: str, operand: str, model=None) -> Iterator[None]:
    """Replace ``op_type``'s VJP by ``g * x`` (operand "x"), ``g * y`` ("y") or ``g * x'`` with ``x'`` a
    copy of the Conv of ``model`` that produced ``x`` ("recomputed"); restore the rule on exit."""
    import onnx

    producers = {out: node for node in (model.graph.node if model else []) for out in node.output}

    def multiply_once(ctx, node, grads):
        factor = node.output[0] if operand == "y" else node.input[0]
        conv = producers.get(factor)
        if operand == "recomputed" and conv is not None and conv.op_type == "Conv":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
            # a copy of the weight, or onnxruntime merges the two Convs back into one
            weight = ctx.value(conv.input[1])
            copy = conv.input[1] if weight is None else ctx.const(weight.copy())
            inputs = [conv.input[0], copy, *conv.input[2:]]
            factor = ctx.emit1("Conv", inputs, **attrs)
        return [ctx.emit1("Mul", [grads[0], factor])] + [None] * (len(node.input) - 1)

    with replaced_vjps({op_type: multiply_once}, {op_type: (0,)}):
        yield


def gradient_graphs(model, shape, op_type: str) -> dict[str, object]:
    from gradsal.backends.onnx._graph import build_gradient_model

    def build():
        return build_gradient_model(model, shape, input_name="input", output_name="logits")

    graphs = {"exact": build()}
    for name, operand in (("times x", "x"), ("recomputed x", "recomputed"), ("times y", "y")):
        with single_multiply_rule(op_type, operand, model):
            graphs[name] = build()
    return graphs


def measure(name: str, batch: int, threads: int, op_type: str, rounds: int, repeats: int,
            folder: Path) -> tuple[float, np.ndarray]:
    """The forward's median time in ms, and each round's ratio of each variant to the forward
    (rounds x variants)."""
    import onnx

    _, x, path = export(name, batch, folder)
    model = onnx.load(str(path))
    if op_type not in {node.op_type for node in model.graph.node}:
        raise SystemExit(f"{name} has no {op_type} node; pick --op from its operators.")
    graphs = list(gradient_graphs(model, x.shape, op_type).values())
    return rounds_against_forward(path, x, graphs, session_options(threads), rounds, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small_mobilenet"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--op", default="HardSwish", help="the operator whose rule is replaced")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each graph per round")
    parser.add_argument("--no-spinning", action="store_true", help="no thread-pool spinning in any session")
    args = parser.parse_args()
    SPINNING["allowed"] = not args.no_spinning
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; {args.op}'s rule replaced; median (interquartile range) over "
          f"{args.rounds} rounds of the fastest of {args.repeats} interleaved runs"
          f"{'; no thread-pool spinning' if args.no_spinning else ''}")
    print("")
    print(f"| model | batch | threads | forward ms | {' | '.join(f'{v} / forward' for v in VARIANTS)} |")
    print("|---|---|---|---|" + "---|" * len(VARIANTS))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batches:
                for threads in args.threads:
                    forward_ms, ratios = measure(name, batch, threads, args.op, args.rounds, args.repeats,
                                                 Path(tmp))
                    print(f"| {name} | {batch} | {threads} | {forward_ms:.2f} | {quartile_cells(ratios)} |",
                          flush=True)


if __name__ == "__main__":
    main()
