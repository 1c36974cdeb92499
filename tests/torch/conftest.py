"""PyTorch backend tests need torch; the model helpers live beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.nn")  # "torch.nn", not "torch": tests/torch itself would satisfy "import torch"
sys.path.insert(0, str(Path(__file__).parent))
