"""onnxruntime's CPU cost of the spellings of a 0/1 mask and of a select that rules/forms.py chooses between.

One process, one thread, 1.6 M float32 values (1 x 64 x 160 x 160); the variants take turns for
``--rounds`` rounds and each keeps its fastest run. Printed as a Markdown table, each row also as a ratio
to ``Mul(g, Cast(x > 0))`` (the plain mask) measured in the same run.

Run: ``python benchmarks/measure_mask_forms.py [--rounds 15]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPE = (1, 64, 160, 160)


def session(nodes: list, initializers: list):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(SHAPE)) for name in ("x", "g")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "mask", inputs, [output], initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def variants() -> dict:
    from onnx import TensorProto, helper

    node = helper.make_node
    zero = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    positive = node("Greater", ["x", "zero"], ["c"])
    as_float = node("Cast", ["c"], ["m"], to=TensorProto.FLOAT)
    return {
        "Mul(g, Cast(x > 0))": session([positive, as_float, node("Mul", ["g", "m"], ["y"])], zero),
        "Mul(g, HardSigmoid(x; alpha=1e30)) (forms.step)": session(
            [node("HardSigmoid", ["x"], ["m"], alpha=1e30, beta=0.0), node("Mul", ["g", "m"], ["y"])], []),
        "Mul(g, Sign(x))": session([node("Sign", ["x"], ["m"]), node("Mul", ["g", "m"], ["y"])], []),
        "Where(x > 0, g, 0)": session([positive, node("Where", ["c", "g", "zero"], ["y"])], zero),
        "Where(x > 0, g, x)": session([positive, node("Where", ["c", "g", "x"], ["y"])], zero),
        "x + Cast(x > 0) (g - x) (forms.select)": session(
            [positive, as_float, node("Sub", ["g", "x"], ["d"]), node("Mul", ["m", "d"], ["p"]),
             node("Add", ["x", "p"], ["y"])], zero),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(SHAPE).astype(np.float32) for name in ("x", "g")}
    sessions = variants()
    fastest = dict.fromkeys(sessions, np.inf)
    for _ in range(args.rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    baseline = fastest["Mul(g, Cast(x > 0))"]
    print("| spelling | fastest | vs `Mul(g, Cast(x > 0))` |\n|---|---|---|")
    for name, seconds in fastest.items():
        print(f"| `{name}` | {seconds * 1e3:.2f} ms | {seconds / baseline:.2f}x |")


if __name__ == "__main__":
    main()
