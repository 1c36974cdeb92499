"""Check a backend's gradients against central finite differences of its own forward pass.

For each sample the explained scalar is ``S_i(x) = <f(x), v_i>`` (``v`` from ``target``). With at most
:data:`MAX_COORDINATES` elements per sample every coordinate ``j`` is checked,
``vjp_ij  vs  (S_i(x + h e_j) - S_i(x - h e_j)) / 2h``; otherwise ``n_directions`` random unit directions
``u``: ``<J^T v, u>  vs  (S_i(x + h u) - S_i(x - h u)) / 2h``. A backend with ``jvp`` is also checked for
consistency of its two modes, ``<J u, v>  vs  <u, J^T v>``. A check passes when
``|a - b| <= atol + rtol * max(|a|, |b|)``; any NaN or infinity fails the report, with the reason.

Finite differences cannot judge a gradient where the model has a kink within the step (a ReLU input at
exactly 0, a max-pool window with tied maxima: common on images with flat black backgrounds). A check
that fails is redone with step h/2: it passes if the central difference then agrees (the kink lay
farther than h/2); it is set aside and counted (``n_nonsmooth``) if its one-sided differences
``(S(x + h u) - S(x)) / h`` and ``(S(x) - S(x - h u)) / h`` still disagree by as much as at step h (a kink
at x; for a smooth function that gap shrinks with the step); otherwise it fails. A report whose every
check was set aside is inconclusive (``passed`` is False, and ``worst`` says to check at a nudged input).

Run it on your own backend before trusting its saliency maps::

    report = gradsal.core.check_gradients(my_backend, x)
    print(report)           # readable summary
    assert report.passed
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._validate import as_float_batch, backend_array, call_backend, check_positive_int, unpack_pair
from .attribution import backend_vjp
from .batching import Segment, resolve_batch_size, stacked_chunks
from .errors import InputError, InputTypeError
from .protocol import GradientBackend, SupportsJVP
from .registry import as_backend
from .targets import check_outputs, cotangent_from_target, predicted_cotangent

MAX_COORDINATES = 64
# (relative step, rtol, atol) by the precision of the computation
_DEFAULTS = {
    np.dtype(np.float64): (1e-6, 1e-5, 1e-7),
    np.dtype(np.float32): (1e-3, 1e-2, 1e-3),
    np.dtype(np.float16): (3e-2, 1e-1, 3e-2),
}


@dataclass(frozen=True)
class GradientCheckReport:
    """The outcome of :func:`check_gradients`.

    ``passed``: every check within tolerance and nothing NaN. ``max_abs_error``/``max_rel_error``: over
    all checks (NaN when something was NaN). ``worst``: the check furthest outside (or closest to) its
    tolerance, or the reason for failing. ``n_checks``: finite-difference comparisons made (JVP
    comparisons not counted). ``mode``: ``"coordinates"`` or ``"directions"``. ``jvp_checked``: whether
    ``<J u, v> = <u, J^T v>`` was also checked.
    """

    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst: str
    n_checks: int
    eps: float
    mode: str
    jvp_checked: bool
    rtol: float = 0.0
    atol: float = 0.0
    n_nonsmooth: int = 0

    @property
    def inconclusive(self) -> bool:
        """True when every finite-difference check was set aside because of a kink of the model at x (and
        nothing else failed)."""
        return self.n_checks > 0 and self.n_nonsmooth == self.n_checks and self.worst.startswith("inconclusive")

    def __str__(self) -> str:
        verdict = "INCONCLUSIVE" if self.inconclusive else "PASSED" if self.passed else "FAILED"
        jvp = "; forward mode (jvp) checked too" if self.jvp_checked else ""
        kinks = (f"\n  {self.n_nonsmooth} of {self.n_checks} checks set aside: the model has a kink within eps of x "
                 "along them (one-sided differences disagree), where finite differences cannot judge a gradient"
                 if self.n_nonsmooth else "")
        return (
            f"Gradient check {verdict}: {self.n_checks} finite-difference checks over {self.mode} "
            f"(eps={self.eps:.3g}, rtol={self.rtol:.3g}, atol={self.atol:.3g}){jvp}.\n"
            f"  max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}{kinks}\n"
            f"  worst: {self.worst}"
        )


@dataclass
class _Comparison:
    """Pairs ``(a, b)`` with labels, compared under one tolerance."""

    analytic: np.ndarray
    numeric: np.ndarray
    labels: list[str]
    analytic_name: str
    numeric_name: str
    nonsmooth: np.ndarray | None = None  # True where one-sided differences disagree (a kink within the step)


def check_gradients(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    eps: float | None = None,
    n_directions: int = 16,
    seed: int | None = 0,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
) -> GradientCheckReport:
    """Compare ``vjp`` (and ``jvp`` where supported) with central finite differences of ``forward``.

    ``eps`` (the step ``h``) defaults by precision: ``1e-6`` (float64) or ``1e-3`` (float32) times
    ``max(1, max|x|)``; the precision is the coarser of ``x``'s and the outputs' dtype. ``rtol`` defaults
    to 1e-5 / 1e-2 and ``atol`` to 1e-7 / 1e-3 plus the rounding error of a central difference,
    ``8 max(1, max|S(x)|) machine_eps / eps``. Returns a :class:`GradientCheckReport`; it raises only for
    bad arguments, never for a wrong gradient. ``batch_size`` bounds the rows per backend call.
    """
    n_directions = check_positive_int(n_directions, "n_directions")
    backend = as_backend(model)
    x = as_float_batch(x)
    rows = resolve_batch_size(batch_size, x[0].nbytes)
    outputs = _forward(backend, x, rows)
    precision = _precision(x.dtype, outputs.dtype)
    step, default_rtol, default_atol = _DEFAULTS[precision]
    h = _check_tolerance(eps, "eps", positive=True) if eps is not None else step * max(1.0, float(np.abs(x).max()))
    mode = "coordinates" if x[0].size <= MAX_COORDINATES else "directions"
    if not np.isfinite(outputs).all():
        return _nan_report("forward(x) returned NaN or infinite outputs", h, mode)
    cotangent = predicted_cotangent(outputs) if target is None else cotangent_from_target(
        target, len(x), outputs.shape[1:], outputs.dtype)
    scale = max(1.0, float(np.abs(_explained(outputs, cotangent)).max()))
    tol_r = _check_tolerance(rtol, "rtol") if rtol is not None else default_rtol
    # central differences lose about |S| * machine epsilon / h to rounding: the default atol allows for it
    rounding = 8 * scale * float(np.finfo(precision).eps) / h
    tol_a = _check_tolerance(atol, "atol") if atol is not None else default_atol + rounding
    grads = np.concatenate([backend_vjp(backend, x[s.start:s.stop], cotangent[s.start:s.stop])
                            for [s] in stacked_chunks(len(x), 1, rows)])
    if not np.isfinite(grads).all():
        return _nan_report("vjp returned NaN or infinite gradients", h, mode, tol_r, tol_a)
    directions = list(_directions(x, mode, n_directions, seed))
    base = _explained(outputs, cotangent)
    comparisons = [_finite_differences(backend, x, cotangent, grads, directions, h, rows, mode, base, tol_r, tol_a)]
    jvp_checked = isinstance(backend, SupportsJVP)
    if jvp_checked:
        # at a kink forward and reverse mode may each pick a one-sided derivative: set those aside too
        consistency = _jvp_consistency(backend, x, cotangent, grads, directions, rows, mode)
        comparisons.append(replace(consistency, nonsmooth=comparisons[0].nonsmooth))
    return _report(comparisons, h, mode, jvp_checked, tol_r, tol_a)


def _forward(backend: GradientBackend, x: np.ndarray, rows: int) -> np.ndarray:
    parts = [check_outputs(call_backend(backend, "forward", x[s.start:s.stop]), s.rows, backend)
             for [s] in stacked_chunks(len(x), 1, rows)]
    return np.concatenate(parts)


def _precision(*dtypes: np.dtype) -> np.dtype:
    known = [np.dtype(d) if np.dtype(d) in _DEFAULTS else np.dtype(np.float32) for d in dtypes]
    return max(known, key=lambda d: np.finfo(d).eps)


def _check_tolerance(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, got {value!r}.")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise InputError(f"{name} must be a finite number {bound}, got {value}: pass e.g. {name}=1e-6, or None for "
                         "the default for the input's dtype.")
    return float(value)


def _explained(outputs: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """``<f(x_i), v_i>`` per sample, in float64."""
    return (outputs.astype(np.float64) * cotangent).reshape(len(outputs), -1).sum(axis=1)


def _directions(x: np.ndarray, mode: str, n_directions: int, seed: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """Labelled per-sample directions ``(N, ...)``: unit basis vectors, or random unit vectors."""
    shape = x.shape[1:]
    if mode == "coordinates":
        for j in range(x[0].size):
            unit = np.zeros(x[0].size)
            unit[j] = 1.0
            index = tuple(int(i) for i in np.unravel_index(j, shape))
            yield f"coordinate {index[0] if len(index) == 1 else index}", np.broadcast_to(unit.reshape(shape), x.shape)
        return
    rng = np.random.default_rng(seed)
    for k in range(n_directions):
        u = rng.standard_normal(x.shape)
        u /= np.linalg.norm(u.reshape(len(x), -1), axis=1).reshape(-1, *([1] * (x.ndim - 1)))
        yield f"random direction {k}", u


def _stacked_apply(n: int, n_copies: int, rows: int, run: Any, make: Any) -> np.ndarray:
    """Concatenate ``run(chunk rows, segments)`` over copy-major stacked copies; result ``(n_copies, n, ...)``."""
    results = []
    for segments in stacked_chunks(n, n_copies, rows):
        results.append(run(np.concatenate([make(s) for s in segments]), segments))
    joined = np.concatenate(results)
    return joined.reshape(n_copies, n, *joined.shape[1:])


def _finite_differences(backend: GradientBackend, x: np.ndarray, cotangent: np.ndarray, grads: np.ndarray,
                        directions: list[tuple[str, np.ndarray]], h: float, rows: int, mode: str,
                        base: np.ndarray, rtol: float, atol: float) -> _Comparison:
    """Central differences along every direction; a check that fails is looked at again with step h/2.

    At h/2 it passes when the central difference then agrees (a kink lay between h/2 and h), and it is set
    aside as non-smooth when the one-sided differences still disagree by as much as at h (a kink at x: for a
    smooth function their gap shrinks with the step); otherwise it fails.
    """
    n = len(x)
    analytic = np.stack([(grads.astype(np.float64) * u).reshape(n, -1).sum(axis=1) for _, u in directions])
    central, right, left = _differences(backend, x, cotangent, directions, h, rows, mode, base)
    failing = np.abs(analytic - central) > atol + rtol * np.maximum(np.abs(analytic), np.abs(central))
    nonsmooth = np.zeros_like(failing)
    retry = [k for k in range(len(directions)) if failing[k].any()]
    if retry:
        half = _differences(backend, x, cotangent, [directions[k] for k in retry], h / 2, rows, mode, base)
        for row, k in enumerate(retry):
            c2, r2, l2 = half[0][row], half[1][row], half[2][row]
            tol2 = 2 * atol + rtol * np.maximum(np.abs(analytic[k]), np.abs(c2))  # rounding doubles at h/2
            agrees = np.abs(analytic[k] - c2) <= tol2
            gap, gap2 = np.abs(right[k] - left[k]), np.abs(r2 - l2)
            kink = (gap2 > 2 * tol2) & (gap2 > 0.75 * gap)
            central[k] = np.where(failing[k] & agrees, c2, central[k])
            nonsmooth[k] = failing[k] & ~agrees & kink
    labels = [f"sample {i}, {label}" for label, _ in directions for i in range(n)]
    analytic_name = "vjp" if mode == "coordinates" else "<J^T v, u>"
    return _Comparison(analytic.reshape(-1), central.reshape(-1), labels, analytic_name, "finite difference",
                       nonsmooth.reshape(-1))


def _differences(backend: GradientBackend, x: np.ndarray, cotangent: np.ndarray,
                 directions: list[tuple[str, np.ndarray]], h: float, rows: int, mode: str,
                 base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(central, right, left) differences of the explained scalar, each ``(len(directions), N)``."""
    n = len(x)

    # copy 2k is x + h u_k, copy 2k+1 is x - h u_k; the step actually taken is measured after rounding
    def point(segment: Segment) -> np.ndarray:
        k, sign = divmod(segment.copy, 2)
        part = slice(segment.start, segment.stop)
        shifted = x[part].astype(np.float64) + (h if sign == 0 else -h) * directions[k][1][part]
        return shifted.astype(x.dtype)

    def explained(batch: np.ndarray, segments: list[Segment]) -> np.ndarray:
        cot = np.concatenate([cotangent[s.start:s.stop] for s in segments])
        return _explained(check_outputs(call_backend(backend, "forward", batch), len(batch), backend), cot)

    values = _stacked_apply(n, 2 * len(directions), rows, explained, point)
    central, right, left = [], [], []
    for k, (_, u) in enumerate(directions):
        if mode == "coordinates":
            j = np.flatnonzero(u[0].ravel())[0]
            flat = x.reshape(n, -1)
            up = (flat[:, j].astype(np.float64) + h).astype(x.dtype).astype(np.float64)
            down = (flat[:, j].astype(np.float64) - h).astype(x.dtype).astype(np.float64)
            above, below = up - flat[:, j], flat[:, j] - down
        else:
            above = below = np.full(n, h)
        central.append((values[2 * k] - values[2 * k + 1]) / (above + below))
        right.append((values[2 * k] - base) / above)
        left.append((base - values[2 * k + 1]) / below)
    return np.stack(central), np.stack(right), np.stack(left)


