"""gradsal.backends: framework adapters (NumPy callables, PyTorch, ONNX), each in its own module."""

from ._at_tensor import TensorBackend, at_tensor

__all__ = ["TensorBackend", "at_tensor"]
