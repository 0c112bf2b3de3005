"""Depthwise 2-D convolution (stride 1, padding k//2, odd k), alone and fused with the LayerNorm over channels that
follows it in a ConvNeXt block (dwconv -> permute -> LayerNorm).

Memory traffic for x of N*C*H*W elements of ``s`` bytes (weights are k*k*C elements, negligible):
  * ``dwconv2d``: one read of x and one write of y, 2*N*C*H*W*s bytes. The k*k taps re-read each input element
    k*k times, from L1/L2: a program owns BLOCK_W pixels of one output row, and programs for neighbouring rows and
    columns run together (program order: channel block, column tile, row, image), so the k input rows they share
    stay in L2.
  * ``dwconv2d_layer_norm``: the same 2*N*C*H*W*s bytes. Eager conv -> permute -> LayerNorm moves 4x that (conv
    read + write, LayerNorm read + write) and 6x when the permuted conv output is first copied to contiguous.

Layout: the kernels index x with strides and tile it as NHWC (a program owns BLOCK_W pixels x BLOCK_C channels of
one output row, channels fastest; loads, weights and accumulators share one [BLOCK_W, BLOCK_C] layout, so the tap
loop has no layout conversion, no shared memory and no barrier: see ``python -m bench.sass``). channels_last inputs
give loads coalesced over C: the fast path. NCHW inputs run the
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

from ._common import DTYPES, check_param, dummy, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import launch, register_op, tl, triton, use_triton

_MAX_K = 15  # the k column taps of each kernel row are unrolled at compile time
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


def _acc(x: torch.Tensor) -> torch.dtype:
    """The math dtype of the references: fp32, or x's dtype when it is wider (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _conv_acc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x: [N, C, H, W], weight: [C, 1, k, k] -> [N, C, H, W] in _acc(x)
    k, acc = weight.shape[-1], _acc(x)
    return F.conv2d(x.to(acc), weight.to(acc), _to(bias, acc), padding=k // 2, groups=x.shape[1])


def dwconv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference: ``F.conv2d(groups=C, padding=k//2)`` with (at least) fp32 math.

    Args:
        x: [N, C, H, W] (NCHW or channels_last). weight: [C, 1, k, k], odd k. bias: [C] or None.
    Returns:
        [N, C, H, W] in x.dtype and x's memory format.
    """
    return _conv_acc(x, weight, bias).to(x.dtype).contiguous(memory_format=_out_format(x))


def dwconv2d_layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Torch reference: depthwise conv then LayerNorm over C (ConvNeXt block start), (at least) fp32 math throughout.

    Args:
        x: [N, C, H, W]. weight: [C, 1, k, k]. bias, ln_weight, ln_bias: [C] or None. eps: LayerNorm epsilon.
    Returns:
        [N, H, W, C] contiguous, x.dtype.
    """
    y = _conv_acc(x, weight, bias).permute(0, 2, 3, 1)  # [N, H, W, C]
    y = F.layer_norm(y, (x.shape[1],), _to(ln_weight, y.dtype), _to(ln_bias, y.dtype), eps)
    return y.to(x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_origin(
    N_CB,  # channel blocks per pixel (1: a program holds all channels)
    N_TW,  # column tiles per row
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
):
    """(n, h, w0, c0) of this program's tile: batch index, output row, first output column / channel. Channel
    block fastest, then column tile, row, image, so that neighbouring programs share the cache lines of NHWC
    pixels and the input rows they re-read."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    cb = pid % N_CB
    pid = pid // N_CB
    tw = pid % N_TW
    pid = pid // N_TW
    return pid, tw * BLOCK_W, cb * BLOCK_C


@triton.jit
def _dwconv_row(
    X,  # [N, C, H, W] input, any strides
    Wt,  # [K, K, C] contiguous weight (tap-major: a tap's weights are contiguous over channels)
    B,  # [C] bias (unused when not HAS_BIAS)
    n,
    h,
    w0,
    c0,  # tile origin: batch index, output row, first output column / channel
    C,
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 conv results [BLOCK_W, BLOCK_C] of output row h, columns w0..w0+BLOCK_W, channels c0..c0+BLOCK_C.

    A loop over the K input rows (not unrolled: it bounds the loads the compiler keeps in flight, hence the
    registers) and, unrolled, the K column shifts of each. Input tile, weight tile and accumulator have one shape
    and contiguity, so one layout: the tap loop needs no layout conversion (no shared memory, no barrier).
    """
    ow = w0 + tl.arange(0, BLOCK_W)[:, None]  # [BW, 1] output column
    cc = c0 + tl.arange(0, BLOCK_C)[None, :]  # [1, BC] channel
    c_mask = cc < C
    # every pointer and mask of the loop is [BW, BC] from the start (the row is a scalar offset): a [1, BC] row
    # pointer broadcast inside the loop took a layout conversion (a barrier) per kernel row
    x_tile = X + n * stride_xn + cc * stride_xc + ow * stride_xw  # [BW, BC] at input row 0, column shift 0
    # weights as a [BW, BC] tile (each row the same taps, re-read from L1): a [BC] vector broadcast along W would
    # take a layout conversion per tap
    w_tile = Wt + cc + 0 * ow  # [BW, BC]
    w_mask = c_mask & (ow >= 0)  # [BW, BC]
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for kh in range(K):
        # input row, as a [1, 1] tensor: the interpreter rejects masks built from a scalar bool
        ih = h + kh - K // 2 + tl.zeros([1, 1], dtype=tl.int32)
        x_row = x_tile + ih * stride_xh
        row_ok = (ih >= 0) & (ih < H)  # [1, 1]
        for kw in tl.static_range(K):
            iw = ow + (kw - K // 2)  # [BW, 1] input column
            x_mask = c_mask & (iw >= 0) & (iw < W) & row_ok  # [BW, BC]
            xv = tl.load(x_row + (kw - K // 2) * stride_xw, mask=x_mask, other=0.0)
            wv = tl.load(w_tile + (kh * K + kw) * C, mask=w_mask, other=0.0)
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
    n_tw,  # number of channel blocks / column tiles
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
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
):
    nh, w0, c0 = _tile_origin(n_cb, n_tw, BLOCK_W, BLOCK_C, INT64)  # nh = n * H + h
    n = nh // H
    h = nh % H
    acc = _dwconv_row(
        X, Wt, B, n, h, w0, c0, C, H, W, stride_xn, stride_xc, stride_xh, stride_xw, K, HAS_BIAS, BLOCK_W, BLOCK_C,
    )  # fmt: skip
    ow = w0 + tl.arange(0, BLOCK_W)[:, None]  # [BW, 1]
    cc = c0 + tl.arange(0, BLOCK_C)[None, :]  # [1, BC]
    y_ptrs = Y + n * stride_yn + h * stride_yh + cc * stride_yc + ow * stride_yw
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(ow < W) & (cc < C))


@triton.jit
def _norm_store(xc, rstd, c, LW, LB, Y, y_row, ow, W, C, HAS_LW: tl.constexpr, HAS_LB: tl.constexpr):
    """One channel block of the LayerNorm: ``xc * rstd`` (centred values [BW, BC], rstd [BW]), times LW[c], plus
    LB[c], stored at ``y_row + c``."""
    y = xc * rstd[:, None]
    if HAS_LW:
        y = y * tl.load(LW + c, mask=c < C, other=0.0).to(tl.float32)
    if HAS_LB:
        y = y + tl.load(LB + c, mask=c < C, other=0.0).to(tl.float32)
    tl.store(y_row + c, y.to(Y.dtype.element_ty), mask=(ow < W) & (c < C))


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
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,  # channels 0..BLOCK_C (a power of two <= C)
    BLOCK_C2: tl.constexpr,  # channels BLOCK_C..C, padded to a power of two (0: none); a program holds all C
    INT64: tl.constexpr,
):
    """Two channel blocks per pixel (C = 96 is 64 + 32: no masked lane), each convolved by :func:`_dwconv_row`,
    then LayerNorm over the C channels of each pixel. Channels >= C hold exact zeros (masked loads), so the plain
    sums are the masked sums."""
    nh, w0, c0 = _tile_origin(1, n_tw, BLOCK_W, BLOCK_C, INT64)  # nh = n * H + h
    n = nh // H
    h = nh % H
    a = _dwconv_row(
        X, Wt, B, n, h, w0, c0, C, H, W, stride_xn, stride_xc, stride_xh, stride_xw, K, HAS_BIAS, BLOCK_W, BLOCK_C,
    )  # fmt: skip
    ca = tl.arange(0, BLOCK_C)[None, :]  # [1, BLOCK_C]
    total = tl.sum(a, axis=1)  # [BW]
    if BLOCK_C2 > 0:
        b = _dwconv_row(
            X, Wt, B, n, h, w0, c0 + BLOCK_C, C, H, W, stride_xn, stride_xc, stride_xh, stride_xw,
            K, HAS_BIAS, BLOCK_W, BLOCK_C2,
        )  # fmt: skip
        cb = BLOCK_C + tl.arange(0, BLOCK_C2)[None, :]  # [1, BLOCK_C2]
        total += tl.sum(b, axis=1)
    mean = total / C
    xa = tl.where(ca < C, a - mean[:, None], 0.0)
    sq = tl.sum(xa * xa, axis=1)
    if BLOCK_C2 > 0:
        xb = tl.where(cb < C, b - mean[:, None], 0.0)
        sq += tl.sum(xb * xb, axis=1)
    rstd = tl.rsqrt(sq / C + eps)
    rstd = tl.where(mean * mean < float("inf"), rstd, float("nan"))  # NaN where F.layer_norm's is (see layer_norm)
    ow = w0 + tl.arange(0, BLOCK_W)[:, None]  # [BW, 1]
    y_row = Y + (nh * W + ow) * C  # [BW, 1]: Y is [N*H, W, C]
    _norm_store(xa, rstd, ca, LW, LB, Y, y_row, ow, W, C, HAS_LW, HAS_LB)
    if BLOCK_C2 > 0:
        _norm_store(xb, rstd, cb, LW, LB, Y, y_row, ow, W, C, HAS_LW, HAS_LB)


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
        check_param("dwconv2d", name, t, x)


def _supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.dtype in DTYPES and weight.shape[-1] <= _MAX_K


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


def _block_w(W: int, lo: int, hi: int) -> int:
    """Columns per tile: the power of two in [lo, hi] (hi capped at next_pow2(W)) whose tiles pad W least, the
    widest of those (W = 56 with lo = 8: 8, 7 tiles and no masked column; 16 would mask 1/8 of them)."""
    hi = max(lo, min(hi, next_pow2(W)))
    widths = [1 << i for i in range(hi.bit_length()) if lo <= 1 << i <= hi] or [lo]
    return min(widths, key=lambda b: (triton.cdiv(W, b) * b, -b))


def _conv_blocks(C: int, W: int) -> tuple[int, int, int]:
    """(BLOCK_W, BLOCK_C, num_warps) for ``dwconv2d``: one output row of BLOCK_W pixels x BLOCK_C channels.

    BLOCK_C: the largest of 128/64/32/16 dividing C (96 -> 32, 192 -> 64, 384/768 -> 128: no masked lanes), else
    next_pow2(C) capped at 128 (one to two 128-byte lines of an NHWC pixel). BLOCK_W: at least 8 elements per
    thread (16-byte accesses), at most ~2048 accumulators, padding W least (:func:`_block_w`).
    """
    block_c = next((b for b in (128, 64, 32, 16) if C % b == 0), min(next_pow2(C), 128))
    block_w = _block_w(W, max(1, 256 // block_c), max(1, 2048 // block_c))
    return block_w, block_c, _num_warps(block_w * block_c)


def _ln_blocks(C: int, W: int) -> tuple[int, int, int, int]:
    """(BLOCK_W, BLOCK_C, BLOCK_C2, num_warps) for ``dwconv2d_layer_norm``: a program holds all C channels of
    BLOCK_W pixels of one output row, as two power-of-two blocks: BLOCK_C = the largest power of two <= C and
    BLOCK_C2 = next_pow2 of the rest (0 if none). ConvNeXt's 3 * 2^k channels (96 = 64 + 32) and ConvNeXt V2's
    5 * 2^k (40 = 32 + 8) mask no lane (BLOCK_C = next_pow2(C) masked 25% / 37.5%).

    BLOCK_W: at least 8 channels per thread in the smaller block (16-byte bf16 accesses need 8 contiguous
    elements per thread), at most ~2048 accumulators, padding W least (:func:`_block_w`): 24 fp32 accumulators per
    thread for 3 * 2^k channels (C = 96 at W = 56: 8 pixels on one warp; C = 1536: one pixel on 2 warps)."""
    block_c = 1 << (C.bit_length() - 1)
    block_c2 = next_pow2(C - block_c) if C > block_c else 0
    lanes, small = block_c + block_c2, block_c2 or block_c
    # two pixels at least below 1024 channels: one pixel of 768 on one warp spilled on Triton 3.6 (24 B of stack)
    block_w = _block_w(W, max(256 // small, 2 if lanes < 1024 else 1), max(1, 2048 // lanes))
    return block_w, block_c, block_c2, _num_warps(block_w * small)


def _num_warps(tile: int) -> int:
    """Warps for [BLOCK_W, BLOCK_C] tiles of ``tile`` elements (the smallest one): at most 4, with at least 8
    elements per thread, so that each thread's loads and stores are 16 bytes wide (bf16) where the tile allows."""
    return max(1, min(4, tile // (8 * 32)))


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
    BLOCK_W, BLOCK_C, num_warps = _conv_blocks(C, W)
    n_cb, n_tw = triton.cdiv(C, BLOCK_C), triton.cdiv(W, BLOCK_W)
    grid = (N * H * n_tw * n_cb,)
    launch(
        _dwconv2d_kernel, grid,
        x, wt, dummy(bias, wt), y, C, H, W, n_cb, n_tw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        K=K, HAS_BIAS=bias is not None, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, INT64=_use_int64(x, y),
        num_warps=num_warps, num_stages=1,
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
    BLOCK_W, BLOCK_C, BLOCK_C2, num_warps = _ln_blocks(C, W)
    n_tw = triton.cdiv(W, BLOCK_W)
    grid = (N * H * n_tw,)
    launch(
        _dwconv2d_layer_norm_kernel, grid,
        x, wt, dummy(bias, wt), dummy(ln_weight, wt), dummy(ln_bias, wt), y, C, H, W, n_tw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), eps,
        K=K, HAS_BIAS=bias is not None, HAS_LW=ln_weight is not None, HAS_LB=ln_bias is not None,
        BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, BLOCK_C2=BLOCK_C2, INT64=_use_int64(x, y), num_warps=num_warps, num_stages=1,
    )  # fmt: skip
    return y


@kernel_cost(_dwconv2d_kernel)
def _dwconv2d_cost(r) -> Cost:
    """x read once, y written once, weights and bias once; 2*k*k FLOPs per output element."""
    x, K, C = r["X"], r["K"], r["C"]
    read = nbytes(x) + nbytes(r["Wt"], K * K * C) + r["HAS_BIAS"] * nbytes(r["B"], C)
    return Cost(read=read, written=nbytes(r["Y"]), flops=2.0 * x.numel() * K * K, kind="dwconv")


@kernel_cost(_dwconv2d_layer_norm_kernel)
def _dwconv2d_layer_norm_cost(r) -> Cost:
    """x read once, the normalized [N, H, W, C] written once, conv and LayerNorm parameters once each."""
    x, K, C = r["X"], r["K"], r["C"]
    params = sum(r[flag] * nbytes(r[name], C) for flag, name in (("HAS_BIAS", "B"), ("HAS_LW", "LW"), ("HAS_LB", "LB")))
    return Cost(
        read=nbytes(x) + nbytes(r["Wt"], K * K * C) + params,
        written=nbytes(r["Y"]),
        flops=2.0 * x.numel() * K * K,
        kind="dwconv",
    )


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
