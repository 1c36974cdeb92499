"""NumPy models for the sanity and faithfulness tests, each with its gradient derived by hand.

- ``QuadrantNet``: ``f(x) = W2 tanh(W1 q(x)) + b`` where ``q(x)`` is the top-left quadrant of every
  channel, flattened; the rest of the image provably cannot change the output.
  ``J^T v = q^T(W1^T ((1 - tanh^2(W1 q)) * (W2^T v)))``, zero outside the quadrant.
- ``affine_backend``: ``f(x) = flat(x) A + c`` (``J^T v = v A^T``).
- ``RandomizableMLP``: ``f(x) = tanh(flat(x) W1) W2`` with layers ``"dense1"`` and ``"dense2"`` and
  ``randomized(layers, seed)``, a pure-NumPy implementation of ``SupportsRandomization``.
- ``edge_explanation``: an "explanation" that ignores the model: gradient magnitude of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradsal.backends.numpy import FunctionBackend


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


@dataclass
class QuadrantNet:
    W1: np.ndarray  # (C * H/2 * W/2, hidden)
    W2: np.ndarray  # (hidden, classes)
    b: np.ndarray  # (classes,)
    shape: tuple[int, int, int]  # (C, H, W) of one input

    @classmethod
    def random(cls, shape: tuple[int, int, int], hidden: int = 8, classes: int = 4, seed: int = 0) -> QuadrantNet:
        rng = np.random.default_rng(seed)
        channels, height, width = shape
        inputs = channels * (height // 2) * (width // 2)
        return cls(rng.normal(size=(inputs, hidden)) / np.sqrt(inputs), rng.normal(size=(hidden, classes)),
                   rng.normal(size=classes), shape)

    def quadrant(self, x: np.ndarray) -> np.ndarray:
        _, height, width = self.shape
        return flat(x[:, :, :height // 2, :width // 2])

    def f(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(self.quadrant(x) @ self.W1) @ self.W2 + self.b

    def grad(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        _, height, width = self.shape
        hidden = np.tanh(self.quadrant(x) @ self.W1)
        inner = ((1 - hidden**2) * (v @ self.W2.T)) @ self.W1.T
        out = np.zeros(x.shape)
        out[:, :, :height // 2, :width // 2] = inner.reshape(len(x), x.shape[1], height // 2, width // 2)
        return out

    def backend(self) -> FunctionBackend:
        return FunctionBackend(self.f, grad=self.grad)


def quadrant_mask(shape: tuple[int, ...]) -> np.ndarray:
    """True on the top-left quadrant of arrays shaped ``(..., H, W)``."""
    mask = np.zeros(shape, dtype=bool)
    mask[..., :shape[-2] // 2, :shape[-1] // 2] = True
    return mask


def affine_backend(A: np.ndarray, c: np.ndarray) -> FunctionBackend:
    return FunctionBackend(lambda x: flat(x) @ A + c, grad=lambda x, v: (v @ A.T).reshape(x.shape))


class RandomizableMLP:
    """``tanh(flat(x) W1) W2``; ``randomized`` redraws the named layers' weights (same scale), seeded."""

    LAYERS = ("dense2", "dense1")  # output to input

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights

    @classmethod
    def random(cls, inputs: int, hidden: int = 16, classes: int = 3, seed: int = 0) -> RandomizableMLP:
        rng = np.random.default_rng(seed)
        return cls({"dense1": rng.normal(size=(inputs, hidden)) / np.sqrt(inputs),
                    "dense2": rng.normal(size=(hidden, classes)) / np.sqrt(hidden)})

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(flat(x) @ self.weights["dense1"]) @ self.weights["dense2"]

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = np.tanh(flat(x) @ self.weights["dense1"])
        grad = ((1 - hidden**2) * (cotangent @ self.weights["dense2"].T)) @ self.weights["dense1"].T
        return hidden @ self.weights["dense2"], grad.reshape(x.shape)

    def randomized(self, layers: Sequence[str], seed: int) -> RandomizableMLP:
        rng = np.random.default_rng(seed)
        weights = dict(self.weights)
        for name in layers:
            if name not in weights:
                raise KeyError(name)
            weights[name] = rng.normal(size=weights[name].shape) * weights[name].std()
        return RandomizableMLP(weights)


def edge_explanation(backend: object, x: np.ndarray, target: object) -> np.ndarray:
    """|d x / d row| + |d x / d column| of the input: looks like a saliency map, ignores the model."""
    rows = np.abs(np.diff(x, axis=-2, append=x[..., -1:, :]))
    columns = np.abs(np.diff(x, axis=-1, append=x[..., :, -1:]))
    return rows + columns


@dataclass(frozen=True)
class Blobs:
    """Images with a bright blob on a dark background, so that an edge map has structure."""

    images: np.ndarray

    @classmethod
    def make(cls, n: int, size: int, seed: int = 0) -> Blobs:
        rng = np.random.default_rng(seed)
        rows, columns = np.mgrid[:size, :size]
        images = []
        for _ in range(n):
            centre = rng.uniform(size / 4, 3 * size / 4, size=2)
            radius = rng.uniform(size / 8, size / 4)
            blob = ((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2).astype(float)
            images.append(blob + 0.05 * rng.random((size, size)))
        return cls(np.stack(images)[:, None])


__all__ = ["Blobs", "QuadrantNet", "RandomizableMLP", "affine_backend", "edge_explanation", "flat",
           "quadrant_mask"]
