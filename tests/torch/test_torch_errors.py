"""Bad models and bad inputs: each a typed gradsal error whose message says how to fix it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradsal.core as gs
from gradsal.backends.torch import TorchBackend

X = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
ONES = np.ones((2, 2), dtype=np.float32)


class _Returns(nn.Module):
    """Runs a linear layer, then hands its result to ``wrap``."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.linear(x), x)


@pytest.mark.parametrize("wrap, fix", [
    (lambda y, x: (y, y), "out[0]"),
    (lambda y, x: {"logits": y}, "out['logits']"),
    (lambda y, x: y.detach().numpy(), "output="),
])
def test_non_tensor_output(wrap, fix) -> None:
    with pytest.raises(gs.ModelError, match="not a tensor") as info:
        TorchBackend(_Returns(wrap)).vjp(X, ONES)
    assert fix in str(info.value)


@pytest.mark.parametrize("wrap", [
    lambda y, x: y.detach(),                     # cut from the graph
    lambda y, x: torch.zeros_like(y) + 1.0,      # no dependence at all
])
def test_output_independent_of_the_input(wrap) -> None:
    with pytest.raises(gs.ModelError, match="does not depend on the input"):
        TorchBackend(_Returns(wrap)).vjp(X, ONES)


def test_output_depending_on_parameters_only() -> None:
    class ParamsOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.w.expand(len(x), 2) * 2.0

    model = ParamsOnly()
    with pytest.raises(gs.ModelError, match="does not depend on the input"):
        TorchBackend(model).vjp(X, ONES)
    assert model.w.requires_grad and model.w.grad is None


def test_integer_output_and_missing_batch_axis() -> None:
    with pytest.raises(gs.ModelError, match="no gradient"):
        TorchBackend(_Returns(lambda y, x: y.argmax(dim=1))).forward(X)
    with pytest.raises(gs.ModelError, match="one output row per input"):
        TorchBackend(_Returns(lambda y, x: y.sum())).forward(X)


@pytest.mark.parametrize("x", [np.ones((2, 3), dtype=np.int64), np.ones((2, 3), dtype=bool),
                               np.ones((2, 3), dtype=np.complex64)])
def test_non_float_input(x) -> None:
    with pytest.raises(gs.InputTypeError, match="float"):
        TorchBackend(nn.Linear(3, 2)).vjp(x, ONES)


def test_empty_or_scalar_input() -> None:
    with pytest.raises(gs.InputError, match="non-empty batch"):
        TorchBackend(nn.Linear(3, 2)).forward(np.zeros((0, 3), np.float32))
    with pytest.raises(gs.InputError, match="non-empty batch"):
        TorchBackend(nn.Linear(3, 2)).forward(np.float32(1.0))


def test_unknown_layer_lists_close_matches() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    model.add_module("head", nn.Linear(4, 2))
    with pytest.raises(gs.ModelError, match=r"no layer named 'featurs\.0'") as info:
        TorchBackend(model).layer_vjp(X, "featurs.0", ONES)
    assert "features.0" in str(info.value) and "named_modules" in str(info.value)


def test_layer_that_runs_twice_or_never() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.linear(self.linear(x)))

    backend = TorchBackend(Shared())
    with pytest.raises(gs.ModelError, match="ran 2 times"):
        backend.layer_vjp(X, "linear", ONES)
    with pytest.raises(gs.ModelError, match="did not run"):
        backend.layer_vjp(X, "unused", ONES)


def test_layer_with_a_tuple_output() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 2, batch_first=True)

        def forward(self, x):
            return self.rnn(x[:, None, :])[0][:, 0, :]

    with pytest.raises(gs.ModelError, match="not a float tensor"):
        TorchBackend(Recurrent()).layer_vjp(X, "rnn", ONES)


