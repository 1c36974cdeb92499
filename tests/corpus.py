"""Where the tests find data they do not ship: the real-model corpus and ONNX's node conformance tests.

Both are fetched by scripts beside the repository (``../shared/tools/fetch-real-models DIR`` and
``../shared/tools/fetch-onnx-node-tests DIR``) into ``$GRADSAL_CORPUS_DIR`` (default ``.cache/corpus`` in
the repository): ``real-models/`` holds the model files, ``onnx-node/node/`` one folder per conformance
test. A test that needs them skips, with the command that fetches them, when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("GRADSAL_CORPUS_DIR", REPO / ".cache" / "corpus"))
REAL_MODELS = CORPUS / "real-models"
NODE_TESTS = CORPUS / "onnx-node" / "node"


def real_model(name: str) -> Path:
    """The path of one corpus model (``open_nsfw.onnx``, ...), or a skip saying how to fetch it."""
    path = REAL_MODELS / name
    if not path.is_file():
        pytest.skip(f"real-model corpus absent ({path}): run ../shared/tools/fetch-real-models {REAL_MODELS}")
    return path


def node_tests_dir() -> Path:
    """The folder of ONNX's node conformance tests, or a skip saying how to fetch it."""
    if not NODE_TESTS.is_dir():
        pytest.skip(f"ONNX node tests absent ({NODE_TESTS}): run ../shared/tools/fetch-onnx-node-tests "
                    f"{NODE_TESTS.parent}")
    return NODE_TESTS
