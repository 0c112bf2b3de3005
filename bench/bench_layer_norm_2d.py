"""Channels-first LayerNorm over C of ``[N, C, H, W]`` (ConvNeXt stems and downsampling): ours vs HF's
``ConvNextLayerNorm(data_format="channels_first")`` formula vs ``torch.compile`` of it, in GB/s.

    python -m bench.bench_layer_norm_2d [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import torch

from bench.common import OpBench, cli, fastvit_op, run_pytest_benchmark, tensor_bytes

EPS = 1e-6
# B=64 ConvNeXt-tiny stages at 224: (N, C, H, W)
CONVNEXT_TINY_STAGES = [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7)]


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, device=device, dtype=dtype)  # [N, C, H, W] NCHW as in HF
    weight = 1 + 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    bias = 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    x_cl = x.contiguous(memory_format=torch.channels_last)  # the same values, channels_last
    return x, weight, bias, x_cl


def eager(x, weight, bias, x_cl=None):
    """HF 4.50 ConvNextLayerNorm, channels_first branch, verbatim (NCHW input)."""
    input_dtype = x.dtype
    x = x.float()
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + EPS)
    x = x.to(dtype=input_dtype)
    return weight[:, None, None] * x + bias[:, None, None]


def ours(x, weight, bias, x_cl=None):
    return fastvit_op("layer_norm_2d")(x, weight, bias, EPS)


def ours_channels_last(x, weight, bias, x_cl):
    """Ours on channels_last input (how the fused ConvNeXt keeps its activations)."""
    return fastvit_op("layer_norm_2d")(x_cl, weight, bias, EPS)


SPECS = [
    OpBench(
        name="layer_norm_2d",
        shapes={"cuda": CONVNEXT_TINY_STAGES, "cpu": [(2, 96, 56, 56), (2, 768, 7, 7)], "dry": [(1, 16, 8, 8)]},
        make_inputs=make_inputs,
        providers={"eager": eager, "fastvit": ours, "fastvit_channels_last": ours_channels_last},
        amount=lambda inputs: tensor_bytes(*inputs[:3], inputs[0]),  # x, weight, bias read; y written
    )
]


def test_layer_norm_2d(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