def test_cotangent_and_tangent_shapes() -> None:
    backend = TorchBackend(nn.Linear(3, 2))
    with pytest.raises(gs.InputError, match=r"does not match the model output shape \(2, 2\)"):
        backend.vjp(X, np.ones((2, 5), np.float32))
    with pytest.raises(gs.InputError, match="one cotangent row per input"):
        backend.vjp(X, np.ones((3, 2), np.float32))
    with pytest.raises(gs.InputTypeError, match="floating-point"):
        backend.vjp(X, np.ones((2, 2), np.int64))
    with pytest.raises(gs.InputError, match="shaped like x"):
        backend.jvp(X, np.ones((2, 4), np.float32))


def test_model_failure_is_wrapped_with_the_model_message() -> None:
    with pytest.raises(gs.BackendError, match=r"mat1 and mat2 shapes cannot be multiplied") as info:
        TorchBackend(nn.Linear(5, 2)).vjp(X, ONES)
    assert "(2, 3)" in str(info.value) and "shape" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_failure_in_output_callable() -> None:
    with pytest.raises(gs.ModelError, match="output= callable failed"):
        TorchBackend(nn.Linear(3, 2), output=lambda out: out.logits).forward(X)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(gs.InputTypeError):
        TorchBackend(42)
    with pytest.raises(gs.InputTypeError, match="output="):
        TorchBackend(nn.Linear(3, 2), output="logits")
    with pytest.raises(gs.InputError, match="batch_size"):
        TorchBackend(nn.Linear(3, 2), batch_size=0)
    with pytest.raises(gs.InputError, match="bfloat16"):
        TorchBackend(nn.Linear(3, 2), dtype=torch.int8)
    with pytest.raises(gs.InputError, match="guided"):
        TorchBackend(nn.Linear(3, 2)).with_relu_rule("excitation")
    with pytest.raises(gs.InputError, match="not a torch device"):
        TorchBackend(nn.Linear(3, 2), device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_a_gpu() -> None:
    with pytest.raises(gs.InputError, match="no CUDA GPU"):
        TorchBackend(nn.Linear(3, 2), device="cuda")


def test_plain_callable_has_no_layers_or_randomization() -> None:
    backend = TorchBackend(lambda t: t * 2)
    with pytest.raises(gs.UnsupportedModelError, match=r"nn\.Module"):
        backend.layer_vjp(X, "0", ONES)
    with pytest.raises(gs.UnsupportedModelError, match=r"nn\.Module"):
        backend.randomized(["0"], seed=0)


def test_training_mode_warns_only_with_stochastic_layers() -> None:
    with pytest.warns(UserWarning, match=r"training mode.*model\.eval\(\)"):
        TorchBackend(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()).forward(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchBackend(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).eval()).forward(X)
        TorchBackend(nn.Sequential(nn.Linear(3, 2)).train()).forward(X)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_module_imports_without_torch_and_names_the_extra_when_missing() -> None:
    result = _run_python("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import gradsal.backends.torch as bt
        assert "torch" in sys.modules and sys.modules["torch"] is None
        assert not bt.plugin.accepts(object())
        try:
            bt.TorchBackend(lambda t: t)
        except ImportError as exc:
            from gradsal.core import MissingDependencyError
            assert isinstance(exc, MissingDependencyError), type(exc)
            print(exc)
        """)
    assert result.returncode == 0, result.stderr
    assert "pip install 'gradsal[torch]'" in result.stdout


def test_importing_the_backend_module_does_not_import_torch() -> None:
    result = _run_python("""
        import sys
        import gradsal.backends.torch
        print("torch" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_layer_gradients_and_randomization_name_the_way_out() -> None:
    """Hooks and deep copies do not work on TorchScript: a typed error naming the eager module and ONNX,
    where torch would raise a RuntimeError from inside register_forward_hook or requires_grad_."""
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    backend = TorchBackend(scripted)
    with pytest.raises(gs.UnsupportedModelError, match=r"eager nn.Module.*OnnxBackend"):
        backend.layer_vjp(X, "0", np.ones((2, 4), np.float32))
    with pytest.raises(gs.UnsupportedModelError, match=r"eager nn.Module.*OnnxBackend"):
        backend.randomized(["0"], seed=0)
    with pytest.raises(gs.UnsupportedModelError, match=r"eager nn.Module.*OnnxBackend"):
        gs.grad_cam(backend, X, 0, layer="0")
