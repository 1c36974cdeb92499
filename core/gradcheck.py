"""Check a backend's gradients against central finite differences of its own forward pass.

For each sample the explained scalar is ``S_i(x) = <f(x), v_i>`` (``v`` from ``target``) and the backend
claims ``g_i = J^T v_i``. Along a unit direction ``u`` the claim predicts the central difference
``D(h) = (S(x + h u) - S(x - h u)) / 2h ~ <g, u>`` (Simonyan et al. 2013 use the same scalar; the check is
the directional form of ``torch.autograd.gradcheck``). Which directions see an error matters: in a
150,000-pixel image a uniformly random ``u`` sees ``<g, u> ~ |g| / sqrt(d)``, far below float32 rounding,
so a gradient that is zero or scaled passes such a check. gradsal therefore checks three families:

- **gradient**: ``u = g / |g|``, the most informative direction there is (``<g, u> = |g|``). A zero,
  negated, scaled or partly sign-flipped gradient, or the gradient of another class, fails here.
- **support**: random directions weighted by where the gradient lives (``|g|`` smoothed over a 3-wide box
  along every axis, channels included, plus a small floor): errors orthogonal to ``g`` that stay near its
  support, such as a shifted map or a zeroed channel, fail here.
- **uniform**: plain random unit directions, which see errors anywhere (and all of a zero gradient).

With at most :data:`MAX_COORDINATES` elements per sample every coordinate is checked instead.

The step is chosen per family from the model, not fixed: a ladder of steps (half decades, relative to
``|x|``) is tried along the family's first direction and the neighbouring pair ``(h_small, h)`` whose
differences agree best is kept (truncation error grows with the step, rounding error with its inverse:
the most stable pair sits between them). Every direction of the family is then differenced at both steps;
``D(h_small)`` is the estimate and ``|D(h) - D(h_small)|`` its uncertainty (Richardson's argument: the
difference between two steps bounds the truncation error of the smaller). The analytic side is computed
with the displacement actually taken after rounding ``x + h u`` to the input's dtype.

A family passes when ``|a - b| <= atol + rtol * max(|a|, |b|) + uncertainty``, norms taken over the
family's directions (``a`` the claimed, ``b`` the finite-difference directional derivatives): errors are
judged relative to the size of what is measured, never by an absolute tolerance alone. The report states
the smallest relative error each family could have detected.

Finite differences cannot judge a gradient where the model has a kink within the step (a ReLU input at
exactly 0, a max-pool window with tied maxima). A direction whose one-sided differences
``(S(x + h u) - S(x)) / h`` and ``(S(x) - S(x - h u)) / h`` disagree, and disagree by nearly as much at the
smaller step (:data:`KINK_RATIO`; for a smooth function the gap shrinks in proportion to the step), is set
aside and counted (``n_nonsmooth``). A report whose every check was set aside is inconclusive.

Where the backend can compute in float64 (``SupportsFloat64.float64()``: a torch module, an ONNX model
whose operators all have double kernels), the check runs there, as strict as ``gradcheck``; otherwise at
the model's own precision, and the report says which.

Run it on your own backend before trusting its saliency maps::

    report = gradsal.core.check_gradients(my_backend, x)
    print(report)           # readable summary
    assert report.passed
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validate import as_float_batch, backend_array, call_backend, check_choice, check_positive_int, unpack_pair
from .attribution import backend_vjp
from .batching import resolve_batch_size, stacked_chunks
from .errors import GradsalError, InputError, InputTypeError
from .protocol import GradientBackend, SupportsFloat64, SupportsJVP
from .registry import as_backend
from .targets import check_outputs, cotangent_from_target, predicted_cotangent

MAX_COORDINATES = 64
# a direction whose one-sided gap shrinks less than this when the step shrinks crosses a kink
KINK_RATIO = 0.75


@dataclass(frozen=True)
class _Precision:
    coordinate_step: float  # fixed relative step for the coordinate check
    ladder: tuple[float, ...]  # candidate steps relative to max(1, |x_i|) for the direction check
    rtol: float  # coordinates and the gradient direction
    rtol_random: float  # the random families, in norm
    atol: float


def _ladder(low: int, high: int) -> tuple[float, ...]:
    return tuple(10.0 ** (k / 2) for k in range(2 * low, 2 * high + 1))


_PRECISIONS = {
    np.dtype(np.float64): _Precision(1e-6, _ladder(-10, -5), 1e-5, 1e-4, 1e-9),
    np.dtype(np.float32): _Precision(1e-3, _ladder(-7, -3), 2e-2, 0.3, 1e-6),
    np.dtype(np.float16): _Precision(3e-2, _ladder(-4, -1), 1e-1, 0.5, 1e-3),
}
FAMILIES = ("coordinates", "gradient", "channels", "support", "uniform")  # FamilyResult.name, in report order


@dataclass(frozen=True)
class FamilyResult:
    """One family of directions of one check: its size, steps, error and the error it could detect.

    ``error``: the largest over samples of ``|a - b| / max(|a|, |b|)`` (norms over the family's
    directions). ``detectable``: the relative error above which the family fails, the largest over samples.
    ``resolved``: False when every direction of some sample was set aside at a kink, or the differences
    were too uncertain to fail even a zero gradient (``detectable >= 1``).
    """

    name: str
    n_directions: int
    steps: tuple[float, float]
    error: float
    detectable: float
    passed: bool
    n_nonsmooth: int = 0
    resolved: bool = True


@dataclass(frozen=True)
class GradientCheckReport:
    """The outcome of :func:`check_gradients`.

    ``passed``: every family within tolerance and nothing NaN. ``max_abs_error``/``max_rel_error``: over
    all checks (NaN when something was NaN). ``worst``: the check furthest outside (or closest to) its
    tolerance, or the reason for failing. ``n_checks``: finite-difference comparisons made (JVP
    comparisons not counted). ``mode``: ``"coordinates"`` or ``"directions"``. ``jvp_checked``: whether
    ``<J u, v> = <u, J^T v>`` was also checked. ``precision``: the dtype the check computed in.
    ``families``: per family of directions its steps, error and detectable error. ``n_forward``: rows
    the check fed to ``forward`` (its cost in forward passes of one sample).
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
    precision: str = "float64"
    families: tuple[FamilyResult, ...] = field(default_factory=tuple)
    n_forward: int = 0
    note: str = ""
    unresolved: bool = False

    @property
    def inconclusive(self) -> bool:
        """True when nothing failed but some family of checks could not judge: all its directions crossed a
        kink of the model at x, or its finite differences were too uncertain."""
        return not self.passed and self.unresolved

    @property
    def detectable(self) -> float:
        """The relative error of the gradient along its own direction (or per coordinate) that would have
        failed the check: the resolution of this check."""
        sharp = [f.detectable for f in self.families if f.name in ("gradient", "coordinates")]
        return max(sharp) if sharp else float("nan")

    @property
    def verdict(self) -> str:
        return "INCONCLUSIVE" if self.inconclusive else "PASSED" if self.passed else "FAILED"

    def __str__(self) -> str:
        jvp = "; forward mode (jvp) checked too" if self.jvp_checked else ""
        lines = [f"Gradient check {self.verdict} in {self.precision}: {self.n_checks} finite-difference checks over "
                 f"{self.mode}, {self.n_forward} forward rows{jvp}."]
        if self.note:
            lines.append(f"  {self.note}")
        for f in self.families:
            steps = f"steps {f.steps[0]:.3g} and {f.steps[1]:.3g}"
            kinks = f", {f.n_nonsmooth} set aside at kinks" if f.n_nonsmooth else ""
            state = "ok" if f.passed and f.resolved else "FAILED" if not f.passed else "cannot judge"
            lines.append(f"  {f.name}: {f.n_directions} direction{'s' * (f.n_directions != 1)}, {steps}: "
                         f"error {_percent(f.error)}, would fail above {_percent(f.detectable)} ({state}{kinks})")
        if self.families and np.isfinite(self.detectable):
            along = "per coordinate" if self.mode == "coordinates" else "along its own direction"
            lines.append(f"  A gradient off by more than {_percent(self.detectable)} {along} would have failed.")
        if self.n_nonsmooth:
            lines.append(f"  {self.n_nonsmooth} of {self.n_checks} checks set aside: the model has a kink within the "
                         "step of x along them (one-sided differences disagree), where finite differences cannot "
                         "judge a gradient")
        lines.append(f"  max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}")
        lines.append(f"  worst: {self.worst}")
        return "\n".join(lines)


