"""gradsal.backends: framework adapters (NumPy callables, PyTorch, ONNX), each in its own module."""
