"""SwiGLU gate: ``h [..., 2H] -> silu(h[..., :H]) * h[..., H:]`` (DINOv2 ``Dinov2SwiGLUFFN``).

Memory traffic: one read of h and one write of the ``[..., H]`` output (3 * numel_out * itemsize bytes), the
minimum: both halves are read in place through the row stride (no ``chunk`` copies). 2-D tiles
``[BLOCK_M, BLOCK_N]`` over (rows, H) with int64 row offsets; silu as ``a / (1 + exp(-a))`` (torch's formula, so
NaN/Inf propagate alike). fp32 math, one cast on store.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DTYPES, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import launch, register_op, tl, triton, use_triton


def swiglu_ref(h: torch.Tensor) -> torch.Tensor:
    """Torch reference (and fallback): HF's ``silu(x1) * x2`` after ``chunk(2, -1)``, in (at least) fp32.

    Args:
        h: ``[..., 2H]``.
    Returns:
        ``[..., H]`` in h.dtype.
    """
    a, b = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=-1)
    return (F.silu(a) * b).to(h.dtype)


@triton.jit
def _swiglu_kernel(
    Hp,  # [M, 2H] with strides (stride_hm, stride_hn)
    Y,  # [M, H] contiguous
    M,
    H,
    stride_hm,
    stride_hn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < H)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    a_ptrs = Hp + rows64 * stride_hm + cols.to(tl.int64)[None, :] * stride_hn
    b_ptrs = Hp + rows64 * stride_hm + (cols + H).to(tl.int64)[None, :] * stride_hn  # int64: H * stride_hn may not fit
    a = tl.load(a_ptrs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptrs, mask=mask, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(Y + rows64 * H + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _check(h: torch.Tensor) -> None:
    if h.dim() < 1 or h.shape[-1] % 2 != 0:
        raise ValueError(f"swiglu: h must be [..., 2H] with an even last dim, got shape {tuple(h.shape)}")
    if not h.is_floating_point():
        raise ValueError(f"swiglu: h must be a floating tensor, got {h.dtype}")


def _swiglu_launcher(h: torch.Tensor) -> torch.Tensor:
    """Check, allocate a contiguous ``[..., H]`` output, launch."""
    _check(h)
    if h.dtype not in DTYPES:
        raise ValueError(f"swiglu: the Triton kernel takes {DTYPES}, got {h.dtype}")
    H = h.shape[-1] // 2
    y = torch.empty((*h.shape[:-1], H), dtype=h.dtype, device=h.device)
    if y.numel() == 0:
        return y
    h2 = h.reshape(-1, 2 * H)  # [M, 2H]: a view for every layout whose leading dims collapse
    M = h2.shape[0]
    BLOCK_N = min(next_pow2(H), 1024)
    BLOCK_M = max(1, min(64, 4096 // BLOCK_N))
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(H, BLOCK_N))
    launch(
        _swiglu_kernel,
        grid,
        h2,
        y,
        M,
        H,
        h2.stride(0),
        h2.stride(1),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        num_warps=8 if BLOCK_M * BLOCK_N >= 4096 else 4,
    )
    return y


@kernel_cost(_swiglu_kernel)
def _swiglu_cost(r) -> Cost:
    """Both halves of h read once, the [M, H] output written once."""
    M, H = r["M"], r["H"]
    return Cost(read=nbytes(r["Hp"], 2 * M * H), written=nbytes(r["Y"], M * H), kind="elementwise")


_swiglu_op = register_op("fastvit::swiglu", _swiglu_launcher)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU gate: the Triton kernel where it applies, else :func:`swiglu_ref`.

    Args:
        h: ``[..., 2H]`` fp32/fp16/bf16, any strides.
    Returns:
        ``[..., H]`` contiguous, in h.dtype.
    """
    _check(h)
    if not use_triton(h) or h.dtype not in DTYPES:
        return swiglu_ref(h)
    return _swiglu_op(h)
