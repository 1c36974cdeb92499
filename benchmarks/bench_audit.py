"""``gradsal audit`` throughput (local engine, Ray with 1 and 2 workers) and peak memory against data-set size.

The data: random 32x32 grey PNG images with a random 10x10 square as the region mask and another as the
forbidden mask; the model: the shipped digits CNN (ONNX, 32x32 -> 10); the method: vanilla gradient.

- Throughput: each engine (the local one, Ray Data with 1 and 2 actors) audits the first n images for
  each n in ``--images``, in this process, and must give the same rows as the local engine. Each run is
  timed whole, the fastest of ``--repeats`` (for Ray, starting the actors, each of which builds its own
  backend, is inside the time; ``ray.init(num_cpus=2)`` is not); the marginal rate
  ``(n2 - n1) / (t2 - t1)`` between the smallest and the largest n cancels the start-up. Ratios are
  against the local engine measured in the same run.
- Memory: a fresh Python process audits ``--memory-sizes`` images with the local engine and reports its
  peak resident set (``ru_maxrss``) and the peak of Python's own allocations during the audit
  (``tracemalloc``); flat means the same at 100 and at 2,000 images.

Run: ``python benchmarks/bench_audit.py [--images 200 2000] [--repeats 2] [--memory-sizes 100 2000] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MEMORY_SCRIPT = """
import json, resource, sys, tracemalloc
from gradsal.cli.main import main
tracemalloc.start()
status = main(sys.argv[1:])
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"status": status, "python_peak": peak,
                  "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def make_dataset(root: Path, count: int, seed: int = 0) -> dict[str, Path]:
    """``count`` random images with their region and forbidden masks under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = {name: root / name for name in ("images", "masks", "forbidden")}
    for folder in paths.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"im{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(paths["images"] / name)
        for folder in ("masks", "forbidden"):
            mask = np.zeros((32, 32), dtype=np.uint8)
            top, left = rng.integers(0, 22, size=2)
            mask[top:top + 10, left:left + 10] = 255
            Image.fromarray(mask).save(paths[folder] / name)
    return paths


def audit_command(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    from gradsal.reference_models import zoo

    return ["audit", str(zoo.data_path("digits_cnn.onnx")), str(paths["images"]), "--masks", str(paths["masks"]),
            "--forbidden", str(paths["forbidden"]), "--method", "vanilla", "--quiet", "--out", str(out), *extra]


def timed(rows: Iterator[tuple[dict, bytes]]) -> tuple[float, list[str]]:
    """Seconds for the whole run and the rows as JSON lines, sorted."""
    from gradsal.cli.audit import row_to_json

    start = time.perf_counter()
    lines = sorted(row_to_json(row) for row, _ in rows)
    return time.perf_counter() - start, lines


def throughput(paths: dict[str, Path], sizes: list[int], skip_ray: bool, repeats: int) -> dict[str, list[float]]:
    """Seconds per engine for the first ``n`` images, each ``n`` in ``sizes`` (the fastest of ``repeats``
    runs); the engines' rows must agree."""
    from gradsal.cli.audit_pipeline import AuditSettings, audit_locally, plan_audit
    from gradsal.reference_models import zoo

    settings = AuditSettings(model=str(zoo.data_path("digits_cnn.onnx")), method="vanilla")
    items = plan_audit([str(paths["images"])], str(paths["masks"]), str(paths["forbidden"]))
    seconds: dict[str, list[float]] = {"local": []}
    local = {}
    for n in sizes:
        runs = [timed(audit_locally(settings, items[:n])) for _ in range(repeats)]
        local[n] = runs[0][1]
        seconds["local"].append(min(elapsed for elapsed, _ in runs))
    if skip_ray:
        return seconds
    import ray

    from gradsal.scale import audit_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            name = f"ray, {workers} worker{'s' if workers > 1 else ''}"
            seconds[name] = []
            for n in sizes:
                runs = [timed(audit_with_ray(settings, items[:n], workers=workers)) for _ in range(repeats)]
                for _, rows in runs:
                    assert rows == local[n], f"Ray with {workers} workers gave other rows than the local engine"
                seconds[name].append(min(elapsed for elapsed, _ in runs))
    finally:
        ray.shutdown()
    return seconds


def memory(count: int, root: Path) -> dict[str, float]:
    paths = make_dataset(root / f"mem{count}", count, seed=1)
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *audit_command(paths, root / f"mem{count}-out")],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200, 2000],
                        help="data-set sizes for the throughput runs (default 200 2000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine and size; the fastest counts")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = make_dataset(root / "data", max(args.images))
        sizes = sorted(args.images)
        seconds = throughput(paths, sizes, args.skip_ray, args.repeats)
        print("\nThroughput on 32x32 images (digits CNN, vanilla gradient; every engine gave the same rows):\n")
        heads = " | ".join(f"{n} images" for n in sizes)
        print(f"| engine | {heads} | marginal images/s ({sizes[0]} to {sizes[-1]}) | vs local |")
        print("|---|" + "---|" * (len(sizes) + 2))
        base = (sizes[-1] - sizes[0]) / (seconds["local"][-1] - seconds["local"][0])
        for name, times in seconds.items():
            marginal = (sizes[-1] - sizes[0]) / (times[-1] - times[0])
            cells = " | ".join(f"{t:.1f} s ({n / t:.0f}/s)" for n, t in zip(sizes, times, strict=True))
            print(f"| {name} | {cells} | {marginal:.0f} | {marginal / base:.2f}x |")
        print("\nPeak memory of the local engine (a fresh process each):\n")
        print("| images | peak RSS | peak Python allocations (tracemalloc) |\n|---|---|---|")
        for count in args.memory_sizes:
            used = memory(count, root)
            print(f"| {count:,} | {used['max_rss'] / 2**20:.1f} MiB | {used['python_peak'] / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
