"""LayerNorm over the last dim of ``[..., C]`` (ViT / DINOv2 / ConvNeXt channels_last blocks).

Memory traffic: one read of x and one write of y (2 * numel * itemsize bytes) plus 2 * C weights, the minimum.
One program normalizes ``BLOCK_M`` rows held whole in registers (``BLOCK_C = next_pow2(C)``; several rows per
program when C is small so that each program moves a few KB): mean and variance are two in-register reductions
of the same tile, so x is read exactly once. Rows are addressed through a row stride (and a column stride), so
strided views such as the ``[N*H*W, C]`` view of a channels_last ``[N, C, H, W]`` tensor need no copy; row and
column offsets are computed in int64. fp32 math, one cast on store. Rows longer than ``MAX_C`` fall back to the
reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import DTYPES, check_channel_param, check_input, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import launch, register_op, tl, triton, use_triton

MAX_C = 16384  # longest row held in registers by one program


def layer_norm_ref(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Torch reference (and fallback): ``F.layer_norm`` over the last dim computed in (at least) fp32.

    Args:
        x: ``[..., C]``. weight, bias: ``[C]`` or None. eps: added to the variance.
    Returns:
        ``[..., C]`` in x.dtype.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    return F.layer_norm(x.to(acc), (x.shape[-1],), w, b, eps).to(x.dtype)


@triton.jit
def _layer_norm_rows_kernel(
    X,  # [M, C] with strides (stride_xm, stride_xc)
    Y,  # [M, C] with strides (stride_ym, stride_yc)
    W,  # [C] or dummy when HAS_W is False
    B,  # [C] or dummy when HAS_B is False
    M,
    C,
    stride_xm,
    stride_xc,
    stride_ym,
    stride_yc,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TORCH_OVERFLOW: tl.constexpr,  # non-finite rows where F.layer_norm's are (False: HF channels-first formula)
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < M)[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    cols64 = cols.to(tl.int64)[None, :]  # a column stride can be large too (last dim not innermost)
    x = tl.load(X + rows64 * stride_xm + cols64 * stride_xc, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C  # [BLOCK_M]
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C
    rstd = tl.rsqrt(var + eps)
    if TORCH_OVERFLOW:  # F.layer_norm (E[x^2] - mean^2) is NaN once mean^2 overflows fp32: so are we
        rstd = tl.where(mean * mean < float("inf"), rstd, float("nan"))
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64 * stride_ym + cols64 * stride_yc, y.to(Y.dtype.element_ty), mask=mask)


def layer_norm_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    torch_overflow: bool = True,
) -> None:
    """Launch the row kernel: normalize each row of the 2-D (strided) view ``x`` [M, C] into ``y`` [M, C].

    ``torch_overflow``: rows whose fp32 mean squared overflows give NaN, as ``F.layer_norm`` (which computes
    ``E[x^2] - mean^2``); False keeps the centred two-pass result (a variance overflow gives ``bias``), as the HF
    channels-first formula ``(x - u) / sqrt(mean((x - u)^2) + eps)`` that ``layer_norm_2d`` reproduces.
    """
    M, C = x.shape
    if M == 0 or C == 0:
        return
    BLOCK_C = next_pow2(C)
    BLOCK_M = max(1, min(64, 4096 // BLOCK_C))  # several rows per program when C is small
    num_warps = min(max(BLOCK_M * BLOCK_C // 512, 1), 16)
    w = weight.contiguous() if weight is not None else x  # dummy pointer when absent (never read)
    b = bias.contiguous() if bias is not None else x
    grid = (triton.cdiv(M, BLOCK_M),)
    launch(
        _layer_norm_rows_kernel,
        grid,
        x,
        y,
        w,
        b,
        M,
        C,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        eps,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BLOCK_M=BLOCK_M,
        BLOCK_C=BLOCK_C,
        TORCH_OVERFLOW=torch_overflow,
        num_warps=num_warps,
    )


def _check(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    check_input("layer_norm", x, 1)
    check_channel_param("layer_norm", "weight", weight, x, x.shape[-1])
    check_channel_param("layer_norm", "bias", bias, x, x.shape[-1])


def _layer_norm_launcher(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Check, allocate a contiguous ``[..., C]`` output, launch."""
    _check(x, weight, bias)
    if x.dtype not in DTYPES:
        raise ValueError(f"layer_norm: the Triton kernel takes {DTYPES}, got {x.dtype}")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    C = x.shape[-1]
    # [..., C] -> [M, C]: a view for every layout whose leading dims collapse (contiguous, row-sliced, ...)
    layer_norm_rows(x.reshape(-1, C), y.view(-1, C), weight, bias, eps)
    return y


@kernel_cost(_layer_norm_rows_kernel)
def _layer_norm_rows_cost(r) -> Cost:
    """x read once, y written once, weight and bias once each."""
    params = r["HAS_W"] * nbytes(r["W"], r["C"]) + r["HAS_B"] * nbytes(r["B"], r["C"])
    return Cost(read=nbytes(r["X"], r["M"] * r["C"]) + params, written=nbytes(r["Y"], r["M"] * r["C"]), kind="norm")


_layer_norm_op = register_op("fastvit::layer_norm", _layer_norm_launcher)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dim: the Triton kernel where it applies, else :func:`layer_norm_ref`.

    Args:
        x: ``[..., C]`` fp32/fp16/bf16, any strides. weight, bias: ``[C]`` or None. eps: added to the variance.
    Returns:
        ``[..., C]`` contiguous, in x.dtype.
    """
    _check(x, weight, bias)
    if not use_triton(x, weight, bias) or x.dtype not in DTYPES or x.shape[-1] > MAX_C:
        return layer_norm_ref(x, weight, bias, eps)
    return _layer_norm_op(x, weight, bias, float(eps))