def _jvp_consistency(backend: Any, x: np.ndarray, cotangent: np.ndarray, grads: np.ndarray,
                     directions: list[tuple[str, np.ndarray]], rows: int, mode: str) -> _Comparison:
    n = len(x)

    def tangent_rows(segment: Segment) -> np.ndarray:
        return directions[segment.copy][1][segment.start:segment.stop]

    def product(tangents: np.ndarray, segments: list[Segment]) -> np.ndarray:
        batch = np.concatenate([x[s.start:s.stop] for s in segments])
        cot = np.concatenate([cotangent[s.start:s.stop] for s in segments])
        _, forward_mode = unpack_pair(call_backend(backend, "jvp", batch, tangents.astype(x.dtype)), "jvp", backend)
        forward_mode = backend_array(forward_mode, "a JVP", len(batch), backend)
        return _explained(forward_mode, cot)

    values = _stacked_apply(n, len(directions), rows, product, tangent_rows)
    analytic = [(grads.astype(np.float64) * u).reshape(n, -1).sum(axis=1) for _, u in directions]
    labels = [f"sample {i}, {label} (jvp)" for label, _ in directions for i in range(n)]
    return _Comparison(values.reshape(-1), np.concatenate(analytic), labels, "<J u, v>", "<u, J^T v>")