def _percent(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{100 * value:.2g}%" if value < 10 else f"{value:.3g}x"


@dataclass
class _Family:
    """Directions of one family: ``units (K, N, ...)``, labels, and the kept step pair per sample."""

    name: str
    units: np.ndarray
    labels: list[str]
    small: np.ndarray  # (N,) the smaller step per sample
    large: np.ndarray  # (N,)
    kinks: np.ndarray | None = None  # (K, N) set aside by the comparison


class _Counter:
    """Counts the rows fed to ``forward``: the check's cost."""

    def __init__(self, backend: GradientBackend) -> None:
        self.backend, self.rows = backend, 0

    def forward(self, batch: np.ndarray) -> np.ndarray:
        self.rows += len(batch)
        return check_outputs(call_backend(self.backend, "forward", batch), len(batch), self.backend)


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
    precision: str = "auto",
    nudge: float | str = "auto",
) -> GradientCheckReport:
    """Compare ``vjp`` (and ``jvp`` where supported) with central finite differences of ``forward``.

    ``n_directions`` (default 16) splits into one gradient direction, half support and the rest uniform
    directions; inputs of at most 64 elements per sample are checked per coordinate. ``eps`` fixes the
    step ``h`` (the finite differences then use ``h`` and ``h / 2``) instead of choosing it from the model.
    ``rtol`` overrides every family's relative tolerance and ``atol`` the absolute floor. ``precision``:
    ``"auto"`` (float64 where the backend offers it through ``float64()``), ``"model"`` (the precision of
    ``x`` and the outputs). ``nudge``: the check runs at ``x`` plus Gaussian noise of this share of each
    sample's range; ``"auto"`` is 1e-3 for inputs checked along directions (images: flat regions tie
    max-pool windows and put ReLUs at exactly 0, kinks where no finite difference can judge a gradient)
    and 0 for inputs checked per coordinate; 0 checks at ``x`` exactly. The default check of an image costs
    about 100 forward rows per sample. Returns a :class:`GradientCheckReport`; it raises only for bad
    arguments, never for a wrong gradient. ``batch_size`` bounds the rows per backend call.
    """
    n_directions = check_positive_int(n_directions, "n_directions")
    check_choice(precision, "precision", ["auto", "model"])
    backend = as_backend(model)
    x = as_float_batch(x)
    note = ""
    if precision == "auto" and x.dtype != np.float64 and isinstance(backend, SupportsFloat64):
        double = working_float64(backend, x)
        if double is not None:
            backend, x = double, x.astype(np.float64)
            note = "checked on the backend's float64 version of the model (precision='model' checks its own)"
    mode = "coordinates" if x[0].size <= MAX_COORDINATES else "directions"
    x, nudged = _nudged(x, nudge, mode, seed)
    if nudged:
        note = "; ".join(filter(None, [note, f"checked at x plus Gaussian noise of {nudged:.2g} of its range "
                                             "(nudge=0 checks at x itself)"]))
    counter = _Counter(backend)
    rows = resolve_batch_size(batch_size, x[0].nbytes)
    outputs = np.concatenate([counter.forward(x[s.start:s.stop]) for [s] in stacked_chunks(len(x), 1, rows)])
    dtype = _precision(x.dtype, outputs.dtype)
    spec = _PRECISIONS[dtype]
    h = _check_tolerance(eps, "eps", positive=True) if eps is not None else None
    context = _Context(counter, x, rows, spec, dtype.name, note)
    if not np.isfinite(outputs).all():
        return context.nan_report("forward(x) returned NaN or infinite outputs", mode)
    cotangent = predicted_cotangent(outputs) if target is None else cotangent_from_target(
        target, len(x), outputs.shape[1:], outputs.dtype)
    context.cotangent, context.base = cotangent, _explained(outputs, cotangent)
    grads = np.concatenate([backend_vjp(backend, x[s.start:s.stop], cotangent[s.start:s.stop])
                            for [s] in stacked_chunks(len(x), 1, rows)]).astype(np.float64)
    if not np.isfinite(grads).all():
        return context.nan_report("vjp returned NaN or infinite gradients", mode)
    scale = max(1.0, float(np.abs(context.base).max()))
    # central differences lose about |S| * machine epsilon / h to rounding: the absolute floor allows for it
    context.rounding = 8 * scale * float(np.finfo(dtype).eps)
    context.rtol_override = _check_tolerance(rtol, "rtol") if rtol is not None else None
    context.atol = _check_tolerance(atol, "atol") if atol is not None else spec.atol
    if mode == "coordinates":
        step = h if h is not None else spec.coordinate_step * max(1.0, float(np.abs(x).max()))
        families = [_coordinate_family(x, step)]
    else:
        families = _direction_families(context, grads, n_directions, seed, h)
    return context.judge(families, grads, mode, isinstance(backend, SupportsJVP), h)


