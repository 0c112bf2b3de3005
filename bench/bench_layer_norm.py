"""LayerNorm over the last dim of ``[M, C]`` (ViT / DINOv2 / ConvNeXt blocks): ours vs ``F.layer_norm`` (what HF
calls) vs ``torch.compile`` of it, in GB/s (x read once, y written once, plus the weights).

    python -m bench.bench_layer_norm [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import OpBench, cli, fastvit_op, run_pytest_benchmark, tensor_bytes

EPS = 1e-6


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    m, c = shape
    x = torch.randn(m, c, device=device, dtype=dtype)  # [M, C]
    weight = 1 + 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    bias = 0.1 * torch.randn(c, device=device, dtype=dtype)  # [C]
    return x, weight, bias


def eager(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def ours(x, weight, bias):
    return fastvit_op("layer_norm")(x, weight, bias, EPS)


SPECS = [
    OpBench(
        name="layer_norm",
        # B=64 DINOv2-base at 224: 64 * 257 = 16448 tokens; widths of ViT-B/L/g
        shapes={"cuda": [(16448, 768), (16448, 1024), (16448, 1536)], "cpu": [(514, 768)], "dry": [(8, 64)]},
        make_inputs=make_inputs,
        providers={"eager": eager, "fastvit": ours},
        amount=lambda inputs: tensor_bytes(*inputs, inputs[0]),
    )
]


def test_layer_norm(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
