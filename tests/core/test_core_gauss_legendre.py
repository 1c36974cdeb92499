"""Integrated gradients' Gauss-Legendre rule for n = 2..8: its nodes and weights, and exactness where
equal weights at the same nodes (or any Riemann rule) are not.

At n = 2 the Gauss-Legendre weights are equal, so that case alone cannot tell them from uniform weights.
The references: ``numpy.polynomial.legendre.leggauss`` mapped from [-1, 1] to [0, 1], and, independent of
it, the defining property that the n-point rule integrates alpha^k over [0, 1] exactly (1 / (k + 1)) for
every k < 2n and not for k = 2n.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import gradsal.core as gs
from gradsal.backends.numpy import FunctionBackend

ORDERS = range(2, 9)


@pytest.mark.parametrize("n", ORDERS)
def test_nodes_and_weights_are_leggauss_on_the_unit_interval(n: int) -> None:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    alphas, rule_weights = gs.integration_rule("gausslegendre", n)
    np.testing.assert_allclose(alphas, (nodes + 1) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(rule_weights, weights / 2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("n", ORDERS)
def test_rule_is_exact_for_degree_below_2n_only(n: int) -> None:
    alphas, weights = gs.integration_rule("gausslegendre", n)
    for k in range(2 * n):
        assert float(weights @ alphas**k) == pytest.approx(1 / (k + 1), rel=1e-13), f"alpha^{k}"
    assert abs(float(weights @ alphas ** (2 * n)) - 1 / (2 * n + 1)) > 1e-11  # 3.6e-10 at n = 8


def test_three_point_rule_by_hand() -> None:
    alphas, weights = gs.integration_rule("gausslegendre", 3)
    half_width = np.sqrt(3 / 5) / 2
    np.testing.assert_allclose(alphas, [0.5 - half_width, 0.5, 0.5 + half_width], atol=1e-15)
    np.testing.assert_allclose(weights, [5 / 18, 8 / 18, 5 / 18], rtol=1e-14)


def quartic(c: np.ndarray) -> FunctionBackend:
    """f(x) = sum_i c_i x_i^4 per row; IG from the zero baseline is c_i x_i^4 exactly (the integrand
    4 c_i x_i^4 alpha^3 is a cubic in alpha, which every Gauss-Legendre rule with n >= 2 integrates)."""
    return FunctionBackend(lambda x: (c * x**4).sum(axis=1, keepdims=True), grad=lambda x, v: v * 4 * c * x**3)


@pytest.mark.parametrize("n", ORDERS)
def test_quartic_model_is_exact_with_gauss_legendre_weights(n: int) -> None:
    c = np.array([1.0, -2.0, 0.5, 3.0])
    x = np.array([[1.5, -0.5, 2.0, -1.0], [-2.0, 1.0, 0.25, 0.75]])
    ig = gs.integrated_gradients(quartic(c), x, 0, baseline=0.0, n_steps=n, method="gausslegendre")
    np.testing.assert_allclose(ig, c * x**4, rtol=1e-12, atol=1e-14)
    if n >= 3:  # equal weights at the same nodes are off by a percent or more: this model tells them apart
        alphas, _ = gs.integration_rule("gausslegendre", n)
        assert abs(4 * np.mean(alphas**3) - 1) > 1e-3


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"])
def test_quartic_model_is_not_exact_with_riemann_rules(method: str) -> None:
    """The contrast: equal-cell rules with as many points are off by far more than the tolerance above."""
    c, x = np.array([1.0]), np.array([[2.0]])
    ig = gs.integrated_gradients(quartic(c), x, 0, baseline=0.0, n_steps=8, method=method)
    assert abs(float(ig[0, 0]) - 16.0) > 1e-3


@given(n=st.integers(2, 8), x=st.floats(-3, 3), c=st.floats(-2, 2))
@example(n=3, x=-1.5, c=1.0)
@example(n=8, x=2.0, c=-0.5)
@example(n=5, x=0.0, c=1.0)
def test_quartic_property(n: int, x: float, c: float) -> None:
    ig = gs.integrated_gradients(quartic(np.array([c])), np.array([[x]]), 0, baseline=0.0, n_steps=n)
    assert float(ig[0, 0]) == pytest.approx(c * x**4, rel=1e-12, abs=1e-12)