def working_float64(backend: SupportsFloat64, x: np.ndarray) -> GradientBackend | None:
    """The backend's float64 version when it offers one that computes a gradient in float64 (a kernel missing
    in float64 may show only when its gradient is built, at the first ``vjp``), else None."""
    double = backend.float64()
    if double is None:
        return None
    probe = x[:1].astype(np.float64)
    try:
        outputs = np.asarray(call_backend(double, "forward", probe))
        grads = backend_vjp(double, probe, np.ones_like(outputs))
    except GradsalError:
        return None
    return double if outputs.dtype == np.float64 and np.asarray(grads).dtype == np.float64 else None


def _nudged(x: np.ndarray, nudge: float | str, mode: str, seed: int | None) -> tuple[np.ndarray, float]:
    """``x`` plus Gaussian noise of ``nudge`` times each sample's range, and the share used."""
    if isinstance(nudge, str):
        check_choice(nudge, "nudge", ["auto"])
        share = 1e-3 if mode == "directions" else 0.0
    else:
        share = _check_tolerance(nudge, "nudge")
    if share == 0:
        return x, 0.0
    flat = x.reshape(len(x), -1).astype(np.float64)
    spread = np.ptp(flat, axis=1)
    spread = np.where(spread > 0, spread, np.maximum(1.0, np.abs(flat).max(axis=1)))
    noise = np.random.default_rng(None if seed is None else seed + 1).standard_normal(x.shape)
    return (x + share * _per_sample(spread, x.ndim) * noise).astype(x.dtype), share


