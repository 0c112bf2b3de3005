"""Fused linear layer: ``y = epilogue(prologue(x) @ W^T)`` with fp32 accumulation (ConvNeXt pwconv1/2, ViT fc1/fc2,
q|k|v and output projections).

    A'   = x * a_scale[img(m), k] + a_shift[k]                 prologue (optional; GRN apply folded into pwconv2)
    acc  = A' @ W^T                                             [M, N] fp32
    y    = residual + scale * act(acc + bias)                   epilogue (each term optional)
    sumsq[i, n] = sum over the rows m of image i of y[m, n]^2   (optional; the GRN statistics of pwconv1's output)

Shapes: x ``[..., K]`` (rows ``M = prod(leading dims)``), weight ``[N, K]`` (``nn.Linear`` layout), bias / scale
``[N]``, residual ``[..., N]``, a_scale ``[I, K]`` fp32, a_shift ``[K]``. Rows belong to images in order, ``M / I``
consecutive rows each (an NHWC map flattened: ``img(m) = m // (M / I)``). act: ``none``, ``gelu`` (erf, HF's
``gelu``), ``gelu_tanh``, ``quick_gelu`` (``x * sigmoid(1.702 x)``), ``silu``. ``sumsq`` squares y *as stored*
(after rounding to the output dtype), so it is exactly what a GRN reading y would compute.

ConvNeXt V2's GRN becomes: pwconv1 with ``sumsq_images=N, grn=(gamma, eps)`` (which returns the GRN scale
``gamma * nx + 1`` instead of the raw sums, :func:`grn_prologue`'s formula, computed by the tiny reduction launch)
-> pwconv2 with ``prologue=(gamma * nx + 1, beta)``, because ``gamma * (h * nx) + beta + h == h * (gamma * nx + 1)
+ beta``: the 4C-wide tensor is written once and read once.

Memory traffic: x and W read once per output tile column/row band (the GEMM's own), y written once, residual read
once, the optional partials ``[tiles_m, MAX_SEG, N]`` fp32 written once and reduced by a tiny second launch. No
float atomics: the per-image sums are reduced in a fixed order, so results are deterministic.

Kernel: one program per ``[BLOCK_M, BLOCK_N]`` output tile (grouped ordering for L2 reuse), or a persistent grid
of at most one program per SM walking the tiles; out-of-range rows/columns are clamped on load (no masks in the
K loop unless K is not a multiple of BLOCK_K) and masked on store; ``tl.dot`` lowers to wgmma on Hopper and
mma on Ampere. Tile base offsets are int64, in-tile offsets int32. On Hopper with a Triton that has host-side
tensor descriptors (3.4+: the GPU machines' 3.6, CI's 3.9; feature-detected) and 16-byte aligned rows, two more
configs load the x and W tiles with TMA (``USE_TMA``; zero fill past M, N, K); they are candidates of the timed
choice, never the untimed default. Under the Triton 3.9 interpreter (CPU) bf16/fp16 dots run as fp32 dots of the
same rounded values (its low-precision ``tl.dot`` is wrong).

Choosing: on a GPU the first call per (M bucket, N, K, dtype, epilogue) times the fused kernel (a short pruned
list of tile configs) against cuBLAS + torch epilogue ops and against cuBLAS + this file's one-pass epilogue
kernel, and keeps the fastest (:class:`ImplChooser`; per process, optionally persisted; :func:`fused_linear_choices`
lists them). fp32 on CUDA takes cuBLAS (Triton's IEEE fp32 dot is no faster). On CPU without the interpreter, and
whenever gradients are needed, :func:`fused_linear_ref` (``F.linear`` + in-place torch epilogue ops) runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import DTYPES, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import INTERPRET, Launch, launch, register_op, tl, triton, use_triton

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "quick_gelu", "silu")
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------------------------------------------------
# torch reference (also the fallback)
# ----------------------------------------------------------------------------------------------------------------
def _act_ref(y: torch.Tensor, activation: str) -> torch.Tensor:
    """The activation on a fresh tensor ``y`` (in place where torch has the op)."""
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if activation == "quick_gelu":
        return torch.sigmoid(y * 1.702).mul_(y)  # HF's x * sigmoid(1.702 x), one temporary instead of two
    if activation == "silu":
        return F.silu(y, inplace=True)
    return y


def fused_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str = "none",
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    prologue: tuple[torch.Tensor, torch.Tensor] | None = None,
    sumsq_images: int | None = None,
    grn: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Torch reference (and fallback) of :func:`fused_linear`: ``F.linear`` + torch epilogue ops in x.dtype.

    Arguments and returns as :func:`fused_linear`. Each step is one pass over a fresh tensor (in place where
    possible): prologue ``addcmul``, ``F.linear`` (bias fused by BLAS), activation, ``addcmul`` for
    ``residual + scale * y``, one ``vector_norm`` pass for the sums of squares.
    """
    K, N = x.shape[-1], weight.shape[0]
    if prologue is not None:
        a_scale, a_shift = prologue
        images = a_scale.shape[0]
        x3 = x.reshape(images, -1, K)
        x = torch.addcmul(a_shift.to(x.dtype), x3, a_scale.to(x.dtype)[:, None, :]).view(x.shape)
    y = _act_ref(F.linear(x, weight, bias), activation)
    if residual is not None:
        y = y.add_(residual) if scale is None else torch.addcmul(residual, y, scale)
    elif scale is not None:
        y = y.mul_(scale)
    if sumsq_images is None:
        return y
    y3 = y.reshape(sumsq_images, -1, N)
    sumsq = torch.linalg.vector_norm(y3, dim=1, dtype=torch.promote_types(y.dtype, torch.float32)).square_()
    return y, sumsq if grn is None else _grn_scale(sumsq, *grn)


