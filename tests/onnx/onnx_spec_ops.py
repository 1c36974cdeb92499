"""ONNX operators written again from the spec (onnx.ai/onnx/operators) in torch float64, as references for
gradsal's rules. Each takes the attributes explicitly: tests pass either the values they set on the node or
the spec's defaults read from ``onnx.defs`` (see ``float64_reference.schema_default``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

T = torch.Tensor


# ------------------------------------------------------------------------------------------ pointwise

def selu(x: T, alpha: float, gamma: float) -> T:
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def elu(x: T, alpha: float) -> T:
    return torch.where(x > 0, x, alpha * torch.expm1(x))


def celu(x: T, alpha: float) -> T:
    return torch.clamp(x, min=0) + torch.clamp(alpha * torch.expm1(x / alpha), max=0)


def leaky_relu(x: T, alpha: float) -> T:
    return torch.where(x > 0, x, alpha * x)


def hard_sigmoid(x: T, alpha: float, beta: float) -> T:
    return torch.clamp(alpha * x + beta, 0, 1)


def hard_swish(x: T) -> T:
    return x * torch.clamp(x / 6 + 0.5, 0, 1)


def gelu(x: T, approximate: str) -> T:
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


UNARY: dict[str, object] = {
    "Identity": lambda x: x * 1,
    "Neg": lambda x: -x,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": lambda x: 1 / x,
    "Abs": torch.abs,
    "Sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "Tanh": torch.tanh,
    "Softplus": lambda x: torch.log1p(torch.exp(x)),
    "Softsign": lambda x: x / (1 + torch.abs(x)),
    "Erf": torch.erf,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Relu": lambda x: torch.where(x > 0, x, 0 * x),
    "HardSwish": hard_swish,
}


# --------------------------------------------------------------------------------- spatial operators

def _pads_lr(pads: list[int]) -> tuple[int, ...]:
    """ONNX pads [h_begin, w_begin, h_end, w_end] as F.pad's (w_begin, w_end, h_begin, h_end)."""
    return (pads[1], pads[3], pads[0], pads[2])


def conv(x: T, w: T, strides: list[int], pads: list[int], dilations: list[int], group: int) -> T:
    return F.conv2d(F.pad(x, _pads_lr(pads)), w, stride=strides, dilation=dilations, groups=group)


def conv_transpose(x: T, w: T, strides: list[int], pads: list[int], dilations: list[int], group: int,
                   output_padding: list[int]) -> T:
    """Full transposed convolution, ``output_padding`` zeros appended at the end of each axis, then
    ``pads`` cropped from both ends (the spec's output shape for auto_pad NOTSET)."""
    full = F.conv_transpose2d(x, w, stride=strides, dilation=dilations, groups=group)
    full = F.pad(full, (0, output_padding[1], 0, output_padding[0]))
    h, wd = full.shape[-2:]
    return full[..., pads[0]:h - pads[2], pads[1]:wd - pads[3]]


def instance_normalization(x: T, scale: T, bias: T, epsilon: float) -> T:
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + epsilon) * scale[:, None, None] + bias[:, None, None]


def average_pool(x: T, kernel: list[int], strides: list[int], pads: list[int], count_include_pad: int) -> T:
    """Window sums of the zero-padded input divided by the window size (pads counted) or by the number
    of real cells in the window (pads not counted)."""
    padded = F.pad(x, _pads_lr(pads))
    size = kernel[0] * kernel[1]
    sums = F.avg_pool2d(padded, kernel, strides) * size
    if count_include_pad:
        return sums / size
    real = F.pad(torch.ones_like(x[:1, :1]), _pads_lr(pads))
    return sums / (F.avg_pool2d(real, kernel, strides) * size)


def _source_coordinate(i: int, n_in: int, n_out: int, scale: float, mode: str) -> float:
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "align_corners":
        return 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)
    if mode == "asymmetric":
        return i / scale
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else 0.0
    raise ValueError(mode)


def interpolation_matrix(n_in: int, n_out: int, scale: float, mode: str, coordinates: str,
                         nearest_mode: str = "round_prefer_floor") -> np.ndarray:
    """(n_out, n_in): output cell i as a combination of input cells, per the Resize spec."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        c = _source_coordinate(i, n_in, n_out, scale, coordinates)
        if mode == "nearest":
            rounded = {"round_prefer_floor": math.ceil(c - 0.5), "round_prefer_ceil": math.floor(c + 0.5),
                       "floor": math.floor(c), "ceil": math.ceil(c)}[nearest_mode]
            matrix[i, min(max(rounded, 0), n_in - 1)] = 1.0
        else:
            c = min(max(c, 0.0), n_in - 1.0)
            low = math.floor(c)
            high = min(low + 1, n_in - 1)
            matrix[i, low] += 1.0 - (c - low)
            matrix[i, high] += c - low
    return matrix


def resize(x: T, out_hw: tuple[int, int], scales_hw: tuple[float, float], mode: str, coordinates: str,
           nearest_mode: str = "round_prefer_floor") -> T:
    rows = torch.tensor(interpolation_matrix(x.shape[2], out_hw[0], scales_hw[0], mode, coordinates, nearest_mode))
    cols = torch.tensor(interpolation_matrix(x.shape[3], out_hw[1], scales_hw[1], mode, coordinates, nearest_mode))
    return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)