def _precision(*dtypes: np.dtype) -> np.dtype:
    known = [np.dtype(d) if np.dtype(d) in _PRECISIONS else np.dtype(np.float32) for d in dtypes]
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


def _per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    return values.reshape(-1, *([1] * (ndim - 1)))


def _normalised(directions: np.ndarray) -> np.ndarray:
    """Each sample's direction scaled to unit norm; an all-zero one stays zero."""
    norms = np.linalg.norm(directions.reshape(len(directions), -1), axis=1)
    return directions / _per_sample(np.where(norms > 0, norms, 1.0), directions.ndim)


def _coordinate_family(x: np.ndarray, step: float) -> _Family:
    n, size, shape = len(x), x[0].size, x.shape[1:]
    units = np.zeros((size, n, size))
    units[np.arange(size), :, np.arange(size)] = 1.0
    labels = []
    for j in range(size):
        index = tuple(int(i) for i in np.unravel_index(j, shape))
        labels.append(f"coordinate {index[0] if len(index) == 1 else index}")
    return _Family("coordinates", units.reshape(size, *x.shape), labels, np.full(n, step / 2), np.full(n, step))


def _envelope(grads: np.ndarray) -> np.ndarray:
    """``|g|`` smoothed by a 3-wide box along every non-batch axis (so a neighbouring pixel or channel of a
    large gradient gets weight too), plus a floor of a tenth of its mean so that no element is never probed."""
    env = np.abs(grads)
    for axis in range(1, env.ndim):
        if env.shape[axis] == 1:
            continue
        padded = np.pad(env, [(1, 1) if a == axis else (0, 0) for a in range(env.ndim)], mode="edge")
        env = (padded.take(range(0, env.shape[axis]), axis=axis) + padded.take(range(1, env.shape[axis] + 1), axis=axis)
               + padded.take(range(2, env.shape[axis] + 2), axis=axis)) / 3
    mean = env.reshape(len(env), -1).mean(axis=1)
    return env + _per_sample(np.where(mean > 0, 0.1 * mean, 1.0), env.ndim)


