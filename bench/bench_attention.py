"""Non-causal attention ``[B, H, S, D]``: ours vs HF's eager matmul -> softmax -> matmul, SDPA with each backend
(flash, memory-efficient, cuDNN; forced with ``torch.nn.attention.sdpa_kernel``) and ``torch.compile`` of eager, in
TFLOP/s (4·B·H·S²·D).

    python -m bench.bench_attention [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.common import OpBench, Skip, attention_flops, cli, fastvit_op, run_pytest_benchmark


def make_inputs(shape: tuple, device: str, dtype: torch.dtype) -> tuple:
    b, h, s, d = shape
    # q, k, v: [B, H, S, D] views of one fused QKV projection [B, S, 3, H, D], as the fused layers produce them
    qkv = torch.randn(b, s, 3, h, d, device=device, dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def eager(q, k, v):
    """HF 4.50 Dinov2SelfAttention (eager): scores, softmax in the input dtype, weighted sum."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.matmul(F.softmax(scores, dim=-1), v)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_backend(name: str):
    def run(q, k, v):
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError as e:
            raise Skip("torch.nn.attention.sdpa_kernel needs torch >= 2.3") from e
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            raise Skip(f"this torch has no SDPBackend.{name}")
        if q.device.type != "cuda" and name != "FLASH_ATTENTION":
            raise Skip(f"SDPBackend.{name} is CUDA only")
        try:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as e:
            raise Skip(f"SDPBackend.{name} unavailable here: {str(e).splitlines()[0]}") from e

    run.__name__ = f"sdpa_{name.lower()}"
    return run


def ours(q, k, v):
    return fastvit_op("attention")(q, k, v)


SPECS = [
    OpBench(
        name="attention",
        shapes={
            # DINOv2-base / ViT-B at 224 and 196+1 tokens, ViT-L / AltCLIP vision, DINOv2 at 518
            "cuda": [(64, 12, 197, 64), (64, 12, 257, 64), (64, 16, 257, 64), (8, 12, 1370, 64)],
            "cpu": [(2, 12, 197, 64)],
            "dry": [(1, 2, 9, 16)],  # a seconds-long dry run under the Triton interpreter
        },
        make_inputs=make_inputs,
        providers={
            "eager": eager,
            "sdpa": sdpa,
            "sdpa_flash": _sdpa_backend("FLASH_ATTENTION"),
            "sdpa_efficient": _sdpa_backend("EFFICIENT_ATTENTION"),
            "sdpa_cudnn": _sdpa_backend("CUDNN_ATTENTION"),
            "fastvit": ours,
        },
        amount=lambda inputs: attention_flops(*inputs[0].shape),
        metric="TFLOP/s",
    )
]


def test_attention(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


if __name__ == "__main__":
    raise SystemExit(cli(SPECS))
