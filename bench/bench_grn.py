"""ConvNeXt V2 Global Response Normalization on ``[N, H, W, C]``: ours vs HF's ``ConvNextV2GRN`` formula vs
``torch.compile`` of it, in effective GB/s (x read once, y written once, plus gamma/beta).

    python -m bench.bench_grn [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import torch

from bench.common import OpBench, cli, fastvit_op, run_pytest_benchmark, tensor_bytes

# B=64 ConvNeXt V2-tiny GRN inputs (4x expanded widths) at 224: (N, H, W, C)
CONVNEXTV2_TINY_STAGES = [(64, 56, 56, 384), (64, 28, 28, 768), (64, 14, 14, 1536), (64, 7, 7, 3072)]


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    n, h, w, c = shape
    x = torch.randn(n, h, w, c, device=device, dtype=dtype)  # [N, H, W, C]
    gamma = 0.1 * torch.randn(1, 1, 1, c, device=device, dtype=dtype)  # HF parameter shape
    beta = 0.1 * torch.randn(1, 1, 1, c, device=device, dtype=dtype)
    return x, gamma, beta


def eager(x, gamma, beta):
    """HF 4.50 ConvNextV2GRN.forward, verbatim."""
    global_features = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    norm_features = global_features / (global_features.mean(dim=-1, keepdim=True) + 1e-6)
    return gamma * (x * norm_features) + beta + x


def ours(x, gamma, beta):
    return fastvit_op("grn")(x, gamma, beta, 1e-6)


SPECS = [
    OpBench(
        name="grn",
        shapes={"cuda": CONVNEXTV2_TINY_STAGES, "cpu": [(2, 28, 28, 384), (2, 7, 7, 3072)], "dry": [(1, 4, 4, 32)]},
        make_inputs=make_inputs,
        providers={"eager": eager, "fastvit": ours},
        amount=lambda inputs: tensor_bytes(*inputs, inputs[0]),
    )
]


def test_grn(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
