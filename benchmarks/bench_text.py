"""Integrated gradients at the embedding of the shipped text classifier: gradsal (torch and ONNX) vs Captum.

Captum's ``LayerIntegratedGradients`` at ``net.embedding`` is the baseline, measured in the same run,
interleaved with gradsal's ``integrated_gradients`` on ``at_tensor(net, ids)`` (a forward hook on the
embedding) and on ``at_tensor(model.onnx, ...)`` (the graph cut at the ``Gather`` output): one sentence,
50 Gauss-Legendre points, the pad-token baseline, float32. Prints the median times and the ratios, and
the agreement of the attributions (max difference over the largest Captum value).

Run: ``python benchmarks/bench_text.py [--repeats 7]`` (needs the torch and onnx extras and Captum).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import torch
    from captum.attr import LayerIntegratedGradients

    import gradsal.core as gs
    from gradsal.backends import at_tensor
    from gradsal.reference_models import load_text_classifier
    from gradsal.reference_models.train_text import SAMPLE_SENTENCES, encode, vocabulary

    ids = encode(SAMPLE_SENTENCES[:1], vocabulary())
    net = load_text_classifier("torch")
    layer_ig = LayerIntegratedGradients(net, net.embedding)
    backends = {"gradsal torch": at_tensor(net, ids),
                "gradsal onnx": at_tensor(load_text_classifier("onnx"), {"input_ids": ids})}

    def ours(at: object) -> np.ndarray:
        return gs.integrated_gradients(at, at.value, target=1, baseline=at.baseline(token_id=0), n_steps=50)

    def captum() -> np.ndarray:
        return layer_ig.attribute(torch.from_numpy(ids), baselines=torch.zeros_like(torch.from_numpy(ids)),
                                  target=1, n_steps=50, method="gausslegendre").detach().numpy()

    runs = {name: (lambda at=at: ours(at)) for name, at in backends.items()}
    runs["captum"] = captum
    reference = captum()
    for name, run in runs.items():
        result = run()
        print(f"{name}: agreement with Captum {np.abs(result - reference).max() / np.abs(reference).max():.1e}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(5):
                run()
            times[name].append((time.perf_counter() - start) / 5)
    base = float(np.median(times["captum"]))
    for name, values in times.items():
        print(f"{name}: {np.median(values) * 1e3:.2f} ms, {np.median(values) / base:.2f}x Captum")


if __name__ == "__main__":
    main()
