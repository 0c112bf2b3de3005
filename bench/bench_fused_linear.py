"""Fused-epilogue GEMM at the models' shapes: ``fused_linear`` vs cuBLAS (``F.linear``) + HF's epilogue ops, in
TFLOP/s (2 * M * N * K; the epilogue's bytes are what the fused kernel saves on top).

Providers: ``eager`` = ``F.linear`` (cuBLAS, bias fused) + the HF formula of the epilogue; ``fastvit`` =
``fused_linear`` as the models call it (on a GPU: the faster of the fused kernel and cuBLAS + epilogue, chosen on
the first call of each shape); ``fastvit_kernel`` = the fused Triton kernel alone with its default tile config (the
issue-14 target: within 10% of cuBLAS on the ``none`` epilogue rows, before any epilogue savings).

    python -m bench.bench_fused_linear [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from bench.common import OpBench, Skip, cli, fastvit_op, run_pytest_benchmark

# (M, K, N, epilogue) at B=64, 224 px: ConvNeXt-T pwconv1 / pwconv2 (stages 1 and 3), DINOv2-B q|k|v, fc1, fc2,
# AltCLIP vision (ViT-L/14) fc1 with quick_gelu
MODEL_SHAPES = [
    (200704, 96, 384, "gelu"),
    (200704, 384, 96, "scale_res"),
    (12544, 384, 1536, "gelu"),
    (12544, 1536, 384, "scale_res"),
    (16448, 768, 2304, "none"),
    (16448, 768, 3072, "gelu"),
    (16448, 3072, 768, "scale_res"),
    (16448, 1024, 4096, "quick_gelu"),
    (16448, 1024, 1024, "none"),
]


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    M, K, N, epilogue = shape
    x = torch.randn(M, K, device=device, dtype=dtype)  # [M, K]
    w = torch.randn(N, K, device=device, dtype=dtype) / K**0.5  # [N, K] nn.Linear layout
    b = 0.1 * torch.randn(N, device=device, dtype=dtype)
    scale = residual = None
    if epilogue == "scale_res":
        scale = 0.1 * torch.randn(N, device=device, dtype=dtype)  # DINOv2 / ConvNeXt layer scale
        residual = torch.randn(M, N, device=device, dtype=dtype)
    return x, w, b, epilogue, scale, residual


def eager(x, w, b, epilogue, scale, residual):
    """cuBLAS + the HF epilogue: GELUActivation, QuickGELUActivation, ``residual + layer_scale * y``."""
    y = F.linear(x, w, b)
    if epilogue == "gelu":
        return F.gelu(y)
    if epilogue == "quick_gelu":
        return y * torch.sigmoid(1.702 * y)
    if epilogue == "scale_res":
        return residual + scale * y
    return y


def _kwargs(epilogue, scale, residual) -> dict:
    act = epilogue if epilogue in ("gelu", "quick_gelu") else "none"
    return dict(activation=act, scale=scale, residual=residual)


def ours(x, w, b, epilogue, scale, residual):
    return fastvit_op("fused_linear")(x, w, b, **_kwargs(epilogue, scale, residual))


def ours_kernel(x, w, b, epilogue, scale, residual):
    if not x.is_cuda:
        raise Skip("the forced tile config is a GPU measurement")
    fl = importlib.import_module("fastvit_kernels.fused_linear")
    return fl.fused_linear(x, w, b, impl=fl.GPU_CONFIGS[0], **_kwargs(epilogue, scale, residual))


SPECS = [
    OpBench(
        name="fused_linear",
        shapes={
            "cuda": MODEL_SHAPES,
            "cpu": [(3136, 96, 384, "gelu"), (257, 768, 768, "scale_res")],
            "dry": [(37, 32, 48, "gelu"), (37, 48, 32, "scale_res")],
        },
        make_inputs=make_inputs,
        providers={"eager": eager, "fastvit": ours, "fastvit_kernel": ours_kernel},
        amount=lambda inputs: 2.0 * inputs[0].shape[0] * inputs[0].shape[1] * inputs[1].shape[0],
        metric="TFLOP/s",
        label=lambda shape: f"M{shape[0]}xK{shape[1]}xN{shape[2]}+{shape[3]}",
    )
]


def test_fused_linear(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
