"""Channels-first LayerNorm: normalize over C of ``[N, C, H, W]`` (HF ConvNext ``data_format="channels_first"``).

Memory traffic: one read of x and one write of y (2 * numel * itemsize bytes) plus 2 * C weights, the minimum.
Two layouts, no copies:
  * NCHW (C not the innermost stride): one program owns a ``[BLOCK_C, BLOCK_HW]`` tile of one image
    (``BLOCK_C = next_pow2(C)``), loads it coalesced along HW, reduces over C in registers (mean, then variance of
    the centred tile) and stores the normalized tile: x is read once.
  * channels_last (stride of C == 1): the op is a row LayerNorm over C with a row stride, so the ``[N*H*W, C]`` view
    goes through the row kernel of :mod:`layer_norm`.
The output keeps the input's memory format, or is channels_last on request (``channels_last_out``: the ConvNeXt stem
norm writes what the blocks read, instead of a copy in the first block). Offsets are int64; fp32 math, one cast on
store. C > ``MAX_C`` falls back to the reference.
"""

from __future__ import annotations

import torch

from ._common import DTYPES, check_channel_param, check_input, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import launch, register_op, tl, triton, use_triton
from .layer_norm import layer_norm_rows

MAX_C = 16384  # channels of one tile column held in registers


def layer_norm_2d_ref(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Torch reference (and fallback): HF ConvNextLayerNorm channels_first, all math in (at least) fp32.

    Args:
        x: ``[N, C, H, W]``. weight, bias: ``[C]`` or None. eps: added to the variance.
    Returns:
        ``[N, C, H, W]`` in x.dtype (HF casts before the affine; we apply it in fp32 and cast once).
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    u = xf.mean(1, keepdim=True)
    s = (xf - u).pow(2).mean(1, keepdim=True)
    y = (xf - u) / torch.sqrt(s + eps)
    if weight is not None:
        y = weight.to(acc)[:, None, None] * y
    if bias is not None:
        y = y + bias.to(acc)[:, None, None]
    return y.to(x.dtype)


@triton.jit
def _layer_norm_2d_kernel(
    X,  # [N, C, H, W] with strides (stride_xn, stride_xc, stride_xh, stride_xw)
    Y,  # [N, C, H*W] contiguous, or [N, H*W, C] when OUT_CL
    W,  # [C] or dummy when HAS_W is False
    B,  # [C] or dummy when HAS_B is False
    C,
    HW,
    Wd,  # width of the map (to split a flat hw index when x's H and W do not collapse)
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    eps,
    FLAT_HW: tl.constexpr,  # stride_xh == Wd * stride_xw: hw * stride_xw addresses the map
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    OUT_CL: tl.constexpr = False,  # write channels_last
):
    pid = tl.program_id(0)  # over N * cdiv(HW, BLOCK_HW): no 65535 limit on the batch
    n_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    n = (pid // n_hw_blocks).to(tl.int64)
    pid_hw = pid % n_hw_blocks
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)  # [BLOCK_HW]
    c = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C
    mask = c_mask[:, None] & (hw < HW)[None, :]
    hw64 = hw.to(tl.int64)
    if FLAT_HW:
        x_hw = hw64 * stride_xw
    else:
        x_hw = (hw64 // Wd) * stride_xh + (hw64 % Wd) * stride_xw
    x_ptrs = X + n * stride_xn + c.to(tl.int64)[:, None] * stride_xc + x_hw[None, :]
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_C, BLOCK_HW]
    mean = tl.sum(x, axis=0) / C  # [BLOCK_HW]
    xc = tl.where(mask, x - mean[None, :], 0.0)
    var = tl.sum(xc * xc, axis=0) / C
    y = xc * tl.rsqrt(var + eps)[None, :]
    if HAS_W:
        y = y * tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    if HAS_B:
        y = y + tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    if OUT_CL:
        y_ptrs = Y + n * C * HW + hw64[None, :] * C + c.to(tl.int64)[:, None]
    else:
        y_ptrs = Y + n * C * HW + c.to(tl.int64)[:, None] * HW + hw64[None, :]
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    check_input("layer_norm_2d", x, 4)
    if x.dim() != 4:
        raise ValueError(f"layer_norm_2d: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    check_channel_param("layer_norm_2d", "weight", weight, x, x.shape[1])
    check_channel_param("layer_norm_2d", "bias", bias, x, x.shape[1])


def _channels_last(x: torch.Tensor) -> bool:
    """C is the innermost dim of x's memory (and not trivially so)."""
    return x.shape[1] > 1 and x.stride(1) == 1 and x.shape[2] * x.shape[3] > 1


def _layer_norm_2d_launcher(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, channels_last_out: bool = False
) -> torch.Tensor:
    """Check, allocate the output in x's memory format (or channels_last), launch the layout's kernel."""
    _check(x, weight, bias)
    if x.dtype not in DTYPES:
        raise ValueError(f"layer_norm_2d: the Triton kernel takes {DTYPES}, got {x.dtype}")
    N, C, H, Wd = x.shape
    if _channels_last(x):
        y = torch.empty((N, H, Wd, C), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
        if x.numel() > 0:
            # [N, C, H, W] channels_last -> [N*H*W, C] rows (a view for dense or row-strided layouts)
            layer_norm_rows(
                x.permute(0, 2, 3, 1).reshape(-1, C), y.permute(0, 2, 3, 1).view(-1, C), weight, bias, eps, False
            )
        return y
    if channels_last_out:
        y = torch.empty((N, H, Wd, C), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    else:
        y = torch.empty((N, C, H, Wd), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    HW = H * Wd
    BLOCK_C = next_pow2(C)
    BLOCK_HW = min(max(16, 4096 // BLOCK_C), next_pow2(HW), 256)  # >= 16 (32 B+) contiguous elements per load
    num_warps = min(max(BLOCK_C * BLOCK_HW // 512, 1), 16)
    sn, sc, sh, sw = x.stride()
    grid = (triton.cdiv(HW, BLOCK_HW) * N,)
    launch(
        _layer_norm_2d_kernel,
        grid,
        x,
        y,
        weight.contiguous() if weight is not None else x,
        bias.contiguous() if bias is not None else x,
        C,
        HW,
        Wd,
        sn,
        sc,
        sh,
        sw,
        eps,
        FLAT_HW=H == 1 or sh == Wd * sw,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BLOCK_C=BLOCK_C,
        BLOCK_HW=BLOCK_HW,
        OUT_CL=channels_last_out,
        num_warps=num_warps,
    )
    return y


@kernel_cost(_layer_norm_2d_kernel)
def _layer_norm_2d_cost(r) -> Cost:
    """x read once, y written once, weight and bias once each."""
    params = r["HAS_W"] * nbytes(r["W"], r["C"]) + r["HAS_B"] * nbytes(r["B"], r["C"])
    return Cost(read=nbytes(r["X"]) + params, written=nbytes(r["Y"]), kind="norm")


_layer_norm_2d_op = register_op("fastvit::layer_norm_2d", _layer_norm_2d_launcher)


def layer_norm_2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    channels_last_out: bool = False,
) -> torch.Tensor:
    """Channels-first LayerNorm: the Triton kernel where it applies, else :func:`layer_norm_2d_ref`.

    Args:
        x: ``[N, C, H, W]`` fp32/fp16/bf16, NCHW or channels_last (any strides). weight, bias: ``[C]`` or None.
        channels_last_out: write the output channels_last whatever x's layout (no copy for channels_last readers).
    Returns:
        ``[N, C, H, W]`` in x.dtype and x's memory format (channels_last with ``channels_last_out``).
    """
    _check(x, weight, bias)
    if not use_triton(x, weight, bias) or x.dtype not in DTYPES or x.shape[1] > MAX_C:
        y = layer_norm_2d_ref(x, weight, bias, eps)
        return y.contiguous(memory_format=torch.channels_last) if channels_last_out else y
    return _layer_norm_2d_op(x, weight, bias, float(eps), channels_last_out)
