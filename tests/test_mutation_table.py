"""benchmarks/mutate.py's table must not rot: every mutant's snippet occurs exactly once in its file, the
replacement differs, the test files exist, and the names are unique."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _table() -> list[dict]:
    spec = importlib.util.spec_from_file_location("gradsal_mutate", ROOT / "benchmarks" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = _table()


def test_names_are_unique() -> None:
    names = [m["name"] for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_snippet_occurs_once_and_tests_exist(mutant: dict) -> None:
    text = (ROOT / mutant["file"]).read_text()
    assert text.count(mutant["find"]) == 1, f"{mutant['name']}: the snippet is not in {mutant['file']} exactly once"
    assert mutant["replace"] != mutant["find"]
    for test in mutant["tests"]:
        assert (ROOT / test.split("::")[0]).is_file(), test
