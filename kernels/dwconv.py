"""Depthwise 2-D convolution (stride 1, padding k//2, odd k), alone and fused with the LayerNorm over channels that
follows it in a ConvNeXt block (dwconv -> permute -> LayerNorm).

Memory traffic for x of N*C*H*W elements of ``s`` bytes (weights are k*k*C elements, negligible):
  * ``dwconv2d``: one read of x and one write of y, 2*N*C*H*W*s bytes. The k*k taps re-read each input element
    k*k times, but from L1/L2: a program owns BLOCK_H output rows and streams the BLOCK_H + k - 1 input rows they
    need once each (k shifted loads per row), so the re-reads per output fall from k*k to k*(BLOCK_H + k - 1)/BLOCK_H.
  * ``dwconv2d_layer_norm``: the same 2*N*C*H*W*s bytes. Eager conv -> permute -> LayerNorm moves 4x that (conv
    read + write, LayerNorm read + write) and 6x when the permuted conv output is first copied to contiguous.

Layout: the kernels index x with strides and tile it as NHWC (a program owns BLOCK_H x BLOCK_W pixels x BLOCK_C
channels, channels fastest). channels_last inputs give loads coalesced over C: the fast path. NCHW inputs run the
same kernels with their strides (correct; loads are contiguous only along W, so expect well below channels_last
bandwidth; convert upstream for speed). Weights are read tap-major, [k, k, C], one coalesced load per tap:
``pack_weight`` makes that layout once; a plain [C, 1, k, k] weight is repacked on every call (one tiny copy).

Dispatch as every op in this package (see ``_dispatch``): Triton on CUDA, or on CPU under ``TRITON_INTERPRET=1``;
the references below otherwise, when gradients are needed, and for what the kernels do not cover (k > 15,
float64, more than 8192 channels for the fused LayerNorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import launch, register_op, tl, triton, use_triton

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_K = 15  # taps are unrolled at compile time: k*(BLOCK_H + k - 1) loads
_MAX_LN_C = 8192  # the fused kernel holds all channels of its pixels in registers
_INT64_THRESHOLD = 2**31  # index in int64 once a tensor reaches this many elements (tests lower it)


# ----------------------------------------------------------------------------------------------------------------
# torch references (also the fallbacks)
# ----------------------------------------------------------------------------------------------------------------


def _out_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when channels vary faster than width in ``x`` (as torch's suggest_memory_format), else NCHW."""
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) < x.stride(3):
        return torch.channels_last
    return torch.contiguous_format


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def _conv_f32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x: [N, C, H, W], weight: [C, 1, k, k] -> [N, C, H, W] fp32
    k = weight.shape[-1]
    return F.conv2d(x.float(), weight.float(), _f32(bias), padding=k // 2, groups=x.shape[1])


def dwconv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference: ``F.conv2d(groups=C, padding=k//2)`` with fp32 math.

    Args:
        x: [N, C, H, W] (NCHW or channels_last). weight: [C, 1, k, k], odd k. bias: [C] or None.
    Returns:
        [N, C, H, W] in x.dtype and x's memory format.
    """
    return _conv_f32(x, weight, bias).to(x.dtype).contiguous(memory_format=_out_format(x))


def dwconv2d_layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Torch reference: depthwise conv then LayerNorm over C (ConvNeXt block start), fp32 math throughout.

    Args:
        x: [N, C, H, W]. weight: [C, 1, k, k]. bias, ln_weight, ln_bias: [C] or None. eps: LayerNorm epsilon.
    Returns:
        [N, H, W, C] contiguous, x.dtype.
    """
    y = _conv_f32(x, weight, bias).permute(0, 2, 3, 1)  # [N, H, W, C]
    y = F.layer_norm(y, (x.shape[1],), _f32(ln_weight), _f32(ln_bias), eps)
    return y.to(x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _dwconv_tile(
    X,  # [N, C, H, W] input, any strides
    Wt,  # [K, K, C] contiguous weight (tap-major: a tap's weights are contiguous over channels)
    B,  # [C] bias (unused when not HAS_BIAS)
    n,
    h0,
    w0,
    c0,  # tile origin: batch index, first output row / column / channel
    C,
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 conv result for output rows h0..h0+BLOCK_H, columns w0..w0+BLOCK_W, channels c0..c0+BLOCK_C.

    Streams the BLOCK_H + K - 1 input rows once each (K column shifts per row); input row i feeds output row t
    through tap row i - t.
    """
    t = tl.arange(0, BLOCK_H)[:, None, None]  # [BH, 1, 1] output row in tile
    ow = w0 + tl.arange(0, BLOCK_W)[None, :, None]  # [1, BW, 1] output column
    cc = c0 + tl.arange(0, BLOCK_C)[None, None, :]  # [1, 1, BC] channel
    c_mask = cc < C
    x_ptrs = X + n * stride_xn + cc * stride_xc  # [1, 1, BC]
    w_ptrs = Wt + cc  # [1, 1, BC]
    row0 = h0 + tl.zeros([1, 1, 1], dtype=tl.int32)  # [1, 1, 1]: a tensor, not a scalar (the interpreter
    # rejects masks built from a scalar bool)
    acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(BLOCK_H + K - 1):
        ih = row0 + (i - K // 2)  # [1, 1, 1] input row
        row_mask = (ih >= 0) & (ih < H) & c_mask  # [1, 1, BC]
        x_row = x_ptrs + ih * stride_xh  # [1, 1, BC]
        kh = i - t  # [BH, 1, 1] tap row through which input row i reaches output row t
        w_mask = (kh >= 0) & (kh < K) & c_mask  # [BH, 1, BC]: zero weight where that tap does not exist
        w_row = w_ptrs + kh * (K * C)  # [BH, 1, BC]
        for kw in tl.static_range(K):
            iw = ow + (kw - K // 2)  # [1, BW, 1] input column
            xv = tl.load(x_row + iw * stride_xw, mask=row_mask & (iw >= 0) & (iw < W), other=0.0)  # [1, BW, BC]
            wv = tl.load(w_row + kw * C, mask=w_mask, other=0.0)  # [BH, 1, BC]
            acc += xv.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(B + cc, mask=c_mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _dwconv2d_kernel(
    X,  # [N, C, H, W] input, any strides
    Wt,  # [K, K, C] weight
    B,  # [C] bias or dummy
    Y,  # [N, C, H, W] output, any strides
    C,
    H,
    W,
    n_cb,
    n_th,
    n_tw,  # number of channel blocks / row tiles / column tiles
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
):
    # program -> (n, row tile, column tile, channel block), channel block fastest so that neighbouring programs
    # share the cache lines of an NHWC pixel
    pid = tl.program_id(0)
    cb = pid % n_cb
    pid = pid // n_cb
    tw = pid % n_tw
    pid = pid // n_tw
    th = pid % n_th
    n = pid // n_th
    if INT64:
        n = n.to(tl.int64)
        th = th.to(tl.int64)
        tw = tw.to(tl.int64)
        cb = cb.to(tl.int64)
    h0 = th * BLOCK_H
    w0 = tw * BLOCK_W
    c0 = cb * BLOCK_C
    acc = _dwconv_tile(
        X, Wt, B, n, h0, w0, c0, C, H, W, stride_xn, stride_xc, stride_xh, stride_xw,
        K, HAS_BIAS, BLOCK_H, BLOCK_W, BLOCK_C,
    )  # fmt: skip
    oh = h0 + tl.arange(0, BLOCK_H)[:, None, None]
    ow = w0 + tl.arange(0, BLOCK_W)[None, :, None]
    cc = c0 + tl.arange(0, BLOCK_C)[None, None, :]
    mask = (oh < H) & (ow < W) & (cc < C)
    y_ptrs = Y + n * stride_yn + cc * stride_yc + oh * stride_yh + ow * stride_yw
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dwconv2d_layer_norm_kernel(
    X,  # [N, C, H, W] input, any strides
    Wt,  # [K, K, C] weight
    B,  # [C] conv bias or dummy
    LW,  # [C] LayerNorm weight or dummy
    LB,  # [C] LayerNorm bias or dummy
    Y,  # [N, H, W, C] contiguous output
    C,
    H,
    W,
    n_th,
    n_tw,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    eps,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LW: tl.constexpr,
    HAS_LB: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C: a program holds every channel of its pixels
    INT64: tl.constexpr,
):
    pid = tl.program_id(0)
    tw = pid % n_tw
    pid = pid // n_tw
    th = pid % n_th
    n = pid // n_th
    if INT64:
        n = n.to(tl.int64)
        th = th.to(tl.int64)
        tw = tw.to(tl.int64)
    h0 = th * BLOCK_H
    w0 = tw * BLOCK_W
    c0 = tw * 0  # int64 under INT64, like the other tile indices
    acc = _dwconv_tile(
        X, Wt, B, n, h0, w0, c0, C, H, W, stride_xn, stride_xc, stride_xh, stride_xw,
        K, HAS_BIAS, BLOCK_H, BLOCK_W, BLOCK_C,
    )  # fmt: skip
    # LayerNorm over C; channels >= C hold exact zeros (masked loads), so the plain sum is the masked sum
    cc = tl.arange(0, BLOCK_C)[None, None, :]
    c_mask = cc < C
    mean = tl.sum(acc, axis=2) / C  # [BH, BW]
    xc = tl.where(c_mask, acc - mean[:, :, None], 0.0)
    var = tl.sum(xc * xc, axis=2) / C
    y = xc * tl.rsqrt(var + eps)[:, :, None]
    if HAS_LW:
        y = y * tl.load(LW + cc, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_LB:
        y = y + tl.load(LB + cc, mask=c_mask, other=0.0).to(tl.float32)
    oh = h0 + tl.arange(0, BLOCK_H)[:, None, None]
    ow = w0 + tl.arange(0, BLOCK_W)[None, :, None]
    mask = (oh < H) & (ow < W) & c_mask
    y_ptrs = Y + ((n * H + oh) * W + ow) * C + cc
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------


def _check(x: torch.Tensor, weight: torch.Tensor, *vectors: tuple[str, torch.Tensor | None]) -> None:
    """ValueError naming the problem for inputs neither path can take."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D [N, C, H, W] tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"weight must be [C, 1, k, k] = [{C}, 1, k, k] for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")  # fmt: skip
    kh, kw = weight.shape[2:]
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have a square, odd k x k kernel (stride 1, padding k//2), got {kh}x{kw}")
    for name, t in (("weight", weight), *vectors):
        if t is None:
            continue
        if name != "weight" and tuple(t.shape) != (C,):
            raise ValueError(f"{name} must have shape [C] = [{C}], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.dtype in _DTYPES and weight.shape[-1] <= _MAX_K


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The same [C, 1, k, k] weight, stored tap-major (channel stride 1), so the launchers need no copy.

    The kernels read a tap's weights for a block of channels in one coalesced load, from a [k, k, C] buffer. A
    standard contiguous weight is repacked on every call (one tiny copy kernel); callers that run the same weight
    many times (fastvit.fused) pack it once with this function and pass the result instead.
    """
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def _tap_major(weight: torch.Tensor) -> torch.Tensor:
    # [C, 1, k, k] -> [k, k, C] contiguous; a view (no copy) for a weight from pack_weight
    C, _, K, _ = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(K, K, C).contiguous()


def _dummy(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if t is None else t  # never read: the kernel's HAS_* flag is off


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _conv_blocks(C: int, W: int, K: int) -> tuple[int, int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C, num_warps) for ``dwconv2d``.

    BLOCK_C: the largest of 128/64/32/16 dividing C (96 -> 32, 192 -> 64, 384/768 -> 128: no masked lanes), else
    next_pow2(C) capped at 128 (one to two 128-byte lines of an NHWC pixel). BLOCK_H: 2 output rows for k >= 5
    (input rows re-read k*(k+1)/2 instead of k*k times for 1/7 more FMAs at k = 7), 1 for k = 3. BLOCK_W fills a
    ~4096-element fp32 accumulator (32 per thread at 4 warps), at most next_pow2(W).
    """
    block_c = next((b for b in (128, 64, 32, 16) if C % b == 0), min(_next_pow2(C), 128))
    block_h = 2 if K >= 5 else 1
    block_w = max(1, min(_next_pow2(W), 4096 // (block_c * block_h)))
    num_warps = 4 if block_h * block_w * block_c <= 4096 else 8
    return block_h, block_w, block_c, num_warps


def _ln_blocks(C: int, W: int, K: int) -> tuple[int, int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C, num_warps) for ``dwconv2d_layer_norm``: BLOCK_C = next_pow2(C) (all channels),
    pixels per program chosen so the accumulator is ~4096 fp32 (C = 96 -> 32 pixels, 768 -> 4); from BLOCK_C = 2048
    (ConvNeXt-L/XL stage 4) one pixel on 8 warps: two pixels on 4 warps spilled ~17 KB per thread (sm_90 compile)."""
    block_c = _next_pow2(C)
    if block_c >= 2048:
        return 1, 1, block_c, 8
    pixels = max(1, 4096 // block_c)
    block_h = 2 if (K >= 5 and pixels >= 4) else 1
    block_w = max(1, min(_next_pow2(W), pixels // block_h))
    return block_h, block_w, block_c, 4


def _index_span(t: torch.Tensor) -> int:
    """1 + the largest element offset the kernels address from ``t``'s data pointer (numel for dense tensors; more
    for strided views, e.g. a channel slice of a larger buffer)."""
    return 1 + sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0


def _use_int64(*tensors: torch.Tensor) -> bool:
    # offsets follow the strides, so a view of few elements can still address past 2^31
    return any(max(t.numel(), _index_span(t)) >= _INT64_THRESHOLD for t in tensors)


def _dwconv2d_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch ``_dwconv2d_kernel``; returns y in x's memory format."""
    _check(x, weight, ("bias", bias))
    N, C, H, W = x.shape
    K = weight.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))
    if y.numel() == 0:
        return y
    wt = _tap_major(weight)
    BLOCK_H, BLOCK_W, BLOCK_C, num_warps = _conv_blocks(C, W, K)
    n_cb, n_th, n_tw = triton.cdiv(C, BLOCK_C), triton.cdiv(H, BLOCK_H), triton.cdiv(W, BLOCK_W)
    grid = (N * n_th * n_tw * n_cb,)
    launch(
        _dwconv2d_kernel, grid,
        x, wt, _dummy(bias, wt), y, C, H, W, n_cb, n_th, n_tw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        K=K, HAS_BIAS=bias is not None, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C,
        INT64=_use_int64(x, y), num_warps=num_warps,
    )  # fmt: skip
    return y


def _dwconv2d_layer_norm_launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Launch ``_dwconv2d_layer_norm_kernel``; returns [N, H, W, C] contiguous."""
    _check(x, weight, ("bias", bias), ("ln_weight", ln_weight), ("ln_bias", ln_bias))
    N, C, H, W = x.shape
    K = weight.shape[-1]
    y = torch.empty((N, H, W, C), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    wt = _tap_major(weight)
    BLOCK_H, BLOCK_W, BLOCK_C, num_warps = _ln_blocks(C, W, K)
    n_th, n_tw = triton.cdiv(H, BLOCK_H), triton.cdiv(W, BLOCK_W)
    grid = (N * n_th * n_tw,)
    launch(
        _dwconv2d_layer_norm_kernel, grid,
        x, wt, _dummy(bias, wt), _dummy(ln_weight, wt), _dummy(ln_bias, wt), y, C, H, W, n_th, n_tw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), eps,
        K=K, HAS_BIAS=bias is not None, HAS_LW=ln_weight is not None, HAS_LB=ln_bias is not None,
        BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, INT64=_use_int64(x, y), num_warps=num_warps,
    )  # fmt: skip
    return y


_dwconv2d_op = register_op("fastvit::dwconv2d", _dwconv2d_launch)
_dwconv2d_layer_norm_op = register_op("fastvit::dwconv2d_layer_norm", _dwconv2d_layer_norm_launch)


# ----------------------------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------------------------


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv, stride 1, padding k//2: ``F.conv2d(x, weight, bias, padding=k//2, groups=C)``.

    Args:
        x: [N, C, H, W], NCHW or channels_last, fp32/fp16/bf16. weight: [C, 1, k, k], odd k. bias: [C] or None.
    Returns:
        [N, C, H, W] in x.dtype and x's memory format (fp32 accumulation, one rounding on store).
    """
    _check(x, weight, ("bias", bias))
    if not use_triton(x, weight, bias) or not _supported(x, weight):
        return dwconv2d_ref(x, weight, bias)
    return _dwconv2d_op(x, weight, bias)


def dwconv2d_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Depthwise conv followed by LayerNorm over channels, fused (the start of a ConvNeXt block).

    Args:
        x: [N, C, H, W], NCHW or channels_last. weight: [C, 1, k, k], odd k. bias, ln_weight, ln_bias: [C] or None.
        eps: LayerNorm epsilon.
    Returns:
        [N, H, W, C] contiguous in x.dtype: what the block's pointwise Linear consumes.
    """
    _check(x, weight, ("bias", bias), ("ln_weight", ln_weight), ("ln_bias", ln_bias))
    if not use_triton(x, weight, bias, ln_weight, ln_bias) or not _supported(x, weight) or x.shape[1] > _MAX_LN_C:
        return dwconv2d_layer_norm_ref(x, weight, bias, ln_weight, ln_bias, eps)
    return _dwconv2d_layer_norm_op(x, weight, bias, ln_weight, ln_bias, float(eps))
