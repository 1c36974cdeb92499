"""One score per token (or byte) from attributions made at an embedding.

A model that takes integers (token ids, bytes, category codes) is differentiated at a float tensor
computed from them, typically the embedding ``E`` of shape ``(N, L, D)``: every method then returns an
attribution shaped like ``E``. :func:`token_scores` reduces it over the embedding axis to ``(N, L)``:
``"sum"`` (the default) keeps the sign and, for integrated gradients, completeness
(``sum_t score_t = S(E) - S(E_baseline)``, Sundararajan et al. 2017); ``"l2"`` is the norm
``||a_t||_2``, a magnitude without sign (as in Atanasova et al. 2020, "A Diagnostic Study of
Explainability Techniques for Text Classification").
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._validate import check_axis, check_choice
from .errors import InputError, InputTypeError

TokenReduction = Literal["sum", "l2"]
TOKEN_REDUCTIONS = ("sum", "l2")


def token_scores(attributions: np.ndarray, reduce: TokenReduction = "sum", *, axis: int = -1) -> np.ndarray:
    """Attributions at an embedding ``(N, L, D)`` -> one score per token ``(N, L)`` (float64).

    ``reduce="sum"``: ``score_t = sum_d a_{t,d}`` (signed; the IG scores then sum to the explained
    output's change from the baseline). ``reduce="l2"``: ``score_t = sqrt(sum_d a_{t,d}^2)`` (unsigned).
    ``axis`` is the embedding axis (default the last); a tensor with several feature axes, such as a
    one-hot ``(N, L, 257)`` or ``(N, L, H, D)``, is reduced over ``axis`` only.
    """
    reduce = check_choice(reduce, "reduce", TOKEN_REDUCTIONS)
    array = np.asarray(attributions)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"attributions have dtype {array.dtype}: pass the real-valued array a method "
                             "returned at the embedding.")
    if array.ndim < 2:
        raise InputError(f"attributions have shape {array.shape}: pass a batch (N, L, D) made at an embedding "
                         "(a batch axis, a token axis and the embedding axis).")
    axis = check_axis(axis, array.ndim, "axis")
    values = array.astype(np.float64)
    if reduce == "sum":
        return values.sum(axis=axis)
    return np.sqrt(np.square(values).sum(axis=axis))
