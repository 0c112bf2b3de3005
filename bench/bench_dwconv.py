"""7x7 depthwise conv (ConvNeXt), alone and fused with the LayerNorm that follows it, in effective GB/s
(x read once, y written once, plus weights).

* ``dwconv2d``: ours (NCHW and channels_last input) vs ``F.conv2d(groups=C)`` on NCHW (HF; cuDNN / native) and on
  channels_last, and ``torch.compile``.
* ``dwconv2d_layer_norm``: ours vs HF's conv -> permute -> LayerNorm and ``torch.compile`` of it; output NHWC.

    python -m bench.bench_dwconv [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.bench_layer_norm_2d import CONVNEXT_TINY_STAGES
from bench.common import OpBench, cli, fastvit_op, run_pytest_benchmark, tensor_bytes

K = 7
EPS = 1e-6
CPU_SHAPES = [(2, 96, 56, 56), (2, 768, 7, 7)]


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, device=device, dtype=dtype)  # [N, C, H, W]
    weight = 0.1 * torch.randn(c, 1, K, K, device=device, dtype=dtype)  # [C, 1, k, k]
    bias = 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    ln_weight = 1 + 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    ln_bias = 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    x_cl = x.contiguous(memory_format=torch.channels_last)  # same values, channels_last
    return x, weight, bias, ln_weight, ln_bias, x_cl


def conv_eager(x, weight, bias, ln_weight, ln_bias, x_cl):
    """HF: nn.Conv2d(C, C, 7, padding=3, groups=C) on NCHW."""
    return F.conv2d(x, weight, bias, padding=K // 2, groups=x.shape[1])


def conv_eager_channels_last(x, weight, bias, ln_weight, ln_bias, x_cl):
    return F.conv2d(x_cl, weight, bias, padding=K // 2, groups=x.shape[1])


def conv_ours(x, weight, bias, ln_weight, ln_bias, x_cl):
    return fastvit_op("dwconv2d")(x, weight, bias)


def conv_ours_channels_last(x, weight, bias, ln_weight, ln_bias, x_cl):
    return fastvit_op("dwconv2d")(x_cl, weight, bias)


def conv_ln_eager(x, weight, bias, ln_weight, ln_bias, x_cl):
    """HF ConvNextLayer's start: dwconv -> permute to NHWC -> LayerNorm over C."""
    y = F.conv2d(x, weight, bias, padding=K // 2, groups=x.shape[1]).permute(0, 2, 3, 1)
    return F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, EPS)


def conv_ln_ours(x, weight, bias, ln_weight, ln_bias, x_cl):
    return fastvit_op("dwconv2d_layer_norm")(x, weight, bias, ln_weight, ln_bias, EPS)


def conv_ln_ours_channels_last(x, weight, bias, ln_weight, ln_bias, x_cl):
    return fastvit_op("dwconv2d_layer_norm")(x_cl, weight, bias, ln_weight, ln_bias, EPS)


def _bytes(inputs: tuple, *, ln: bool) -> int:
    x, weight, bias, ln_weight, ln_bias, _ = inputs
    return tensor_bytes(x, weight, bias, x) + (tensor_bytes(ln_weight, ln_bias) if ln else 0)


SHAPES = {"cuda": CONVNEXT_TINY_STAGES, "cpu": CPU_SHAPES, "dry": [(1, 8, 8, 8)]}
SPECS = [
    OpBench(
        name="dwconv2d",
        shapes=SHAPES,
        make_inputs=make_inputs,
        providers={
            "eager": conv_eager,
            "eager_channels_last": conv_eager_channels_last,
            "fastvit": conv_ours,
            "fastvit_channels_last": conv_ours_channels_last,
        },
        amount=lambda inputs: _bytes(inputs, ln=False),
    ),
    OpBench(
        name="dwconv2d_layer_norm",
        shapes=SHAPES,
        make_inputs=make_inputs,
        providers={
            "eager": conv_ln_eager,
            "fastvit": conv_ln_ours,
            "fastvit_channels_last": conv_ln_ours_channels_last,
        },
        amount=lambda inputs: _bytes(inputs, ln=True),
    ),
]


def test_dwconv(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
