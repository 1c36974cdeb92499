"""The randomisation test's SSIM column, recomputed from scratch for every step and sample.

Maps by hand (max over channels of |J^T v|, the hand-derived gradient of ``RandomizableMLP``), min-max
normalised, and SSIM (Wang et al. 2004) by an explicit loop over window positions: local weighted
means, variances and covariance, C1 = 0.01^2, C2 = 0.03^2 (maps in [0, 1]), averaged over every
position where the 11x11 window fits. Nothing is shared with ``gradsal.core.sanity``'s vectorised form.
"""

from __future__ import annotations

import numpy as np
import pytest
from sanity_models import Blobs, RandomizableMLP

from gradsal.core.sanity import model_randomization_test

SIZE, TARGET = 12, 1


def window(kind: str, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size) - size // 2
    line = np.exp(-offsets**2 / (2 * sigma**2)) if kind == "gaussian" else np.ones(size)
    square = np.outer(line, line)
    return square / square.sum()


def ssim_by_loop(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> float:
    c1, c2 = 0.01**2, 0.03**2
    k = len(weights)
    values = []
    for i in range(a.shape[0] - k + 1):
        for j in range(a.shape[1] - k + 1):
            pa, pb = a[i:i + k, j:j + k], b[i:i + k, j:j + k]
            mu_a, mu_b = (weights * pa).sum(), (weights * pb).sum()
            var_a = (weights * (pa - mu_a) ** 2).sum()
            var_b = (weights * (pb - mu_b) ** 2).sum()
            cov = (weights * (pa - mu_a) * (pb - mu_b)).sum()
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def normalised_map(mlp: RandomizableMLP, x: np.ndarray) -> np.ndarray:
    cotangent = np.tile(np.eye(3)[TARGET], (len(x), 1))
    maps = np.abs(mlp.vjp(x, cotangent)[1]).max(axis=1)
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_ssim_of_each_step_is_that_of_the_original_and_randomised_maps(mode: str, kind: str) -> None:
    x = Blobs.make(3, SIZE).images
    mlp = RandomizableMLP.random(SIZE * SIZE, seed=0)
    layers = ["dense2", "dense1"]
    result = model_randomization_test(mlp, x, "vanilla_gradient", TARGET, layers=layers, mode=mode, seed=5,
                                      window=kind)
    original = normalised_map(mlp, x)
    for index, step in enumerate(result.steps):
        chosen = layers[:index + 1] if mode == "cascading" else [layers[index]]
        randomized = normalised_map(mlp.randomized(chosen, 5), x)
        expected = [ssim_by_loop(a, b, window(kind)) for a, b in zip(original, randomized, strict=True)]
        np.testing.assert_allclose(step.ssim, expected, rtol=1e-10, atol=1e-12)
        assert max(expected) < 0.9  # the maps differ: an SSIM of a map with itself (1) cannot pass
        assert step.mean_ssim == pytest.approx(np.mean(expected), abs=1e-12)
