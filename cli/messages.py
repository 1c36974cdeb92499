"""How the command line speaks: one-line notes, warnings and errors, in the words of its own flags.

The library's messages are written for Python callers and name keywords (``input_name=``,
``constant_inputs={name: array}``, ``output_name=...``); through the command line the same advice must
name the flag that does it. :func:`in_cli_terms` rewrites those phrases and folds the text onto one line;
:func:`printing_warnings` shows every warning raised while a command runs as one ``gradsal: warning:``
line, without the Python source line that ``warnings`` would print.

Notes and warnings wait in a queue until the command has something to show (:func:`flush`, called when
its first results are in and when it ends well): a command that fails prints its one error line alone.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

# (library phrase, command-line phrase), applied in order
_KEYWORDS_TO_FLAGS = (
    (re.compile(r"output_name=('[^']*'|\"[^\"]*\") or explain_logits=False"), r"--output-name \1"),
    (re.compile(r"explain_logits=False or an explicit output_name"), "--output-name"),
    (re.compile(r"output_name=('[^']*'|\"[^\"]*\")"), r"--output-name \1"),
    (re.compile(r"output_name=(\.\.\.)?"), "--output-name NAME"),
    (re.compile(r"input_name=(\.\.\.)?"), "--input-name NAME"),
    (re.compile(r"constant_inputs=\{name: array\}"), "--constant-input NAME=FILE.npy"),
    (re.compile(r"\bconstant_inputs\b"), "--constant-input"),
    (re.compile(r"\bbatch_size=(\d+)"), r"--batch-size \1"),
    (re.compile(r"pass OnnxBackend\(\.\.\., quantised='straight_through'\)"), "pass --straight-through"),
    (re.compile(r"pass fallback='finite_differences' to differentiate it numerically \(steps must then exceed "
                r"the quantisation step\)"), "differentiate it numerically from Python "
     "(OnnxBackend(..., fallback='finite_differences'))"),
    (re.compile(r"explain the logits instead \(drop the final softmax\)"),
     "explain the logits instead (--output-name NAME, the tensor before the softmax)"),
    (re.compile(r"check the target and the model \(a dead ReLU, a saturated softmax\) or the method"),
     "check --target and the model (a dead ReLU, a saturated softmax) or try another --method"),
)


def in_cli_terms(message: str) -> str:
    """``message`` on one line, with the library's keyword advice replaced by the matching flags."""
    text = " ".join(str(message).split())
    for pattern, replacement in _KEYWORDS_TO_FLAGS:
        text = pattern.sub(replacement, text)
    return text


_waiting: list[str] = []


def note(message: str, *, quiet: bool = False) -> None:
    """A one-line remark for stderr (what the command decided for the user), unless ``quiet``."""
    if not quiet:
        _waiting.append(f"gradsal: note: {in_cli_terms(message)}")


def flush() -> None:
    """Print the waiting notes and warnings on stderr, in the order they came."""
    for line in _waiting:
        print(line, file=sys.stderr)
    _waiting.clear()


def discard() -> None:
    """Forget the waiting notes and warnings (the command failed: its error line is what matters)."""
    _waiting.clear()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    text = f"gradsal: warning: {in_cli_terms(str(message))}"
    if text not in _waiting:
        _waiting.append(text)


@contextlib.contextmanager
def printing_warnings() -> Iterator[None]:
    """Inside: each distinct warning is printed once, as one line, in the command line's terms."""
    with warnings.catch_warnings():
        warnings.simplefilter("once")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.showwarning = _show_warning
        yield
