"""One table of several attribution methods on the same inputs: time, deletion / insertion AUC
(Petsiuk, Das & Saenko 2018; :mod:`gradsal.core.faithfulness`) and, optionally, the summary Spearman
correlation of the model randomisation test (Adebayo et al. 2018; :mod:`gradsal.core.randomization`).

A row ranking the pixels at random gives the level a useful map must beat. The target is resolved once,
on the original model and input, and passed to every method as the cotangent, so all rows explain the
same output.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._validate import as_float_batch
from .batching import resolve_batch_size
from .errors import InputError
from .faithfulness import PerturbationCurve, deletion_curve, insertion_curve, unit_shape
from .methods import DEFAULT_METHODS, Method, method_options, resolve_method, run_method
from .protocol import SupportsRandomization
from .randomization import (
    MODES,
    RandomizationMode,
    RandomizationResult,
    check_layers,
    check_threshold,
    randomization_result,
    randomized_steps,
)
from .registry import as_backend
from .similarity import explanation_map
from .targets import target_cotangent


@dataclass(frozen=True)
class MethodScores:
    """One method's row of :class:`MethodComparison`."""

    method: str
    seconds: float
    deletion: PerturbationCurve
    insertion: PerturbationCurve
    randomization: RandomizationResult | None = None

    def as_dict(self) -> dict[str, Any]:
        rand = self.randomization
        return {"method": self.method, "time_s": self.seconds, "deletion_auc": self.deletion.mean_auc,
                "insertion_auc": self.insertion.mean_auc,
                "randomization_spearman": None if rand is None else rand.summary_spearman,
                "randomization_flagged": None if rand is None else rand.flagged}


@dataclass(frozen=True)
class MethodComparison:
    """The table of :func:`compare_methods`: ``rows`` per method, and ``notes`` (e.g. a skipped check)."""

    rows: tuple[MethodScores, ...]
    step: float
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (per method: time_s, deletion_auc, insertion_auc, randomization_spearman)."""
        return {"step": self.step, "methods": [row.as_dict() for row in self.rows], "notes": list(self.notes)}

    def curves(self) -> dict[str, tuple[PerturbationCurve, PerturbationCurve]]:
        """``{method: (deletion, insertion)}``, as :func:`~gradsal.core.faithfulness.plot_curves` takes it."""
        return {row.method: (row.deletion, row.insertion) for row in self.rows}

    def to_text(self) -> str:
        """The table as fixed-width text."""
        header = ("method", "time (s)", "deletion AUC (lower better)", "insertion AUC (higher better)",
                  "randomisation Spearman")
        body = [(row.method, f"{row.seconds:.3f}", f"{row.deletion.mean_auc:.4g}", f"{row.insertion.mean_auc:.4g}",
                 _randomization_cell(row.randomization)) for row in self.rows]
        widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                           enumerate(zip(line, widths, strict=True))) for line in (header, *body)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _randomization_cell(result: RandomizationResult | None) -> str:
    if result is None:
        return "-"
    return f"{result.summary_spearman:.3f}" + (" FLAGGED" if result.flagged else "")


def compare_methods(
    model: Any,
    x: np.ndarray,
    target: Any = None,
    *,
    methods: Sequence[Method] | Mapping[str, Method] = DEFAULT_METHODS,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    step: float = 0.05,
    deletion_baseline: Any = "zero",
    insertion_baseline: Any = "blur",
    layers: Sequence[str] | None = None,
    randomization: RandomizationMode = "cascading",
    threshold: float = 0.5,
    seed: int = 0,
    random_reference: bool = True,
    score: Literal["explained", "probability"] = "explained",
    batch_size: int | None = None,
) -> MethodComparison:
    """Time, deletion AUC, insertion AUC and (optionally) randomisation correlation of several methods.

    ``methods``: names or callables (labelled by name), or a mapping ``{label: method}``; ``method_kwargs``
    ``{label: {...}}`` per method. Each map is ``max_c |attributions|``; the curves use ``step``,
    ``deletion_baseline``, ``insertion_baseline`` and ``score`` (see :func:`~gradsal.core.deletion_curve`). When
    ``layers`` are given and the backend supports randomisation, :func:`model_randomization_test`
    (``randomization`` mode) adds its summary Spearman correlation (lower is better); otherwise a note
    says why the column is empty. ``random_reference`` adds a row ranking the pixels at random (seeded),
    the level a useful map must beat. The target is resolved once, on the original model.
    """
    backend = as_backend(model)
    x = as_float_batch(x)
    cotangent = target_cotangent(backend, x, target, resolve_batch_size(batch_size, x[0].nbytes))
    labelled = _labelled_methods(methods)
    randomize = layers is not None and isinstance(backend, SupportsRandomization)
    notes = [] if layers is None or randomize else [
        f"randomisation skipped: {type(backend).__name__} lacks randomized(layers, seed)"]
    names = check_layers(layers) if randomize else []
    threshold = check_threshold(threshold)
    if randomization not in MODES:
        raise InputError(f"randomization={randomization!r} is not supported: use 'cascading' or 'independent'.")
    curves = functools.partial(_curves, backend, x, cotangent, deletion_baseline, insertion_baseline,
                               {"step": step, "batch_size": batch_size, "seed": seed, "score": score})
    results = []
    for label, method in labelled:
        name, function = resolve_method(method)
        options = method_options(method, (method_kwargs or {}).get(label), batch_size)
        start = time.perf_counter()
        unit_map = explanation_map(run_method(function, backend, x, cotangent, options), x)
        seconds = time.perf_counter() - start
        rand = None
        if randomize:
            explain = functools.partial(run_method, function, x=x, cotangent=cotangent, options=options)
            steps = randomized_steps(backend, explain, x, unit_map, names, randomization, seed, "gaussian")
            rand = randomization_result(name, randomization, threshold, unit_map, steps)
        results.append(MethodScores(label, seconds, *curves(unit_map), rand))
    if random_reference:
        ranking = np.random.default_rng(seed).random(unit_shape(x))
        results.append(MethodScores("random ranking", 0.0, *curves(ranking)))
    return MethodComparison(tuple(results), float(step), tuple(notes))


def _curves(backend: Any, x: np.ndarray, cotangent: np.ndarray, deletion_baseline: Any, insertion_baseline: Any,
            options: dict, unit_map: np.ndarray) -> tuple[PerturbationCurve, PerturbationCurve]:
    deletion = deletion_curve(backend, x, unit_map, cotangent, baseline=deletion_baseline, **options)
    insertion = insertion_curve(backend, x, unit_map, cotangent, baseline=insertion_baseline, **options)
    return deletion, insertion


def _labelled_methods(methods: Any) -> list[tuple[str, Method]]:
    if isinstance(methods, Mapping):
        pairs = [(str(label), method) for label, method in methods.items()]
    elif isinstance(methods, (str, bytes)) or callable(methods):
        pairs = [(resolve_method(methods)[0], methods)]
    elif isinstance(methods, Sequence) and methods:
        pairs = [(resolve_method(method)[0], method) for method in methods]
    else:
        raise InputError(f"methods must be a non-empty list of method names or callables, or a dict {{label: "
                         f"method}}, got {methods!r}: e.g. methods=['vanilla_gradient', 'integrated_gradients'].")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise InputError(f"methods have repeated labels {labels}: pass a dict {{label: method}} to name them apart.")
    return pairs
