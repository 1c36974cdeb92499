"""Architecture builders: sizes against published parameter counts, shapes, ONNX export at opset 17.

ResNet-50 and MobileNetV2 parameter counts are compared with the published ones (torchvision's model
documentation: 25,557,032 and 3,504,872 at 1000 classes), which pins the layouts block by block.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from gradsal.reference_models import architectures  # noqa: E402

SMALL_FAMILIES = ("small_resnet", "small_mobilenet", "ocr_style", "detector_style")


def test_resnet50_has_the_published_size_and_output():
    torch.manual_seed(0)
    model = architectures.resnet50()
    assert architectures.parameter_count(model) == 25_557_032
    assert sum(isinstance(m, architectures.Bottleneck) for m in model.modules()) == 3 + 4 + 6 + 3
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_mobilenet_v2_has_the_published_size_and_layers():
    model = architectures.mobilenet_v2()
    assert architectures.parameter_count(model) == 3_504_872
    assert sum(isinstance(m, nn) for m in model.modules() for nn in [torch.nn.ReLU6]) == 35
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_num_classes_is_honoured():
    assert architectures.resnet50(num_classes=7).fc.out_features == 7
    assert architectures.mobilenet_v2(num_classes=5).classifier[-1].out_features == 5


def export(module, x) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), buffer, opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamo=False)
    return buffer.getvalue()


@pytest.mark.parametrize("name", SMALL_FAMILIES)
def test_small_families_are_small_2d_and_export_to_onnx(name):
    import onnx

    torch.manual_seed(0)
    module = getattr(architectures, name)().eval()
    assert 10_000 < architectures.parameter_count(module) < 1_000_000
    x = torch.rand(2, *module.input_shape)
    with torch.no_grad():
        expected = module(x).numpy()
    assert expected.ndim == 2 and len(expected) == 2
    model_bytes = export(module, x)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4, rtol=1e-4)
    ops = {n.op_type for n in onnx.load_from_string(model_bytes).graph.node}
    wanted = {
        "small_resnet": {"Conv", "Relu", "Add", "Gemm"},
        "small_mobilenet": {"Conv", "HardSwish", "HardSigmoid", "Mul"},
        "ocr_style": {"Transpose", "MatMul", "ReduceMean", "Pow", "Sqrt", "Div"},
        "detector_style": {"Resize", "Concat", "Sigmoid", "Split"},
    }[name]
    assert wanted <= ops, wanted - ops


def test_small_mobilenet_uses_depthwise_convolutions_and_squeeze_excitation():
    module = architectures.small_mobilenet()
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in module.modules())
    assert any(isinstance(m, architectures.SqueezeExcitation) for m in module.modules())


def test_detector_upsamples_with_nearest_and_bilinear():
    import onnx

    module = architectures.detector_style().eval()
    model = onnx.load_from_string(export(module, torch.rand(1, *module.input_shape)))
    modes = {a.s.decode() for n in model.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"}
    assert modes == {"nearest", "linear"}


def test_manual_layer_norm_matches_torch_layer_norm():
    torch.manual_seed(0)
    norm = architectures.ManualLayerNorm(12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
        x = torch.randn(3, 5, 12, dtype=torch.float64)
        expected = torch.nn.functional.layer_norm(x, (12,), norm.weight.double(), norm.bias.double(), norm.eps)
        torch.testing.assert_close(norm.double()(x), expected)


def test_trained_architectures_have_expected_layers():
    cnn = architectures.DigitsCNN()
    kinds = {type(m) for m in cnn.modules()}
    assert {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Linear} <= kinds
    with torch.no_grad():
        assert cnn.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 10)
        assert architectures.TabularMLP().eval()(torch.rand(3, 30)).shape == (3, 2)


def test_lazy_exports_from_the_package():
    import gradsal.reference_models as rm

    assert rm.resnet50 is architectures.resnet50 and rm.DigitsCNN is architectures.DigitsCNN
    with pytest.raises(AttributeError):
        _ = rm.no_such_thing