def _direction_families(context: _Context, grads: np.ndarray, n_directions: int, seed: int | None,
                        h: float | None) -> list[_Family]:
    rng = np.random.default_rng(seed)
    shape, envelope = grads.shape, _envelope(grads)
    channels = [_channel_direction(rng, envelope, axis, index) for axis in _channel_axes(shape)
                for index in range(shape[axis])][:max(n_directions - 1, 0)]
    n_random = max(n_directions - 1 - len(channels), 0)
    n_support = n_random // 2
    drawn = {
        "gradient": [_normalised(grads)] if n_directions >= 1 else [],
        "channels": channels,
        "support": [_normalised(rng.standard_normal(shape) * envelope) for _ in range(n_support)],
        "uniform": [_normalised(rng.standard_normal(shape)) for _ in range(n_random - n_support)],
    }
    zero = np.linalg.norm(grads.reshape(len(grads), -1), axis=1) == 0
    if zero.any() and drawn["gradient"]:
        # a zero gradient has no direction: probe a random one there (the claim predicts 0 along it)
        drawn["gradient"][0][zero] = _normalised(rng.standard_normal(shape))[zero]
    families, rough_steps = [], None
    for name, units in drawn.items():
        if not units:
            continue
        labels = [f"{name} direction" if name == "gradient" else f"{name} direction {k}" for k in range(len(units))]
        if name == "channels":
            labels = [f"direction within channel {index} of axis {axis}" for axis in _channel_axes(shape)
                      for index in range(shape[axis])][:len(units)]
        stacked = np.stack(units)
        # random directions see directional derivatives of one size: they share the step of the first of them
        if name == "gradient" or rough_steps is None:
            steps = _steps(context, stacked[0], h)
            rough_steps = rough_steps if name == "gradient" else steps
        families.append(_Family(name, stacked, labels, *(steps if name == "gradient" else rough_steps)))
    return families


def _channel_axes(shape: tuple[int, ...]) -> list[int]:
    """Axes that look like channels (2 to 4 entries, RGB or RGBA, NCHW or NHWC): each of their slices gets
    a direction of its own, so that a gradient wrong in one channel alone is seen."""
    return [axis for axis in range(1, len(shape)) if 2 <= shape[axis] <= 4 and len(shape) >= 4]


def _channel_direction(rng: np.random.Generator, envelope: np.ndarray, axis: int, index: int) -> np.ndarray:
    inside = np.zeros(envelope.shape)
    selector = [slice(None)] * envelope.ndim
    selector[axis] = index
    inside[tuple(selector)] = 1.0
    # the envelope pooled over the channel axis, so that a channel whose gradient is claimed zero is probed
    pooled = envelope.mean(axis=axis, keepdims=True)
    return _normalised(rng.standard_normal(envelope.shape) * pooled * inside)


