"""SwiGLU ``silu(h[..., :H]) * h[..., H:]`` (DINOv2-giant FFN): ours vs HF's chunk + silu * formula vs
``torch.compile`` of it, in GB/s (h read once, the half-width output written once).

    python -m bench.bench_swiglu [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import OpBench, cli, fastvit_op, run_pytest_benchmark, tensor_bytes


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    m, two_h = shape
    return (torch.randn(m, two_h, device=device, dtype=dtype),)  # [M, 2H]


def eager(h):
    """HF 4.50 Dinov2SwiGLUFFN: chunk, silu, multiply."""
    x1, x2 = h.chunk(2, dim=-1)
    return F.silu(x1) * x2


def ours(h):
    return fastvit_op("swiglu")(h)


SPECS = [
    OpBench(
        name="swiglu",
        shapes={"cuda": [(16448, 8192)], "cpu": [(514, 2048)], "dry": [(8, 64)]},  # B=64 x 257 tokens, 2 x 4096 hidden
        make_inputs=make_inputs,
        providers={"eager": eager, "fastvit": ours},
        amount=lambda inputs: tensor_bytes(inputs[0]) + tensor_bytes(inputs[0]) // 2,
    )
]


def test_swiglu(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
