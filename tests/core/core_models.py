"""Closed-form NumPy models for the core tests, each with its gradient derived by hand.

- linear      f(x) = x W + c                         J^T v = v W^T
- quadratic   f(x)_k = 1/2 x^T A_k x  (A_k symmetric)  J^T v = sum_k v_k A_k x
- mlp         f(x) = softplus(tanh(x W1 + b1) W2 + b2)
              J^T v = ((1 - tanh^2(z1)) * ((sigmoid(z2) * v) W2^T)) W1^T   (softplus' = sigmoid)

plus two tiny backends with optional capabilities, for guided backprop and Grad-CAM:

- ReluNet     f(x) = relu(x W1) W2, with ``with_relu_rule``;
- CamNet      A = relu(conv1x1(avgpool2x2(x))) (the layer "features"), f = mean_hw(A) W, with ``layer_vjp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


@dataclass
class Linear:
    W: np.ndarray  # (D, K)
    c: np.ndarray  # (K,)

    def f(self, x: np.ndarray) -> np.ndarray:
        return flat(x) @ self.W + self.c

    def grad(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (v @ self.W.T).reshape(x.shape)


@dataclass
class Quadratic:
    A: np.ndarray  # (K, D, D), each symmetric

    def f(self, x: np.ndarray) -> np.ndarray:
        z = flat(x)
        return 0.5 * np.einsum("nd,kde,ne->nk", z, self.A, z)

    def grad(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.einsum("nk,kde,ne->nd", v, self.A, flat(x)).reshape(x.shape)


def softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))


@dataclass
class MLP:
    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray

    def f(self, x: np.ndarray) -> np.ndarray:
        h = np.tanh(flat(x) @ self.W1 + self.b1)
        return softplus(h @ self.W2 + self.b2)

    def grad(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        z1 = flat(x) @ self.W1 + self.b1
        h = np.tanh(z1)
        z2 = h @ self.W2 + self.b2
        back_h = (sigmoid(z2) * v) @ self.W2.T
        return ((1 - h**2) * back_h @ self.W1.T).reshape(x.shape)


def linear(d: int, k: int, seed: int) -> Linear:
    rng = np.random.default_rng(seed)
    return Linear(rng.normal(size=(d, k)), rng.normal(size=k))


def quadratic(d: int, k: int, seed: int) -> Quadratic:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(k, d, d))
    return Quadratic(0.5 * (m + m.transpose(0, 2, 1)))


def mlp(d: int, hidden: int, k: int, seed: int) -> MLP:
    rng = np.random.default_rng(seed)
    return MLP(rng.normal(size=(d, hidden)) / np.sqrt(d), rng.normal(size=hidden) * 0.1,
               rng.normal(size=(hidden, k)) / np.sqrt(hidden), rng.normal(size=k) * 0.1)


class ReluNet:
    """f(x) = relu(x W1) W2 with the three ReLU backward rules (Springenberg et al. 2015)."""

    def __init__(self, W1: np.ndarray, W2: np.ndarray, rule: str = "standard") -> None:
        self.W1, self.W2, self.rule = W1, W2, rule
        self.calls: list[tuple[str, int]] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(("forward", len(x)))
        return np.maximum(flat(x) @ self.W1, 0) @ self.W2

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(("vjp", len(x)))
        pre = flat(x) @ self.W1
        back = cotangent @ self.W2.T
        if self.rule == "standard":
            back = back * (pre > 0)
        elif self.rule == "guided":
            back = back * (pre > 0) * (back > 0)
        else:
            back = back * (back > 0)
        return np.maximum(pre, 0) @ self.W2, (back @ self.W1.T).reshape(x.shape)

    def with_relu_rule(self, rule: str) -> ReluNet:
        return ReluNet(self.W1, self.W2, rule)


class CamNet:
    """x (N, C, H, W) -> A = relu(V . avgpool2x2(x)) (N, K, H/2, W/2) -> f = mean_hw(A) @ W (N, classes)."""

    def __init__(self, V: np.ndarray, W: np.ndarray) -> None:
        self.V, self.W = V, W  # V (K, C), W (K, classes)
        self.calls: list[tuple[str, int]] = []

    def features(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        pooled = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        return np.maximum(np.einsum("kc,nchw->nkhw", self.V, pooled), 0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(("forward", len(x)))
        return self.features(x).mean(axis=(2, 3)) @ self.W

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, c, h, w = x.shape
        pooled = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        pre = np.einsum("kc,nchw->nkhw", self.V, pooled)
        d_a = (cotangent @ self.W.T)[:, :, None, None] / (h // 2 * (w // 2)) * (pre > 0)
        d_pooled = np.einsum("kc,nkhw->nchw", self.V, d_a)
        grad = np.repeat(np.repeat(d_pooled, 2, axis=2), 2, axis=3) / 4
        return self.forward(x), grad

    def layer_vjp(self, x: np.ndarray, layer: str, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(("layer_vjp", len(x)))
        if layer != "features":
            raise KeyError(layer)
        activation = self.features(x)
        hw = activation.shape[2] * activation.shape[3]
        grad = np.broadcast_to((cotangent @ self.W.T)[:, :, None, None] / hw, activation.shape)
        return activation, grad.copy()
