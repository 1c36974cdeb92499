"""Architecture builders in plain PyTorch (no weights, no torchvision).

- Benchmark-sized networks: :func:`resnet50` (He et al. 2016, bottleneck blocks ``[3, 4, 6, 3]``, 25.6M
  parameters at 1000 classes) and :func:`mobilenet_v2` (Sandler et al. 2018, inverted residuals with
  depthwise convolutions and ReLU6, 3.5M parameters), for 3x224x224 inputs.
- The shipped trained models' architectures: :class:`DigitsCNN` (1x32x32 digits) and :class:`TabularMLP`
  (30 breast-cancer features -> 2 classes), :class:`TextClassifier` (token ids -> sentiment).
- Small families (< 1M parameters, 3x64x64 or the module's ``input_shape``) exercising different ONNX
  operator mixes for the ONNX backend's benchmarks: :func:`small_resnet`, :func:`small_mobilenet`,
  :func:`ocr_style` and :func:`detector_style`. Each exports with ``torch.onnx.export`` at opset 17.

Every builder returns a freshly initialised ``nn.Module`` in training mode (call ``.eval()`` for
inference); each module carries an ``input_shape`` attribute ``(C, H, W)`` (or ``(D,)``) without the batch.
ReLUs are separate ``nn.ReLU`` modules, never in-place, so layer hooks and ReLU rules see every one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DigitsCNN",
    "TabularMLP",
    "TextClassifier",
    "detector_style",
    "mobilenet_v2",
    "ocr_style",
    "parameter_count",
    "resnet50",
    "small_mobilenet",
    "small_resnet",
]


def parameter_count(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``kernel x kernel`` convolution with "same" padding followed by batch norm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


def _initialise(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), unit batch-norm scales, small normal linear weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    """``relu(x' + 1x1 -> 3x3(stride) -> 1x1(4x width))``, with ``x'`` a strided 1x1 projection when shapes differ."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1, self.bn1 = conv_bn(in_channels, width, 1)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.relu2 = nn.ReLU()
        self.conv3, self.bn3 = conv_bn(width, out_channels, 1)
        self.downsample = (
            nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + self.downsample(x))


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool), four stages of bottleneck blocks, global average pool, linear."""

    def __init__(self, blocks: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.input_shape = (3, 224, 224)
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        stages = []
        for index, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(Bottleneck(channels, width, stride))
                channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """A ResNet-50 (He et al. 2016, "Deep residual learning"): 25,557,032 parameters at 1000 classes.

    Same layout as the usual ImageNet model (stride on the 3x3 convolution of each stage's first block),
    randomly initialised; Grad-CAM layer ``"layer4"``.
    """
    return ResNet((3, 4, 6, 3), num_classes)


# ------------------------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never more than 10% below it (MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion -> 3x3 depthwise(stride) -> linear 1x1 projection, plus ``x`` when shapes match.

    ``activation`` builds the non-linearity (ReLU6 for MobileNetV2, HardSwish for the small MobileNetV3-like
    family); ``squeeze`` > 0 adds squeeze-excitation with that reduction after the depthwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int,
                 activation: type[nn.Module] = nn.ReLU6, squeeze: int = 0) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(in_channels, hidden, 1), activation()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), activation()]
        if squeeze:
            layers.append(SqueezeExcitation(hidden, _make_divisible(hidden / squeeze)))
        layers += conv_bn(hidden, out_channels, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Stem 3x3/2 conv, 17 inverted-residual blocks, 1x1 conv to 1280 channels, pool, dropout, linear."""

    # (expansion t, output channels c, repeats n, first stride s), Sandler et al. 2018, table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int, width_mult: float) -> None:
        super().__init__()
        self.input_shape = (3, 224, 224)
        channels = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, channels, 3, 2), nn.ReLU6())]
        for expand, out, repeats, stride in self.SETTINGS:
            out = _make_divisible(out * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(nn.Sequential(*conv_bn(channels, last, 1), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """A MobileNetV2 (Sandler et al. 2018, "Inverted residuals and linear bottlenecks"): 3,504,872 parameters.

    Randomly initialised; ``width_mult`` scales every layer's channels. Grad-CAM layer ``"features.18"``.
    """
    return MobileNetV2(num_classes, width_mult)


# ------------------------------------------------------------------------------------- shipped trained models


class DigitsCNN(nn.Module):
    """The shipped digits classifier: three conv-BN-ReLU blocks (two max-pools), global average pool, linear.

    Input ``(N, in_channels, 32, 32)`` in [0, 1]: scikit-learn's 8x8 digits divided by 16 and upsampled
    bilinearly; output 10 logits. ``block3`` (8x8 feature maps) is the natural Grad-CAM layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.input_shape = (in_channels, 32, 32)
        self.block1 = nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*conv_bn(width, 2 * width, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*conv_bn(2 * width, 4 * width, 3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


class TabularMLP(nn.Module):
    """The shipped tabular classifier: ``n_features -> hidden... -> n_classes`` with ReLU between layers.

    Input: standardised features ``(x - mean) / std`` with the training split's statistics (stored in the
    reference models' metadata); output logits.
    """

    def __init__(self, n_features: int = 30, n_classes: int = 2, hidden: Sequence[int] = (32, 16)) -> None:
        super().__init__()
        self.input_shape = (n_features,)
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ------------------------------------------------------------------------------ small ONNX benchmark families


class BasicBlock(nn.Module):
    """``relu(x' + 3x3 -> 3x3)`` (two conv-BN pairs), ``x'`` a strided 1x1 projection when shapes differ."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, out_channels, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(out_channels, out_channels, 3)
        self.shortcut = (
            nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """3x3 stem, three stages of two basic blocks (16, 32, 64 channels), global average pool, linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.input_shape = (3, 64, 64)
        self.stem = nn.Sequential(*conv_bn(3, 16, 3), nn.ReLU())
        blocks = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def small_resnet(num_classes: int = 10) -> nn.Module:
    """A CIFAR-style ResNet with six basic blocks (175k parameters); ops Conv, BatchNorm, Relu, Add, Gemm."""
    return SmallResNet(num_classes)


class SqueezeExcitation(nn.Module):
    """``x * hardsigmoid(W2 relu(W1 mean_hw(x)))`` (Hu et al. 2018), with 1x1 convolutions as ``W1``, ``W2``."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class SmallMobileNet(nn.Module):
    """MobileNetV3-like: HardSwish stem, inverted residuals (depthwise, squeeze-excitation), pool, linear."""

    # (output channels, stride, expansion, squeeze-excitation reduction or 0)
    SETTINGS = ((16, 1, 1, 4), (24, 2, 4, 0), (24, 1, 3, 0), (40, 2, 4, 4), (40, 1, 4, 4), (64, 2, 4, 4),
                (64, 1, 4, 4))

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.input_shape = (3, 64, 64)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, 16, 3, 2), nn.Hardswish())]
        channels = 16
        for out, stride, expand, squeeze in self.SETTINGS:
            layers.append(InvertedResidual(channels, out, stride, expand, nn.Hardswish, squeeze))
            channels = out
        layers.append(nn.Sequential(*conv_bn(channels, 256, 1), nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(256, 128), nn.Hardswish(), nn.Linear(128, num_classes))
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def small_mobilenet(num_classes: int = 10) -> nn.Module:
    """A small MobileNetV3-like network (201k parameters): depthwise Conv, HardSwish, HardSigmoid, Mul, Add."""
    return SmallMobileNet(num_classes)


class ManualLayerNorm(nn.Module):
    """Layer norm over the last axis written out, ``(x - mean) / sqrt(mean((x - mean)^2) + eps) * g + b``.

    Written with ``mean``/``pow``/``sqrt`` so that the ONNX export has ReduceMean, Sub, Pow, Add, Sqrt and
    Div nodes (what older exporters and many real models contain) instead of one LayerNormalization.
    """

    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = centred.pow(2).mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(variance + self.eps) * self.weight + self.bias


class OcrStyle(nn.Module):
    """Text-line recogniser shape: conv stack collapsing the height, columns as a sequence, per-step logits."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.input_shape = (3, 32, 128)
        stack: list[nn.Module] = []
        channels = 3
        for width, pool in ((32, (2, 2)), (64, (2, 2)), (96, (2, 1)), (96, (2, 1))):
            stack += [*conv_bn(channels, width, 3), nn.ReLU(), nn.MaxPool2d(pool)]
            channels = width
        self.convs = nn.Sequential(*stack)  # (N, 96, 2, 32)
        self.embed = nn.Parameter(torch.randn(channels * 2, hidden) / (channels * 2) ** 0.5)
        self.norm = ManualLayerNorm(hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.relu = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.convs(x)
        n, c, h, w = features.shape
        sequence = features.reshape(n, c * h, w).transpose(1, 2)  # (N, T = W, C * H)
        steps = self.norm(torch.matmul(sequence, self.embed))
        logits = self.head(self.relu(self.mix(steps)))  # (N, T, classes)
        return logits.flatten(1)


def ocr_style(num_classes: int = 37, hidden: int = 128) -> nn.Module:
    """OCR-like network on 3x32x128 text lines (204k parameters); output ``(N, 32 * num_classes)``.

    Conv-BN-ReLU-MaxPool stack -> Reshape/Transpose to a 32-step sequence -> MatMul with a weight ->
    hand-written layer norm (ReduceMean, Pow, Sqrt, Div) -> Linear, ReLU -> per-step Linear; the per-step
    logits are flattened so the output is 2-D like a classifier's.
    """
    return OcrStyle(num_classes, hidden)


class DetectorStyle(nn.Module):
    """Two-scale detector shape: strided conv backbone, channel split, nearest/bilinear upsampling, heads."""

    def __init__(self, anchors: int) -> None:
        super().__init__()
        self.input_shape = (3, 64, 64)
        self.stage1 = nn.Sequential(*conv_bn(3, 16, 3, 2), nn.ReLU(), *conv_bn(16, 32, 3, 2), nn.ReLU())  # 16x16
        self.stage2 = nn.Sequential(*conv_bn(32, 64, 3, 2), nn.ReLU())  # 8x8
        self.stage3 = nn.Sequential(*conv_bn(64, 128, 3, 2), nn.ReLU())  # 4x4
        self.fuse = nn.Sequential(*conv_bn(32 + 32 + 32, 64, 3), nn.ReLU())  # fine, left, right
        self.objectness = nn.Conv2d(64, anchors, 1)
        self.boxes = nn.Conv2d(64, 4 * anchors, 1)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stage1(x)
        middle = self.stage2(fine)
        coarse = self.stage3(middle)
        left, right = torch.chunk(middle, 2, dim=1)  # two 32-channel branches
        left = F.interpolate(left, scale_factor=2.0, mode="nearest")
        coarse_a, coarse_b = torch.split(coarse, [64, 64], dim=1)
        right = right + F.interpolate(coarse_a.mean(dim=1, keepdim=True), scale_factor=2.0, mode="nearest")
        right = F.interpolate(right, scale_factor=2.0, mode="bilinear", align_corners=False)
        context = F.interpolate(coarse_b, scale_factor=4.0, mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([fine, left, right], dim=1)) + context
        heads = torch.cat([torch.sigmoid(self.objectness(fused)), torch.sigmoid(self.boxes(fused))], dim=1)
        return heads.flatten(1)


def detector_style(anchors: int = 3) -> nn.Module:
    """Detector-like network on 3x64x64 (154k parameters); output ``(N, 5 * anchors * 16 * 16)`` in (0, 1).

    Backbone to 16x16, 8x8 and 4x4 maps; the 8x8 map is split with ``torch.chunk`` and the 4x4 map with
    ``torch.split``; branches are upsampled with nearest (Resize nearest) and bilinear (Resize linear)
    interpolation, concatenated (Concat), fused, and read by sigmoid objectness and box heads.
    """
    return DetectorStyle(anchors)


class TextClassifier(nn.Module):
    """Token ids ``(N, L)`` -> class logits: an embedding, a 1-D convolution over neighbouring tokens, tanh, a
    mean over the non-padding tokens and a linear head.

    The convolution (``kernel`` tokens wide) lets a token's contribution depend on its neighbours ("not
    good" is negative); padding tokens (``pad_id``) are left out of the mean, so any length works.
    """

    def __init__(self, vocab_size: int, dim: int = 16, hidden: int = 32, num_classes: int = 2, kernel: int = 5,
                 pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, dim)
        self.conv = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.head = nn.Linear(hidden, num_classes)
        self.input_shape = (None,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(ids)
        mask = (ids != self.pad_id).unsqueeze(-1).to(embedded.dtype)
        features = torch.tanh(self.conv(embedded.transpose(1, 2))).transpose(1, 2)
        pooled = (features * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)
