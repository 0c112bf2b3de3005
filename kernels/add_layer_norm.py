"""Residual add + LayerNorm in one pass: ``s = x + gamma * a`` (or ``x + a``) and ``h = LayerNorm(s)``.

The pre-norm transformer's ``x = x + ls * attn; h = LN2(x)`` (and, where an encoder is fused as a whole, the
FFN residual with the next layer's LN1), and the post-norm (BERT / XLM-R) ``h = LN(x + a)``. Both outputs come
from one read of x and a: the sum is rounded to the output dtype once, stored (unless only h is wanted), and
normalized from that rounded value, so ``h == layer_norm(s)`` exactly as the unfused ops compute it.

Memory traffic: x and a read once, s and h written once (4 * numel * itemsize; 3 * without s) plus the [C]
vectors, against 7 * numel for ``addcmul`` + ``layer_norm`` (5 * for ``add`` + ``layer_norm``). One program
normalizes ``BLOCK_M`` whole rows in registers (``BLOCK_C = next_pow2(C)``), row offsets in int64; fp32 math,
one cast per store. Rows longer than ``MAX_C`` take the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DTYPES, check_channel_param, check_input, dummy, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import Launch, launch, register_op, tl, triton, use_triton

MAX_C = 16384  # longest row held in registers by one program


def add_layer_norm_ref(
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    gamma: torch.Tensor | None = None,
    store_sum: bool = True,
) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Torch reference (and fallback): ``s = x + gamma * a`` in x.dtype (``addcmul`` / ``add``), ``F.layer_norm(s)``.

    Arguments and returns as :func:`add_layer_norm`.
    """
    s = torch.add(x, a) if gamma is None else torch.addcmul(x, a, gamma)
    h = F.layer_norm(s, (x.shape[-1],), weight, bias, eps)
    return (s, h) if store_sum else h


@triton.jit
def _add_layer_norm_kernel(
    X,  # [M, C] row stride stride_xm, unit column stride
    A,  # [M, C] row stride stride_am, unit column stride
    G,  # [C] gamma (dummy unless HAS_G)
    S,  # [M, C] out: x + gamma * a, contiguous (dummy unless STORE_SUM)
    H,  # [M, C] out: LayerNorm(S), contiguous
    W,  # [C] (dummy unless HAS_W)
    B,  # [C] (dummy unless HAS_B)
    M,
    C,
    stride_xm,
    stride_am,
    eps,
    HAS_G: tl.constexpr,
    STORE_SUM: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < M)[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + rows64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a = tl.load(A + rows64 * stride_am + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_G:
        a = a * tl.load(G + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    s = (x + a).to(H.dtype.element_ty)  # rounded once: what the unfused add stores and the LayerNorm reads
    if STORE_SUM:
        tl.store(S + rows64 * C + cols[None, :], s, mask=mask)
    v = s.to(tl.float32)
    mean = tl.sum(v, axis=1) / C
    vc = tl.where(mask, v - mean[:, None], 0.0)
    var = tl.sum(vc * vc, axis=1) / C
    h = vc * tl.rsqrt(var + eps)[:, None]
    if HAS_W:
        h = h * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        h = h + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(H + rows64 * C + cols[None, :], h.to(H.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, C: int) -> torch.Tensor:
    """``t`` as a [M, C] view with unit column stride (a copy only if none exists)."""
    t2 = t.reshape(-1, C)
    return t2 if t2.stride(1) == 1 or C == 1 else t2.contiguous()


def _add_layer_norm_launcher(
    x: torch.Tensor,
    a: torch.Tensor,
    gamma: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    store_sum: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate s (``[0]`` when not stored) and h, both contiguous ``[..., C]``, and launch."""
    C = x.shape[-1]
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    s = torch.empty(x.shape if store_sum else (0,), dtype=x.dtype, device=x.device)
    if h.numel() == 0:
        return s, h
    x2, a2 = _rows(x, C), _rows(a, C)
    M = x2.shape[0]
    BLOCK_C = next_pow2(C)
    BLOCK_M = max(1, min(64, 4096 // BLOCK_C))
    launch(
        _add_layer_norm_kernel,
        (triton.cdiv(M, BLOCK_M),),
        x2, a2, dummy(gamma, x2), s if store_sum else h, h, dummy(weight, x2), dummy(bias, x2),
        M, C, x2.stride(0), a2.stride(0), eps,
        HAS_G=gamma is not None, STORE_SUM=store_sum, HAS_W=weight is not None, HAS_B=bias is not None,
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=min(max(BLOCK_M * BLOCK_C // 512, 1), 16),
    )  # fmt: skip
    return s, h


@kernel_cost(_add_layer_norm_kernel)
def _add_layer_norm_cost(r: Launch) -> Cost:
    """x and a read once, s (when stored) and h written once, gamma / weight / bias once."""
    M, C = r["M"], r["C"]
    vectors = sum(nbytes(r[t], C) for t, flag in (("G", "HAS_G"), ("W", "HAS_W"), ("B", "HAS_B")) if r[flag])
    read = nbytes(r["X"], M * C) + nbytes(r["A"], M * C) + vectors
    written = nbytes(r["H"], M * C) * (2 if r["STORE_SUM"] else 1)
    return Cost(read=read, written=written, kind="norm")


_add_layer_norm_op = register_op("fastvit::add_layer_norm", _add_layer_norm_launcher)


def _check(x, a, weight, bias, gamma) -> None:
    check_input("add_layer_norm", x, 1)
    if not isinstance(a, torch.Tensor) or a.shape != x.shape:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"add_layer_norm: a must have x's shape {tuple(x.shape)}, got {shape}")
    if a.dtype != x.dtype or a.device != x.device:
        raise ValueError(f"add_layer_norm: a is {a.dtype} on {a.device}, x is {x.dtype} on {x.device}")
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias), ("gamma", gamma)):
        check_channel_param("add_layer_norm", name, p, x, C)


def add_layer_norm(
    x: torch.Tensor,
    a: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    gamma: torch.Tensor | None = None,
    store_sum: bool = True,
) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """``s = x + gamma * a`` (``x + a`` without gamma) and ``h = LayerNorm(s)`` over the last dim, in one pass.

    Args:
        x, a: ``[..., C]`` fp32/fp16/bf16, same shape and dtype, any strides. weight, bias: the LayerNorm's
            ``[C]`` or None. eps: added to the variance. gamma: ``[C]`` layer scale on ``a``, or None.
        store_sum: also return s (False: only h, for post-norm layers whose residual stream is h).
    Returns:
        ``(s, h)`` (or ``h``), contiguous, in x.dtype.
    """
    _check(x, a, weight, bias, gamma)
    if not use_triton(x, a, weight, bias, gamma) or x.dtype not in DTYPES or x.shape[-1] > MAX_C:
        return add_layer_norm_ref(x, a, weight, bias, eps, gamma=gamma, store_sum=store_sum)
    s, h = _add_layer_norm_op(x, a, gamma, weight, bias, float(eps), store_sum)
    return (s, h) if store_sum else h
