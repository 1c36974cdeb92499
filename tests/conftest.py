"""Shared test configuration: hypothesis profiles and a GPU marker.

Profiles: ``ci`` (default; few examples, derandomized, no deadline, so the suite stays under 10 minutes
on 2 cores) and ``dev`` (thorough). Choose with ``HYPOTHESIS_PROFILE=dev python -m pytest``.

Tests marked ``full`` (the whole real-model corpus, every ONNX conformance test, long property runs) are
skipped unless ``--full`` is given; a representative slice of each runs by default.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked full (whole real-model corpus and conformance suite)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--full"):
        skip_full = pytest.mark.skip(reason="part of the full run: python -m pytest --full")
        for item in items:
            if "full" in item.keywords:
                item.add_marker(skip_full)
    if _cuda_available():
        return
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
