"""The ``stacklevel`` that makes a warning point at the user's code rather than at gradsal's internals."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by its caller that points at the first frame outside
    gradsal (and contextlib), so a warning names the user's line rather than gradsal's internals."""
    package = Path(__file__).resolve().parent.parent  # the directory holding core/ and backends/
    ours = (str(package / "core"), str(package / "backends"), contextlib.__file__)
    frame, level = sys._getframe(1), 1  # the function calling warnings.warn is stacklevel 1
    while frame is not None and frame.f_code.co_filename.startswith(ours):
        frame, level = frame.f_back, level + 1
    return level