def _report(comparisons: list[_Comparison], h: float, mode: str, jvp_checked: bool, rtol: float,
            atol: float) -> GradientCheckReport:
    n_checks = len(comparisons[0].labels)
    worst_score, worst, max_abs, max_rel = -1.0, "", 0.0, 0.0
    n_nonsmooth = int(comparisons[0].nonsmooth.sum()) if comparisons[0].nonsmooth is not None else 0
    for comparison in comparisons:
        a, b = comparison.analytic, comparison.numeric
        bad = ~(np.isfinite(a) & np.isfinite(b))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return _nan_report(f"{comparison.labels[i]}: {comparison.analytic_name} = {a[i]:.6g}, "
                               f"{comparison.numeric_name} = {b[i]:.6g}", h, mode, rtol, atol, n_checks, jvp_checked)
        if comparison.nonsmooth is not None:
            keep = ~comparison.nonsmooth
            a, b, labels = a[keep], b[keep], [lab for lab, k in zip(comparison.labels, keep, strict=True) if k]
        else:
            labels = comparison.labels
        if not len(a):
            continue
        error = np.abs(a - b)
        size = np.maximum(np.abs(a), np.abs(b))
        relative = np.divide(error, size, out=np.zeros_like(error), where=size > 0)
        score = error / (atol + rtol * size) if atol + rtol > 0 else np.where(error > 0, np.inf, 0.0)
        i = int(np.argmax(score))
        max_abs, max_rel = max(max_abs, float(error.max())), max(max_rel, float(relative.max()))
        if score[i] > worst_score:
            worst_score = float(score[i])
            worst = (f"{labels[i]}: {comparison.analytic_name} = {a[i]:.6g} vs "
                     f"{comparison.numeric_name} = {b[i]:.6g} (abs error {error[i]:.3g})")
    if n_nonsmooth == n_checks and n_checks and worst_score <= 1.0:
        return GradientCheckReport(
            False, max_abs, max_rel, "inconclusive: every finite-difference check crosses a kink of the model "
            "within eps of x (ReLU inputs at exactly 0, max-pool windows with tied maxima); check at a nudged "
            "input instead, e.g. x + 1e-3 * np.random.default_rng(0).standard_normal(x.shape)",
            n_checks, h, mode, jvp_checked, rtol, atol, n_nonsmooth)
    return GradientCheckReport(worst_score <= 1.0, max_abs, max_rel, worst, n_checks, h, mode, jvp_checked,
                               rtol, atol, n_nonsmooth)


def _nan_report(reason: str, h: float, mode: str, rtol: float = 0.0, atol: float = 0.0, n_checks: int = 0,
                jvp_checked: bool = False) -> GradientCheckReport:
    return GradientCheckReport(False, float("nan"), float("nan"), f"NaN or infinity: {reason}", n_checks, h, mode,
                               jvp_checked, rtol, atol)
