"""gradsal.core and the NumPy backend work without importing any deep-learning framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import gradsal.core as gs
    from gradsal.backends.numpy import FunctionBackend

    W = np.random.default_rng(0).normal(size=(12, 3))
    x = np.random.default_rng(1).normal(size=(2, 3, 2, 2))
    backend = FunctionBackend(lambda z: z.reshape(len(z), -1) @ W, grad=lambda z, v: (v @ W.T).reshape(z.shape))
    maps = gs.to_saliency_map(gs.vanilla_gradient(backend, x))
    assert maps.shape == (2, 2, 2) and maps.max() == 1.0
    gs.smoothgrad(backend, x, n_samples=4, seed=0)
    gs.integrated_gradients(backend, x, n_steps=4, return_delta=True)
    assert gs.check_gradients(backend, x).passed
    # a plain callable goes through the registry, which asks every installed backend plugin
    gs.to_saliency_map(gs.vanilla_gradient(lambda z: z.reshape(len(z), -1) @ W, x))
    loaded = sorted(m for m in ("torch", "onnxruntime", "onnx", "PIL") if m in sys.modules)
    print("LOADED", loaded)
    assert "torch" not in sys.modules and "onnxruntime" not in sys.modules, loaded
""")


def test_core_and_numpy_backend_import_no_framework() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED" in result.stdout
