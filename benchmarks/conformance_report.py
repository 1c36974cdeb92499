"""Per-operator pass counts of gradsal's ONNX backend on ONNX's node conformance tests.

Runs the checks of ``tests/onnx/conformance.py`` (forward against onnxruntime, VJP against finite
differences, JVP against VJP, caller's arrays unchanged) on every node test whose operators gradsal
supports, and prints one row per operator; ``--failures`` also lists what failed and why.

    GRADSAL_CORPUS_DIR=/path/to/corpus python benchmarks/conformance_report.py [--slice] [--failures]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "onnx"), str(TESTS)]

from conformance import check_test, report, representative, supported_tests  # noqa: E402
from corpus import NODE_TESTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slice", action="store_true", help="one test per operator (the default test run's)")
    parser.add_argument("--failures", action="store_true", help="list every failed pair with the reason")
    parser.add_argument("--match", default="", help="only tests whose folder name contains this")
    args = parser.parse_args()
    if not NODE_TESTS.is_dir():
        sys.exit(f"ONNX node tests absent ({NODE_TESTS}): run ../shared/tools/fetch-onnx-node-tests")
    tests = [t for t in supported_tests(NODE_TESTS) if args.match in t.name]
    if args.slice:
        tests = representative(tests)
    results = [result for folder in tests for result in check_test(folder)]
    print(report(results))
    if args.failures:
        for result in results:
            if not result.ok:
                print(f"{result.test} [{result.input} -> {result.output}] {result.status}: {result.detail[:400]}")
            elif result.status == "refused":
                print(f"{result.test} [{result.input} -> {result.output}] refused: {result.detail[:200]}")


if __name__ == "__main__":
    main()