def _grn_scale(sumsq: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """``gamma * nx + 1`` with ``nx = gx / (mean_c(gx) + eps)``, ``gx = sqrt(sumsq)``: ``[I, C]``."""
    gx = sumsq.sqrt()
    nx = gx.div_(gx.mean(dim=-1, keepdim=True).add_(eps))
    return nx.mul_(gamma.reshape(-1).to(nx.dtype)).add_(1.0)


def grn_prologue(
    sumsq: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prologue that applies ConvNeXt V2's GRN to a GEMM's input, from the sums of squares of that input.

    Args:
        sumsq: ``[I, C]`` fp32 per-(image, channel) sums of squares (from ``fused_linear(..., sumsq_images=I)``).
        gamma, beta: GRN weight and bias, ``[C]`` or ``[1, 1, 1, C]``. eps: added to the mean norm (HF: 1e-6).
    Returns:
        ``(a_scale [I, C] fp32 = gamma * nx + 1, a_shift [C] = beta)`` with ``nx = gx / (mean_c(gx) + eps)``,
        ``gx = sqrt(sumsq)``, so that ``x * a_scale + a_shift == gamma * (x * nx) + beta + x``.
    """
    return _grn_scale(sumsq, gamma, eps), beta.reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _activate(v, ACT: tl.constexpr):
    """``ACTIVATIONS[ACT]`` of fp32 ``v`` (sigmoid forms as torch writes them, so NaN/Inf propagate alike)."""
    if ACT == 1:  # gelu (erf)
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    elif ACT == 2:  # gelu_tanh: 0.5 v (1 + tanh(u)) == v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3)
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        v = v / (1.0 + tl.exp(-2.0 * u))
    elif ACT == 3:  # quick_gelu: v * sigmoid(1.702 v)
        v = v / (1.0 + tl.exp(-1.702 * v))
    elif ACT == 4:  # silu
        v = v / (1.0 + tl.exp(-v))
    return v


@triton.jit
def _epilogue(
    acc,  # [BLOCK_M, BLOCK_N] fp32
    tile_m,
    rm,  # [BLOCK_M] row indices (unclamped)
    rn,  # [BLOCK_N] column indices (unclamped)
    M,
    N,
    ROWS_PER_IMG,
    Y,  # [M, N], row stride stride_ym, unit column stride
    Bias,  # [N]
    Scale,  # [N]
    R,  # [M, N] residual, row stride stride_rm, unit column stride
    P,  # [tiles_m, MAX_SEG, N] fp32 partial sums of squares
    stride_ym,
    stride_rm,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RES: tl.constexpr,
    SUMSQ: tl.constexpr,
    MAX_SEG: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """bias -> act -> scale -> + residual -> store; with SUMSQ, per-image partial sums of squares of the stored y."""
    m_mask = rm < M
    n_mask = rn < N
    mask = m_mask[:, None] & n_mask[None, :]
    rm64 = rm.to(tl.int64)[:, None]
    if HAS_BIAS:
        acc += tl.load(Bias + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc = _activate(acc, ACT)
    if HAS_SCALE:
        acc *= tl.load(Scale + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        acc += tl.load(R + rm64 * stride_rm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    y = acc.to(Y.dtype.element_ty)
    tl.store(Y + rm64 * stride_ym + rn[None, :], y, mask=mask)
    if SUMSQ:
        yf = y.to(tl.float32)
        sq = tl.where(mask, yf * yf, 0.0)
        # the tile's rows span images img0 .. img0 + MAX_SEG - 1: one partial per (tile, image segment, column)
        seg = rm // ROWS_PER_IMG - (tile_m * BLOCK_M) // ROWS_PER_IMG  # [BLOCK_M]
        p_row = P + (tile_m.to(tl.int64) * MAX_SEG) * N + rn
        for j in range(MAX_SEG):  # a cross-warp reduction per image segment (1-2 at ConvNeXt's early stages)
            part = tl.sum(tl.where((seg == j)[:, None], sq, 0.0), axis=0)  # [BLOCK_N]
            tl.store(p_row + j * N, part, mask=n_mask)


@triton.jit
def _fused_linear_kernel(
    A,  # [M, K] with strides (stride_am, stride_ak); with USE_TMA a tensor descriptor, block [BLOCK_M, BLOCK_K]
    Wt,  # [N, K] with strides (stride_wn, stride_wk); with USE_TMA a tensor descriptor, block [BLOCK_N, BLOCK_K]
    Y,  # [M, N], row stride stride_ym
    Bias,  # [N] (dummy unless HAS_BIAS)
    Scale,  # [N] (dummy unless HAS_SCALE)
    R,  # [M, N] residual, row stride stride_rm (dummy unless HAS_RES)
    PS,  # [I, K] fp32 prologue scale (dummy unless HAS_PRO)
    PB,  # [K] prologue shift (dummy unless HAS_PRO)
    P,  # [tiles_m, MAX_SEG, N] fp32 partials (dummy unless SUMSQ)
    M,
    N,
    K,
    ROWS_PER_IMG,
    stride_am,
    stride_ak,
    stride_wn,
    stride_wk,
    stride_ym,
    stride_rm,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_PRO: tl.constexpr,
    SUMSQ: tl.constexpr,
    MAX_SEG: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no masks in the K loop
    DOT_FP32: tl.constexpr,  # interpreter only: dot in fp32 on the rounded operands
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    USE_TMA: tl.constexpr = False,  # A and Wt are tensor descriptors (Hopper TMA loads; zero fill out of bounds)
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    # one tile per program, or persistent (fewer programs than tiles): the same loop
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        group = GROUP_M * num_pid_n  # grouped ordering: GROUP_M row bands share the W columns in L2
        first_m = (tile // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % group) % group_m
        pid_n = (tile % group) // group_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # int64 base of the tile, int32 offsets inside it; rows/columns past the end are clamped to the last one,
        # so loads stay in bounds without masks (their results are never stored)
        row0 = pid_m * BLOCK_M
        col0 = pid_n * BLOCK_N
        if not USE_TMA:
            am = tl.minimum(rm, M - 1) - row0
            wn = tl.minimum(rn, N - 1) - col0
            a_ptrs = A + row0.to(tl.int64) * stride_am + (am[:, None] * stride_am + rk[None, :] * stride_ak)
            w_ptrs = Wt + col0.to(tl.int64) * stride_wn + (wn[None, :] * stride_wn + rk[:, None] * stride_wk)
        if HAS_PRO:
            img = (tl.minimum(rm, M - 1) // ROWS_PER_IMG).to(tl.int64)
            ps_ptrs = PS + img[:, None] * K + rk[None, :]  # [BLOCK_M, BLOCK_K]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if not EVEN_K:
                k_ok = rk < K - k0
            if USE_TMA:
                a = A.load([row0, k0])  # [BLOCK_M, BLOCK_K]
                w = Wt.load([col0, k0]).T  # [BLOCK_K, BLOCK_N]
            elif EVEN_K:
                a = tl.load(a_ptrs)
                w = tl.load(w_ptrs)
            else:
                a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            if HAS_PRO:
                if EVEN_K:
                    s = tl.load(ps_ptrs)
                    b = tl.load(PB + k0 + rk).to(tl.float32)
                else:
                    s = tl.load(ps_ptrs, mask=k_ok[None, :], other=0.0)
                    b = tl.load(PB + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
                a = (a.to(tl.float32) * s + b[None, :]).to(Y.dtype.element_ty)  # zero past K: s = b = 0
                ps_ptrs += BLOCK_K
            if DOT_FP32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
            if not USE_TMA:
                a_ptrs += BLOCK_K * stride_ak
                w_ptrs += BLOCK_K * stride_wk
        _epilogue(
            acc, pid_m, rm, rn, M, N, ROWS_PER_IMG, Y, Bias, Scale, R, P, stride_ym, stride_rm,
            HAS_BIAS, ACT, HAS_SCALE, HAS_RES, SUMSQ, MAX_SEG, BLOCK_M,
        )  # fmt: skip


@triton.jit
def _epilogue_kernel(
    Y0,  # [M, N] the GEMM's result (cuBLAS, bias included), row stride stride_y0m, unit column stride
    Y,  # [M, N] out, row stride stride_ym
    Scale,  # [N]
    R,  # [M, N] residual
    P,  # [tiles_m, MAX_SEG, N] fp32 partials
    M,
    N,
    ROWS_PER_IMG,
    stride_y0m,
    stride_ym,
    stride_rm,
    ACT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RES: tl.constexpr,
    SUMSQ: tl.constexpr,
    MAX_SEG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The epilogue alone, one pass over a cuBLAS result: what the fused kernel is timed against."""
    pid_m = tl.program_id(0)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    acc = tl.load(Y0 + rm.to(tl.int64)[:, None] * stride_y0m + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    _epilogue(
        acc, pid_m, rm, rn, M, N, ROWS_PER_IMG, Y, Y0, Scale, R, P, stride_ym, stride_rm,
        False, ACT, HAS_SCALE, HAS_RES, SUMSQ, MAX_SEG, BLOCK_M,
    )  # fmt: skip


@triton.jit
def _image_column_sums(P, img, rn, n_mask, t_first, t_last, N, ROWS_PER_IMG, TILE_M, MAX_SEG: tl.constexpr):
    """[BLOCK_N] fp32: the partials of image ``img`` at columns ``rn``, summed over its tiles in a fixed order."""
    sums = tl.zeros(rn.shape, dtype=tl.float32)
    for t in range(t_first, t_last + 1):
        seg = img - (t * TILE_M) // ROWS_PER_IMG
        part = tl.load(P + (t * MAX_SEG + seg) * N + rn, mask=n_mask, other=0.0)
        sums += part
    return sums


@triton.jit
def _sumsq_reduce_kernel(
    P,  # [tiles_m, MAX_SEG, N] fp32 partials
    S,  # [I, N] fp32 out: the sums of squares, or (GRN) gamma * nx + 1
    G,  # [N] GRN gamma (dummy unless GRN)
    N,
    ROWS_PER_IMG,
    TILE_M,  # rows per partial tile (the GEMM's BLOCK_M)
    eps,
    GRN: tl.constexpr,
    MAX_SEG: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program per image: sum over the tiles t holding its rows of P[t, image - first image of t, :] (a fixed
    order: deterministic), stored as is or (GRN) as ``gamma * gx / (mean(gx) + eps) + 1`` with ``gx = sqrt(sums)``
    (the mean is over all N columns, so the columns are walked twice; the partials are small)."""
    img = tl.program_id(0).to(tl.int64)
    t_first = (img * ROWS_PER_IMG) // TILE_M
    t_last = ((img + 1) * ROWS_PER_IMG - 1) // TILE_M
    total_gx = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, N, BLOCK_N):
        rn = c0 + tl.arange(0, BLOCK_N)
        n_mask = rn < N
        sums = _image_column_sums(P, img, rn, n_mask, t_first, t_last, N, ROWS_PER_IMG, TILE_M, MAX_SEG)
        if GRN:
            total_gx += tl.sqrt(sums)
        else:
            tl.store(S + img * N + rn, sums, mask=n_mask)
    if GRN:
        denom = tl.sum(total_gx, axis=0) / N + eps
        for c0 in range(0, N, BLOCK_N):  # recompute gx rather than re-read stores of other threads
            rn = c0 + tl.arange(0, BLOCK_N)
            n_mask = rn < N
            sums = _image_column_sums(P, img, rn, n_mask, t_first, t_last, N, ROWS_PER_IMG, TILE_M, MAX_SEG)
            g = tl.load(G + rn, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(S + img * N + rn, g * (tl.sqrt(sums) / denom) + 1.0, mask=n_mask)


# ----------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One tile config of the fused kernel; ``persistent``: at most one program per SM walking the tiles;
    ``tma``: x and W tiles through tensor descriptors (Hopper's TMA engine) instead of pointer loads."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    persistent: bool = False
    tma: bool = False

    @property
    def name(self) -> str:
        kind = "triton" + ("p" if self.persistent else "") + ("-tma" if self.tma else "")
        return f"{kind}:{self.block_m}x{self.block_n}x{self.block_k}w{self.num_warps}s{self.num_stages}"


# Hopper/Ampere bf16/fp16: 128x128x64 on 8 warps (two warpgroups, 64 fp32 accumulators per thread) is the usual
# winner; narrower tiles for small N or small M, a persistent variant of the default for many small tiles. All of
# them compile for sm_90 to wgmma without spills for every epilogue (tests/kernels/test_fused_linear.py); a
# 128x256 tile spills with the GELU + sums-of-squares epilogue and is left out.
GPU_CONFIGS = (
    GemmConfig(128, 128, 64, num_warps=8, num_stages=3),
    GemmConfig(128, 64, 64, num_warps=4, num_stages=4),
    GemmConfig(64, 128, 64, num_warps=4, num_stages=4),
    GemmConfig(64, 64, 64, num_warps=4, num_stages=4),
    GemmConfig(128, 128, 64, num_warps=8, num_stages=3, persistent=True),
    GemmConfig(128, 128, 64, num_warps=8, num_stages=4, tma=True),  # sm_90+, where tensor descriptors exist
    GemmConfig(128, 128, 64, num_warps=8, num_stages=4, persistent=True, tma=True),
)

try:  # host-side tensor descriptors: Triton >= 3.4 (the GPU machines' 3.6 and CI's 3.9 have them)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton, or none: pointer loads only
    TensorDescriptor = None


def tma_ok(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Tensor descriptors apply: Triton has them, a Hopper+ GPU (or the interpreter), unit inner strides and 16-byte
    aligned bases and row strides (K * itemsize % 16 == 0 for contiguous rows)."""
    if TensorDescriptor is None or not (x2.is_cuda or (INTERPRET and x2.device.type == "cpu")):
        return False
    if x2.is_cuda and torch.cuda.get_device_capability(x2.device)[0] < 9:
        return False
    return all(
        t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (x2, weight)
    )


# the interpreter: one small fixed config (autotuning there is slow and meaningless); tests may change it
INTERPRET_CONFIG = GemmConfig(32, 32, 32, group_m=4, num_warps=1, num_stages=1)


def prune_configs(
    M: int, N: int, K: int, prologue: bool = False, tma: bool = False, configs=GPU_CONFIGS
) -> list[GemmConfig]:
    """Drop tiles much larger than the problem, TMA configs where descriptors do not apply (``tma`` False), and
    (with a prologue, whose A tile is scaled in registers) tiles with more than 32 A elements per thread, which
    spill on sm_90: the first kept config is the default."""
    kept = [
        c
        for c in configs
        if (tma or not c.tma)
        and c.block_m <= max(64, next_pow2(M))
        and c.block_n <= max(64, next_pow2(N))
        and not (prologue and c.block_m * c.block_k > 32 * 32 * c.num_warps)
    ]
    return kept or [min(configs, key=lambda c: c.block_m * c.block_n)]


def _max_seg(block_m: int, rows_per_img: int) -> int:
    """Most images one tile of ``block_m`` consecutive rows can touch."""
    return min(block_m, (block_m - 1 + rows_per_img - 1) // rows_per_img + 1)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one call runs: ``"torch"`` (cuBLAS + torch ops), ``"epilogue"`` (cuBLAS + the one-pass epilogue kernel)
    or a :class:`GemmConfig` of the fused kernel."""

    impl: str | GemmConfig

    @property
    def name(self) -> str:
        return self.impl if isinstance(self.impl, str) else self.impl.name


# ----------------------------------------------------------------------------------------------------------------
# launcher (registered op)
# ----------------------------------------------------------------------------------------------------------------
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a small persistent grid still walks several tiles per program


def _fused_linear_launcher(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    residual: torch.Tensor | None,
    a_scale: torch.Tensor | None,
    a_shift: torch.Tensor | None,
    y0: torch.Tensor | None,
    act: int,
    images: int,
    sumsq: bool,
    grn_gamma: torch.Tensor | None,
    grn_eps: float,
    block_m: int,
    block_n: int,
    block_k: int,
    group_m: int,
    num_warps: int,
    num_stages: int,
    persistent: bool,
    use_tma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate ``y [M, N]`` (and the sums of squares ``[images, N]`` fp32, else ``[0, N]``) and launch.

    x ``[M, K]`` (unit stride on K or on M), weight ``[N, K]``, residual ``[M, N]`` with unit column stride;
    checked by :func:`fused_linear`. With ``grn_gamma`` the second output is the GRN scale ``gamma * nx + 1``
    instead of the sums. With ``y0`` (``x @ W^T + bias`` already computed, ``[M, N]``) only the
    epilogue kernel runs (x, weight, bias, the prologue unused); else the fused kernel with the given config.
    """
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    sums = torch.empty((images if sumsq else 0, N), dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:  # no rows: zero sums, a GRN scale of 1 (nx = 0)
        return y, sums.fill_(0.0 if grn_gamma is None else 1.0)
    rows_per_img = M // images
    max_seg = _max_seg(block_m, rows_per_img) if sumsq else 1
    tiles_m = triton.cdiv(M, block_m)
    partials = torch.empty((tiles_m, max_seg, N), dtype=torch.float32, device=x.device) if sumsq else y
    dummy = y  # never read where its flag is off
    res = residual if residual is not None else dummy
    flags = dict(ACT=act, HAS_SCALE=scale is not None, HAS_RES=residual is not None, SUMSQ=sumsq, MAX_SEG=max_seg)
    if y0 is not None:
        launch(
            _epilogue_kernel,
            (tiles_m, triton.cdiv(N, block_n)),
            y0, y, scale if scale is not None else dummy, res, partials,
            M, N, rows_per_img, y0.stride(0), y.stride(0), res.stride(0),
            **flags, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
        )  # fmt: skip
    else:
        dot_fp32 = INTERPRET and x.dtype != torch.float32
        tiles = tiles_m * triton.cdiv(N, block_n)
        grid = (min(tiles, _num_sms(x.device)),) if persistent else (tiles,)
        a, w = x, weight
        if use_tma:
            if not tma_ok(x, weight):
                raise ValueError("fused_linear: tensor descriptors need unit inner strides and 16-byte aligned rows")
            a = TensorDescriptor.from_tensor(x, [block_m, block_k])
            w = TensorDescriptor.from_tensor(weight, [block_n, block_k])
        launch(
            _fused_linear_kernel,
            grid,
            a, w, y,
            bias if bias is not None else dummy,
            scale if scale is not None else dummy,
            res,
            a_scale if a_scale is not None else dummy,
            a_shift if a_shift is not None else dummy,
            partials,
            M, N, K, rows_per_img,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), res.stride(0),
            HAS_BIAS=bias is not None, HAS_PRO=a_scale is not None, **flags,
            EVEN_K=K % block_k == 0,
            DOT_FP32=dot_fp32,
            DOT_PRECISION="ieee" if x.dtype == torch.float32 or dot_fp32 else "tf32",
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, USE_TMA=use_tma,
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    if sumsq:
        launch(
            _sumsq_reduce_kernel,
            (images,),
            partials, sums, grn_gamma if grn_gamma is not None else dummy, N, rows_per_img, block_m, grn_eps,
            GRN=grn_gamma is not None, MAX_SEG=max_seg, BLOCK_N=min(next_pow2(N), 1024), num_warps=4, num_stages=1,
        )  # fmt: skip
    return y, sums


def _epilogue_bytes(r: Launch, M: int, N: int) -> tuple[int, int]:
    """(read, written) of the epilogue's own tensors: scale, residual, y, the partial sums of squares."""
    read = (nbytes(r["Scale"], N) if r["HAS_SCALE"] else 0) + (nbytes(r["R"], M * N) if r["HAS_RES"] else 0)
    return read, nbytes(r["Y"], M * N) + (nbytes(r["P"]) if r["SUMSQ"] else 0)


@kernel_cost(_fused_linear_kernel)
def _fused_linear_cost(r: Launch) -> Cost:
    """x and W read once, y written once; bias, scale, residual, the prologue's scale and shift, partials once."""
    M, N, K = r["M"], r["N"], r["K"]
    read, written = _epilogue_bytes(r, M, N)
    a, w = (getattr(t, "base", t) for t in (r["A"], r["Wt"]))  # a tensor descriptor's tensor is its .base
    read += nbytes(a, M * K) + nbytes(w, N * K) + (nbytes(r["Bias"], N) if r["HAS_BIAS"] else 0)
    if r["HAS_PRO"]:
        read += nbytes(r["PS"]) + nbytes(r["PB"], K)
    return Cost(read=read, written=written, flops=2.0 * M * N * K, kind="gemm")


@kernel_cost(_epilogue_kernel)
def _epilogue_cost(r: Launch) -> Cost:
    """The GEMM result read once, y written once (+ scale, residual, partials)."""
    M, N = r["M"], r["N"]
    read, written = _epilogue_bytes(r, M, N)
    return Cost(read=read + nbytes(r["Y0"], M * N), written=written, kind="elementwise")


@kernel_cost(_sumsq_reduce_kernel)
def _sumsq_reduce_cost(r: Launch) -> Cost:
    """The partials read once (twice for GRN: the ideal counts once), the [I, N] result written once, gamma once."""
    gamma = nbytes(r["G"], r["N"]) if r["GRN"] else 0
    return Cost(read=nbytes(r["P"]) + gamma, written=nbytes(r["S"]), kind="elementwise")


_fused_linear_op = register_op("fastvit::fused_linear", _fused_linear_launcher)


def _run_plan(plan: _Plan, x2, weight, bias, activation, scale, res2, prologue, images, sumsq: bool, grn=None):
    """Run ``plan`` on the 2-D problem; returns (y [M, N], sums / GRN scale or None)."""
    if plan.impl == "torch":
        out = fused_linear_ref(
            x2, weight, bias, activation=activation, scale=scale, residual=res2, prologue=prologue,
            sumsq_images=images if sumsq else None, grn=grn,
        )  # fmt: skip
        return (out[0], out[1]) if sumsq else (out, None)
    a_scale, a_shift = prologue if prologue is not None else (None, None)
    if plan.impl == "epilogue":
        xin = x2
        if prologue is not None:
            xin = torch.addcmul(a_shift.to(x2.dtype), x2.view(images, -1, x2.shape[1]), a_scale.to(x2.dtype)[:, None])
            xin = xin.view(x2.shape)
        y0 = F.linear(xin, weight, bias)
        cfg = GemmConfig(64, min(next_pow2(weight.shape[0]), 128), 32, num_warps=4)
        a_scale = a_shift = None
    else:
        y0, cfg = None, plan.impl
    y, sums = _fused_linear_op(
        x2, weight, bias, scale, res2, a_scale, a_shift, y0, _ACT_CODE[activation], images, sumsq,
        None if grn is None else grn[0], 0.0 if grn is None else float(grn[1]),
        cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages, cfg.persistent, cfg.tma,
    )  # fmt: skip
    return y, (sums if sumsq else None)


# ----------------------------------------------------------------------------------------------------------------
# choosing the implementation per shape ("never slower than cuBLAS by choice")
# ----------------------------------------------------------------------------------------------------------------
def cuda_timer(fn: Callable[[], object], reps: int = 10) -> float:
    """Median seconds of ``fn()`` on the current CUDA stream (after two warm-up calls, which also compile)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


@dataclasses.dataclass
class Choice:
    """The implementation kept for one key and the times (seconds) of every candidate."""

    choice: str
    times: dict[str, float]


class ImplChooser:
    """Times candidate implementations the first time a key is seen and keeps the fastest.

    Args:
        timer: ``timer(fn) -> seconds``; injected by tests, :func:`cuda_timer` on GPUs.
        cache_dir: where choices persist across processes (``fused_linear_choices.json``), or None.
    Candidates that raise (a config out of shared memory, a compile error) are skipped; their time is ``inf``.
    """

    FILE = "fused_linear_choices.json"

    def __init__(self, timer: Callable[[Callable[[], object]], float] = cuda_timer, cache_dir: str | None = None):
        self.timer = timer
        self.cache_dir = cache_dir
        self._choices: dict[str, Choice] = {}
        self._loaded = False

    def _path(self) -> Path | None:
        return Path(self.cache_dir) / self.FILE if self.cache_dir else None

    def _load(self) -> None:
        self._loaded = True
        path = self._path()
        if path is None or not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            for key, value in data.items():
                self._choices.setdefault(key, Choice(value["choice"], dict(value["times"])))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt or foreign cache file: choose afresh (and overwrite it)

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in self._choices.items()}, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # persisting is optional

    def cached(self, key: str) -> str | None:
        if not self._loaded:
            self._load()
        choice = self._choices.get(key)
        return None if choice is None else choice.choice

    def choose(self, key: str, candidates: dict[str, Callable[[], object]]) -> str:
        """The name of the fastest candidate for ``key`` (timed on first use, then cached)."""
        known = self.cached(key)
        if known is not None and known in candidates:
            return known
        times = {}
        for name, fn in candidates.items():
            try:
                times[name] = float(self.timer(fn))
            except Exception:  # noqa: BLE001 - any failure disqualifies the candidate, never the call
                times[name] = math.inf
        best = min(times, key=times.get)
        self._choices[key] = Choice(best, times)
        self._save()
        return best

    def table(self) -> list[dict]:
        """One row per key: ``{"key", "choice", "times_us"}`` (for the patch report and ``fastvit info``)."""
        if not self._loaded:
            self._load()
        return [
            {"key": k, "choice": c.choice, "times_us": {n: round(t * 1e6, 1) for n, t in c.times.items()}}
            for k, c in sorted(self._choices.items())
        ]


CHOOSER = ImplChooser(cache_dir=os.environ.get("FASTVIT_CACHE_DIR"))


def fused_linear_choices() -> list[dict]:
    """The per-shape choices made so far in this process (and loaded from the cache dir), as
    :meth:`ImplChooser.table` rows."""
    return CHOOSER.table()


def _key(M: int, N: int, K: int, dtype: torch.dtype, epilogue: str, device: torch.device) -> str:
    """The chooser's key: GPU, M bucket (next power of two: batch sizes share choices), N, K, dtype, epilogue."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}|M{next_pow2(M)}|N{N}|K{K}|{str(dtype).removeprefix('torch.')}|{epilogue}"


# ----------------------------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------------------------
def _check_vec(name: str, t: torch.Tensor | None, n: int, like: torch.Tensor) -> None:
    if t is None:
        return
    if tuple(t.shape) != (n,):
        raise ValueError(f"fused_linear: {name} must have shape ({n},), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"fused_linear: {name} must be a floating tensor, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"fused_linear: {name} is on {t.device} but x is on {like.device}")


def _check(x, weight, bias, activation, scale, residual, prologue, sumsq_images, grn) -> int | None:
    """Validate the arguments; returns the number of images (prologue / sums of squares) or None."""
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"fused_linear: x must be a floating [..., K] tensor, got {x.dtype} {tuple(x.shape)}")
    K = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != K:
        raise ValueError(f"fused_linear: weight must be [N, K={K}] (nn.Linear layout), got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"fused_linear: weight is {weight.dtype} on {weight.device}, x is {x.dtype} on {x.device}")
    N = weight.shape[0]
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    _check_vec("bias", bias, N, x)
    _check_vec("scale", scale, N, x)
    out_shape = (*x.shape[:-1], N)
    if residual is not None:
        if tuple(residual.shape) != out_shape:
            raise ValueError(
                f"fused_linear: residual must have the output's shape {out_shape}, got {tuple(residual.shape)}"
            )
        if residual.device != x.device or not residual.is_floating_point():
            raise ValueError(f"fused_linear: residual must be a floating tensor on {x.device}")
    M = math.prod(x.shape[:-1])
    images = None
    if prologue is not None:
        if not (isinstance(prologue, (tuple, list)) and len(prologue) == 2):
            raise ValueError("fused_linear: prologue must be a pair (a_scale [I, K] fp32, a_shift [K])")
        a_scale, a_shift = prologue
        if a_scale.dim() != 2 or a_scale.shape[1] != K or a_scale.shape[0] < 1:
            raise ValueError(f"fused_linear: prologue a_scale must be [I, K={K}], got {tuple(a_scale.shape)}")
        _check_vec("prologue a_shift", a_shift, K, x)
        if a_scale.device != x.device:
            raise ValueError(f"fused_linear: prologue a_scale is on {a_scale.device} but x is on {x.device}")
        images = a_scale.shape[0]
    if sumsq_images is not None:
        if sumsq_images < 1 or (images is not None and images != sumsq_images):
            raise ValueError(
                f"fused_linear: sumsq_images must be >= 1 (and match the prologue's I), got {sumsq_images}"
            )
        images = sumsq_images
    if grn is not None:
        if sumsq_images is None or not (isinstance(grn, (tuple, list)) and len(grn) == 2):
            raise ValueError("fused_linear: grn must be a pair (gamma [N], eps) and needs sumsq_images")
        if not isinstance(grn[0], torch.Tensor) or grn[0].numel() != N or grn[0].device != x.device:
            raise ValueError(f"fused_linear: grn gamma must hold N={N} values on {x.device}")
    if images is not None and M % images != 0:
        raise ValueError(f"fused_linear: the {M} rows of x do not split into {images} images of equal size")
    return images


def _epilogue_name(bias, activation, scale, residual, prologue, sumsq) -> str:
    parts = [p for p, on in (("bias", bias is not None), ("scale", scale is not None), ("res", residual is not None),
                             ("grnpro", prologue is not None), ("sumsq", sumsq)) if on]  # fmt: skip
    return "+".join([activation, *parts])


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str = "none",
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    prologue: tuple[torch.Tensor, torch.Tensor] | None = None,
    sumsq_images: int | None = None,
    grn: tuple[torch.Tensor, float] | None = None,
    impl: str | GemmConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``y = residual + scale * act(prologue(x) @ weight^T + bias)`` in one kernel where it pays.

    Args:
        x: ``[..., K]`` fp32/fp16/bf16 (any strides; a copy if neither the row nor the column stride is 1).
        weight: ``[N, K]``, x's dtype. bias, scale: ``[N]`` or None. residual: ``[..., N]`` or None (unit stride
            on N, else copied). activation: one of :data:`ACTIVATIONS`.
        prologue: ``(a_scale [I, K] fp32, a_shift [K])``: x is replaced by ``x * a_scale[image] + a_shift`` (the
            I images of ``M / I`` consecutive rows each), rounded to x.dtype before the product.
        sumsq_images: I: also return the per-(image, column) sums of squares of y, ``[I, N]`` fp32.
        grn: ``(gamma, eps)`` (with ``sumsq_images``; gamma ``[N]`` or ``[1, 1, 1, N]``): return ConvNeXt V2's GRN
            scale ``gamma * nx + 1`` (``[I, N]`` fp32, see :func:`grn_prologue`) instead of the sums: the
            ``a_scale`` of the next GEMM's prologue.
        impl: force an implementation where the Triton path applies (benchmarks, tests): ``"torch"`` (cuBLAS +
            torch ops), ``"epilogue"`` (cuBLAS + the one-pass epilogue kernel) or a :class:`GemmConfig`; None: the
            interpreter's config, or on a GPU the fastest, timed on the first call of each shape.
    Returns:
        y ``[..., N]`` contiguous in x.dtype, or ``(y, sumsq)`` with ``sumsq_images``.
    """
    images = _check(x, weight, bias, activation, scale, residual, prologue, sumsq_images, grn)
    sumsq = sumsq_images is not None
    args = dict(activation=activation, scale=scale, residual=residual, prologue=prologue, sumsq_images=sumsq_images)
    args["grn"] = grn
    extra = [t for t in (bias, scale, residual, *(prologue or ())) if t is not None]
    if not use_triton(x, weight, *extra) or x.dtype not in DTYPES or (x.dtype == torch.float32 and x.is_cuda):
        return fused_linear_ref(x, weight, bias, **args)
    K, N = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, K)
    if x2.stride(1) != 1 and x2.stride(0) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    res2 = None if residual is None else residual.reshape(M, N)
    if res2 is not None and res2.stride(1) != 1:
        res2 = res2.contiguous()
    if prologue is not None:
        prologue = (prologue[0].float().contiguous(), prologue[1].contiguous())
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if grn is not None:
        grn = (grn[0].reshape(-1).contiguous(), float(grn[1]))
    call = (x2, weight, bias, activation, scale, res2, prologue, images or 1, sumsq, grn)
    if INTERPRET and x.device.type == "cpu":
        configs = [INTERPRET_CONFIG]
    else:
        configs = prune_configs(M, N, K, prologue is not None, x.is_cuda and tma_ok(x2, weight))
    plan = _Plan(configs[0])  # the interpreter, the meta device, torch.compile tracing: the default, untimed
    if impl is not None:
        plan = _Plan(impl)
    elif x.is_cuda and not torch.compiler.is_compiling():
        key = _key(M, N, K, x.dtype, _epilogue_name(bias, activation, scale, residual, prologue, sumsq), x.device)
        plans = [_Plan("torch")]
        if activation != "none" or scale is not None or residual is not None or sumsq:
            plans.append(_Plan("epilogue"))
        plans += [_Plan(c) for c in configs]
        by_name = {p.name: p for p in plans}
        if not torch.cuda.is_current_stream_capturing():
            plan = by_name[CHOOSER.choose(key, {n: (lambda p=p: _run_plan(p, *call)) for n, p in by_name.items()})]
        elif CHOOSER.cached(key) in by_name:  # a CUDA-graph capture replays what the warm-up call chose
            plan = by_name[CHOOSER.cached(key)]
    y, sums = _run_plan(plan, *call)
    y = y.view(*x.shape[:-1], N)
    return (y, sums) if sumsq else y
