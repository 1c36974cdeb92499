"""Sanity checks for saliency maps, built on the backend protocol only (so they work for every backend).

This module gathers them under one name; each lives in a file of its own:

- :mod:`~gradsal.core.randomization`: :func:`model_randomization_test` (Adebayo et al. 2018), an explanation
  of a model should change when the model's parameters are re-initialised.
- :mod:`~gradsal.core.invariance`: :func:`input_invariance` (Kindermans et al. 2017), an explanation should
  not change on ``f'(x) = f(x - c)`` at ``x + c``.
- :mod:`~gradsal.core.completeness`: :func:`completeness`, Integrated Gradients' attributions should add up
  to ``S(x) - S(baseline)`` (Sundararajan et al. 2017).
- :mod:`~gradsal.core.comparison`: :func:`compare_methods`, one table of time, deletion / insertion AUC and
  randomisation correlation per method.
- :mod:`~gradsal.core.similarity`: :func:`spearman_correlation` and :func:`ssim` (Wang et al. 2004).
- :mod:`~gradsal.core.methods`: the table of methods a ``method`` name is looked up in
  (:func:`resolve_method`); a ``method`` may also be a callable
  ``method(backend, x, target, **method_kwargs) -> attributions``.
"""

from __future__ import annotations

from .comparison import MethodComparison, MethodScores, compare_methods
from .completeness import CompletenessResult, completeness
from .invariance import InvarianceResult, input_invariance, shifted_backend
from .methods import DEFAULT_METHODS, METHOD_NAMES, Method, resolve_method
from .randomization import RandomizationMode, RandomizationResult, RandomizationStep, model_randomization_test
from .similarity import Window, explanation_map, rank_average, spearman_correlation, ssim

__all__ = [
    "DEFAULT_METHODS",
    "METHOD_NAMES",
    "CompletenessResult",
    "InvarianceResult",
    "Method",
    "MethodComparison",
    "MethodScores",
    "RandomizationMode",
    "RandomizationResult",
    "RandomizationStep",
    "Window",
    "compare_methods",
    "completeness",
    "explanation_map",
    "input_invariance",
    "model_randomization_test",
    "rank_average",
    "resolve_method",
    "shifted_backend",
    "spearman_correlation",
    "ssim",
]
