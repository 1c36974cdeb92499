"""Real-model tests need onnxruntime and the corpus (tests/corpus.py skips without it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent.parent))