def _steps(context: _Context, pilot: np.ndarray, h: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The step pair per sample: ``(h/2, h)`` for a fixed ``h``, else the most stable neighbouring pair of
    the ladder along the pilot direction."""
    n = len(context.x)
    if h is not None:
        return np.full(n, h / 2), np.full(n, h)
    size = np.maximum(1.0, np.linalg.norm(context.x.reshape(n, -1).astype(np.float64), axis=1))
    ladder = np.array(context.spec.ladder)
    central = np.stack([context.central(pilot, step * size)[0][0] for step in ladder])  # (L, N)
    # estimated error of the pair: truncation (their disagreement) plus rounding at the smaller step; steps
    # so small that S does not change at all agree perfectly and are excluded by the rounding term
    estimate = np.abs(np.diff(central, axis=0)) + context.rounding / (ladder[:-1, None] * size)
    estimate[~np.isfinite(estimate)] = np.inf
    best = np.argmin(estimate, axis=0)
    return ladder[best] * size, ladder[best + 1] * size


@dataclass
class _Context:
    """What the judging needs: the counted backend, the input, chunking and the tolerances."""

    counter: _Counter
    x: np.ndarray
    rows: int
    spec: _Precision
    precision: str
    note: str
    cotangent: np.ndarray | None = None
    base: np.ndarray | None = None
    rounding: float = 0.0
    rtol_override: float | None = None
    atol: float = 0.0

    def explained_at(self, points: np.ndarray) -> np.ndarray:
        """``S`` at stacked points ``(K, N, ...)``, chunked; returns ``(K, N)``."""
        k, n = points.shape[:2]
        results = []
        for segments in stacked_chunks(n, k, self.rows):
            batch = np.concatenate([points[s.copy, s.start:s.stop] for s in segments])
            cot = np.concatenate([self.cotangent[s.start:s.stop] for s in segments])
            results.append(_explained(self.counter.forward(batch), cot))
        return np.concatenate(results).reshape(k, n)

    def shifted(self, units: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """``x + h u`` and ``x - h u`` rounded to x's dtype: ``(2K, N, ...)``, pairs adjacent."""
        x64 = self.x.astype(np.float64)
        h = _per_sample(steps, self.x.ndim)
        points = np.empty((2 * len(units), *self.x.shape), dtype=self.x.dtype)
        points[0::2] = x64 + h * units
        points[1::2] = x64 - h * units
        return points

    def central(self, units: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(central, right, left) differences ``(K, N)`` and the displacements taken ``(2K, N, ...)``."""
        units = units[None] if units.ndim == self.x.ndim else units
        points = self.shifted(units, steps)
        values = self.explained_at(points)
        up, down = values[0::2], values[1::2]
        displacement = points.astype(np.float64) - self.x.astype(np.float64)
        above = _along(displacement[0::2], units)
        below = -_along(displacement[1::2], units)
        return (up - down) / (above + below), (up - self.base) / above, (self.base - down) / below, displacement

    def judge(self, families: list[_Family], grads: np.ndarray, mode: str, jvp: bool,
              h: float | None) -> GradientCheckReport:
        results, worst, n_checks, n_nonsmooth = [], _Worst(), 0, 0
        max_abs, max_rel = 0.0, 0.0
        for family in families:
            outcome = self.compare(family, grads)
            if isinstance(outcome, str):
                return self.nan_report(outcome, mode, n_checks)
            result, family_worst, errors = outcome
            worst.update(family_worst)
            results.append(result)
            n_checks += family.units.shape[0] * len(self.x)
            n_nonsmooth += result.n_nonsmooth
            max_abs, max_rel = max(max_abs, errors[0]), max(max_rel, errors[1])
        if jvp:
            consistency = self.jvp_consistency(families, grads)
            if isinstance(consistency, str):
                return self.nan_report(consistency, mode, n_checks, jvp)
            worst.update(consistency)
        eps = float(families[0].large.max())
        rtol = self._rtol(families[0].name)
        failed = worst.score > 1.0 or not all(r.passed for r in results)
        unresolved = [r.name for r in results if not r.resolved]
        if unresolved and not failed:
            worst.text = (f"inconclusive: the {' and '.join(unresolved)} checks cannot judge here: their finite "
                          "differences cross kinks of the model within the step of x (ReLU inputs at exactly 0, "
                          "max-pool windows with tied maxima) or are too uncertain; check at a nudged input "
                          "instead, e.g. x + 1e-3 * np.random.default_rng(0).standard_normal(x.shape)")
        return GradientCheckReport(not failed and not unresolved, max_abs, max_rel, worst.text, n_checks, eps, mode,
                                   jvp, rtol, self.atol, n_nonsmooth, self.precision, tuple(results),
                                   self.counter.rows, self.note, bool(unresolved) and not failed)

    def _rtol(self, family: str) -> float:
        if self.rtol_override is not None:
            return self.rtol_override
        return self.spec.rtol_random if family in ("channels", "support", "uniform") else self.spec.rtol

    def compare(self, family: _Family, grads: np.ndarray) -> Any:
        """Difference the family at both steps and judge it; a str names a NaN."""
        c_large, r_large, l_large, d_large = self.central(family.units, family.large)
        c_small, r_small, l_small, d_small = self.central(family.units, family.small)
        a_large = _claimed(grads, d_large, family.units)
        a_small = _claimed(grads, d_small, family.units)
        for values, what in ((c_large, "finite difference"), (c_small, "finite difference"), (a_small, "vjp")):
            bad = ~np.isfinite(values)
            if bad.any():
                k, i = np.argwhere(bad)[0]
                return f"sample {i}, {family.labels[k]}: {what} = {values[k, i]:.6g}"
        rtol = self._rtol(family.name)
        rounding = self.rounding / family.small  # (N,)
        uncertainty = np.abs((c_large - a_large) - (c_small - a_small)) + rounding
        error = np.abs(a_small - c_small)
        size = np.maximum(np.abs(a_small), np.abs(c_small))
        # a kink: the one-sided differences disagree beyond tolerance and their gap does not shrink with the step
        gap_large, gap_small = np.abs(r_large - l_large), np.abs(r_small - l_small)
        allowed_each = self.atol + rtol * size + uncertainty
        kink = (error > allowed_each) & (gap_small > 2 * (self.atol + rounding + rtol * size)) & \
            (gap_small > KINK_RATIO * gap_large)
        keep = ~kink
        if family.name in ("support", "uniform"):
            # judged in norm over the family's directions, relative to the size of what is measured
            norm = lambda v: np.sqrt((np.where(keep, v, 0.0) ** 2).sum(axis=0))  # noqa: E731
            total_error = norm(a_small - c_small)
            total_size = np.maximum(norm(a_small), norm(c_small))
            allowed = self.atol * np.sqrt(keep.sum(axis=0)) + rtol * total_size + norm(uncertainty)
            score = np.divide(total_error, allowed, out=np.zeros_like(total_error), where=allowed > 0)
            relative = np.divide(total_error, total_size, out=np.zeros_like(total_error), where=total_size > 0)
            detect = np.divide(allowed, total_size, out=np.zeros_like(allowed), where=total_size > 0)
            i = int(np.argmax(score))
            k = int(np.argmax(np.where(keep[:, i], np.abs(a_small[:, i] - c_small[:, i]), -1)))
            family_score = float(score[i]) if keep[:, i].any() else 0.0
        else:
            score_each = np.where(keep, error / np.where(allowed_each > 0, allowed_each, np.inf), 0.0)
            relative = np.where(keep, np.divide(error, size, out=np.zeros_like(error), where=size > 0), 0.0)
            # resolution relative to the largest derivative of the sample: a coordinate the output hardly
            # depends on does not make the whole check unable to judge
            largest = np.where(keep, size, 0.0).max(axis=0)
            detect_each = np.divide(allowed_each, largest, out=np.zeros_like(allowed_each), where=largest > 0)
            detect = np.where(keep, detect_each, 0.0).max(axis=0)
            k, i = np.unravel_index(int(np.argmax(score_each)), score_each.shape)
            family_score = float(score_each[k, i])
        claimed_name = "vjp" if family.name == "coordinates" else "<J^T v, u>"
        text = (f"sample {i}, {family.labels[k]}: {claimed_name} = {a_small[k, i]:.6g} vs finite difference = "
                f"{c_small[k, i]:.6g} (abs error {abs(a_small[k, i] - c_small[k, i]):.3g})")
        judged = keep.any(axis=0)  # per sample: some direction not set aside
        detectable = float(np.max(np.where(judged, detect, 0.0))) if judged.any() else float("inf")
        resolved = bool(judged.all()) and detectable < 1.0
        steps = (float(family.small.max()), float(family.large.max()))
        result = FamilyResult(family.name, family.units.shape[0], steps, float(np.max(relative)), detectable,
                              family_score <= 1.0, int(kink.sum()), resolved)
        family.kinks = kink
        return result, (family_score, text), (float(np.where(keep, error, 0).max()), float(np.max(relative)))

    def jvp_consistency(self, families: list[_Family], grads: np.ndarray) -> Any:
        """``<J u, v>`` from ``jvp`` against ``<u, J^T v>`` along every direction (an identity: tight tolerance)."""
        units = np.concatenate([f.units for f in families])
        labels = [label for f in families for label in f.labels]
        n, k = len(self.x), len(units)
        values = []
        for segments in stacked_chunks(n, k, self.rows):
            batch = np.concatenate([self.x[s.start:s.stop] for s in segments])
            tangents = np.concatenate([units[s.copy, s.start:s.stop] for s in segments]).astype(self.x.dtype)
            cot = np.concatenate([self.cotangent[s.start:s.stop] for s in segments])
            _, forward_mode = unpack_pair(call_backend(self.counter.backend, "jvp", batch, tangents), "jvp",
                                          self.counter.backend)
            values.append(_explained(backend_array(forward_mode, "a JVP", len(batch), self.counter.backend), cot))
        forward = np.concatenate(values).reshape(k, n)
        reverse = _along(grads[None], units.astype(self.x.dtype).astype(np.float64))
        bad = ~(np.isfinite(forward) & np.isfinite(reverse))
        if bad.any():
            j, i = np.argwhere(bad)[0]
            return f"sample {i}, {labels[j]} (jvp): <J u, v> = {forward[j, i]:.6g}"
        # at a kink forward and reverse mode may each pick a one-sided derivative: set those aside too
        kinks = np.concatenate([f.kinks for f in families])
        error = np.where(kinks, 0.0, np.abs(forward - reverse))
        allowed = self.atol + self.spec.rtol * np.maximum(np.abs(forward), np.abs(reverse)) + self.rounding
        score = error / allowed
        j, i = np.unravel_index(int(np.argmax(score)), score.shape)
        return float(score[j, i]), (f"sample {i}, {labels[j]} (jvp): <J u, v> = {forward[j, i]:.6g} vs "
                                    f"<u, J^T v> = {reverse[j, i]:.6g} (abs error {error[j, i]:.3g})")

    def nan_report(self, reason: str, mode: str, n_checks: int = 0, jvp: bool = False) -> GradientCheckReport:
        return GradientCheckReport(False, float("nan"), float("nan"), f"NaN or infinity: {reason}", n_checks, 0.0,
                                   mode, jvp, 0.0, self.atol, precision=self.precision, n_forward=self.counter.rows,
                                   note=self.note)


@dataclass
class _Worst:
    score: float = -1.0
    text: str = ""

    def update(self, candidate: tuple[float, str]) -> None:
        if candidate[0] > self.score:
            self.score, self.text = candidate


def _along(vectors: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``<vectors_k,i, units_k,i>`` over the element axes: ``(K, N)``."""
    k, n = units.shape[:2]
    return (np.broadcast_to(vectors, units.shape) * units).reshape(k, n, -1).sum(axis=2)


def _claimed(grads: np.ndarray, displacement: np.ndarray, units: np.ndarray) -> np.ndarray:
    """The claimed central difference along the displacement actually taken: ``<g, d+ - d-> / <d+ - d-, u>``."""
    span = displacement[0::2] - displacement[1::2]
    return _along(grads[None], span) / _along(span, units)

