"""ConvNeXt V2 Global Response Normalization on channels-last ``[N, H, W, C]`` (HF ``ConvNextV2GRN``).

    gx = ||x[n, :, :, c]||_2                      # [N, C], L2 norm over H, W
    nx = gx / (mean_c(gx) + eps)                  # [N, C]
    y  = gamma * (x * nx) + beta + x

Memory traffic: x is read twice and y written once (3 * numel * itemsize bytes; the "effective" figure counts one
read + one write) plus 4 bytes per (n, c) of scratch, in three launches (pass 3 walks the images in the reverse
order of pass 1, so its re-read of x hits L2 for the last images read, and for all of x when x fits in L2):
  1. ``_grn_sumsq_kernel``: partial sums of squares over a slice of H*W per (n, c block, split), tiles
     ``[BLOCK_HW, BLOCK_C]`` coalesced over C, written to an fp32 scratch ``[N, SPLIT, C]`` (deterministic, no
     atomics);
  2. ``_grn_nx_kernel``: one tiny program per image turns the partials into nx ``[N, C]``;
  3. ``_grn_apply_kernel``: y = gamma * (x * nx) + beta + x, tile by tile.
Any strides for x (no copies; offsets in int64); y is contiguous. fp32 math, one cast on store.
"""

from __future__ import annotations

import torch

from ._common import DTYPES, check_input, check_param, next_pow2
from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import launch, register_op, tl, triton, use_triton

MAX_SPLIT = 64  # H*W slices per (n, c block) in pass 1


def grn_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Torch reference (and fallback): HF ConvNextV2GRN with all math in (at least) fp32.

    Args:
        x: ``[N, H, W, C]``. gamma, beta: ``[C]`` or ``[1, 1, 1, C]``. eps: added to the mean norm.
    Returns:
        ``[N, H, W, C]`` in x.dtype.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    gx = torch.norm(xf, p=2, dim=(1, 2), keepdim=True)  # [N, 1, 1, C]
    nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
    return (gamma.to(acc).reshape(-1) * (xf * nx) + beta.to(acc).reshape(-1) + xf).to(x.dtype)


@triton.jit
def _hw_offsets(hw, Wd, stride_h, stride_w, FLAT_HW: tl.constexpr):
    """int64 offsets of flat map positions ``hw`` (int64) for strides (stride_h, stride_w)."""
    if FLAT_HW:
        return hw * stride_w
    else:
        return (hw // Wd) * stride_h + (hw % Wd) * stride_w


@triton.jit
def _grn_sumsq_kernel(
    X,  # [N, H, W, C] with strides (stride_xn, stride_xh, stride_xw, stride_xc)
    P,  # [N, SPLIT, C] fp32 scratch: partial sums of squares
    C,
    HW,
    Wd,
    SPLIT,
    ROWS,  # map positions per split, a multiple of BLOCK_HW
    stride_xn,
    stride_xh,
    stride_xw,
    stride_xc,
    FLAT_HW: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # over N * SPLIT
    n = (pid // SPLIT).to(tl.int64)
    s = pid % SPLIT
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_c = X + n * stride_xn + c.to(tl.int64)[None, :] * stride_xc  # [1, BLOCK_C]
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for start in range(0, ROWS, BLOCK_HW):
        hw = (s * ROWS + start + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = (hw < HW)[:, None] & c_mask[None, :]
        x = tl.load(x_c + _hw_offsets(hw, Wd, stride_xh, stride_xw, FLAT_HW)[:, None], mask=mask, other=0.0)
        x = x.to(tl.float32)
        acc += x * x
    tl.store(P + (n * SPLIT + s) * C + c, tl.sum(acc, axis=0), mask=c_mask)


@triton.jit
def _grn_nx_kernel(
    P,  # [N, SPLIT, C] fp32 partial sums of squares
    NX,  # [N, C] fp32 out: gx / (mean_c(gx) + eps)
    C,
    SPLIT,
    eps,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    p_n = P + n * SPLIT * C + s[:, None] * C  # [BLOCK_S, 1]
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        mask = (s < SPLIT)[:, None] & (c < C)[None, :]
        total += tl.sqrt(tl.sum(tl.load(p_n + c[None, :], mask=mask, other=0.0), axis=0))
    denom = tl.sum(total, axis=0) / C + eps
    for start in range(0, C, BLOCK_C):  # recompute gx rather than re-read stores of other threads
        c = start + tl.arange(0, BLOCK_C)
        mask = (s < SPLIT)[:, None] & (c < C)[None, :]
        gx = tl.sqrt(tl.sum(tl.load(p_n + c[None, :], mask=mask, other=0.0), axis=0))
        tl.store(NX + n * C + c, gx / denom, mask=c < C)


@triton.jit
def _grn_apply_kernel(
    X,  # [N, H, W, C] with strides (stride_xn, stride_xh, stride_xw, stride_xc)
    Y,  # [N, H*W, C] contiguous
    NX,  # [N, C] fp32
    G,  # [C] gamma
    Bt,  # [C] beta
    C,
    HW,
    Wd,
    stride_xn,
    stride_xh,
    stride_xw,
    stride_xc,
    FLAT_HW: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # over N * cdiv(HW, BLOCK_HW)
    n_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    # last image first: pass 1 read the images in order, so the last ones are the likeliest still in L2
    n = (tl.num_programs(0) // n_hw_blocks - 1 - pid // n_hw_blocks).to(tl.int64)
    hw = ((pid % n_hw_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (hw < HW)[:, None] & c_mask[None, :]
    x_off = n * stride_xn + _hw_offsets(hw, Wd, stride_xh, stride_xw, FLAT_HW)[:, None]
    x = tl.load(X + x_off + c.to(tl.int64)[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
    nx = tl.load(NX + n * C + c, mask=c_mask, other=0.0)[None, :]
    g = tl.load(G + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    b = tl.load(Bt + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    y = g * (x * nx) + b + x  # HF's order of operations
    tl.store(Y + (n * HW + hw[:, None]) * C + c[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    check_input("grn", x, 4)
    if x.dim() != 4:
        raise ValueError(f"grn: x must be channels-last [N, H, W, C], got shape {tuple(x.shape)}")
    C = x.shape[-1]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"grn: {name} must be a tensor of shape ({C},) or (1, 1, 1, {C}), got {type(p).__name__}")
        if tuple(p.shape) not in ((C,), (1, 1, 1, C)):
            raise ValueError(f"grn: {name} must have shape ({C},) or (1, 1, 1, {C}), got {tuple(p.shape)}")
        check_param("grn", name, p, x)


def _grn_launcher(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Check, allocate (contiguous output, fp32 scratch), launch the three passes."""
    _check(x, gamma, beta)
    if x.dtype not in DTYPES:
        raise ValueError(f"grn: the Triton kernel takes {DTYPES}, got {x.dtype}")
    N, H, Wd, C = x.shape
    y = torch.empty((N, H, Wd, C), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    HW = H * Wd
    sn, sh, sw, sc = x.stride()
    flat_hw = H == 1 or sh == Wd * sw
    BLOCK_C = min(next_pow2(C), 128)  # 256 contiguous bytes per bf16 row
    BLOCK_HW = min(max(4096 // BLOCK_C, 1), next_pow2(HW))
    num_warps = min(max(BLOCK_C * BLOCK_HW // 512, 1), 8)
    # pass 1: split H*W so that every (n, c block) has a few programs, each at most 512 map positions
    split = min(MAX_SPLIT, triton.cdiv(HW, 512))
    rows = triton.cdiv(triton.cdiv(HW, split), BLOCK_HW) * BLOCK_HW
    split = triton.cdiv(HW, rows)
    partial = torch.empty((N, split, C), dtype=torch.float32, device=x.device)
    c_blocks = triton.cdiv(C, BLOCK_C)
    launch(
        _grn_sumsq_kernel,
        (N * split, c_blocks),
        x,
        partial,
        C,
        HW,
        Wd,
        split,
        rows,
        sn,
        sh,
        sw,
        sc,
        FLAT_HW=flat_hw,
        BLOCK_HW=BLOCK_HW,
        BLOCK_C=BLOCK_C,
        num_warps=num_warps,
    )
    # pass 2: nx [N, C]
    nx = torch.empty((N, C), dtype=torch.float32, device=x.device)
    BLOCK_S = next_pow2(split)
    launch(
        _grn_nx_kernel,
        (N,),
        partial,
        nx,
        C,
        split,
        eps,
        BLOCK_S=BLOCK_S,
        BLOCK_C=max(1, min(next_pow2(C), 4096 // BLOCK_S)),
        num_warps=4,
    )
    # pass 3: y = gamma * (x * nx) + beta + x
    launch(
        _grn_apply_kernel,
        (N * triton.cdiv(HW, BLOCK_HW), c_blocks),
        x,
        y,
        nx,
        gamma.reshape(-1).contiguous(),
        beta.reshape(-1).contiguous(),
        C,
        HW,
        Wd,
        sn,
        sh,
        sw,
        sc,
        FLAT_HW=flat_hw,
        BLOCK_HW=BLOCK_HW,
        BLOCK_C=BLOCK_C,
        num_warps=num_warps,
    )
    return y


@kernel_cost(_grn_sumsq_kernel)
def _grn_sumsq_cost(r) -> Cost:
    """Pass 1: x read once, the fp32 partial sums written."""
    return Cost(read=nbytes(r["X"]), written=nbytes(r["P"]), kind="norm")


@kernel_cost(_grn_nx_kernel)
def _grn_nx_cost(r) -> Cost:
    """Pass 2: the partial sums read, nx [N, C] written."""
    return Cost(read=nbytes(r["P"]), written=nbytes(r["NX"]), kind="norm")


@kernel_cost(_grn_apply_kernel)
def _grn_apply_cost(r) -> Cost:
    """Pass 3: x (again), nx, gamma and beta read, y written."""
    read = nbytes(r["X"]) + nbytes(r["NX"]) + nbytes(r["G"]) + nbytes(r["Bt"])
    return Cost(read=read, written=nbytes(r["Y"]), kind="norm")


_grn_op = register_op("fastvit::grn", _grn_launcher)


def grn(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRN: the Triton kernels where they apply, else :func:`grn_ref`.

    Args:
        x: ``[N, H, W, C]`` fp32/fp16/bf16, any strides. gamma, beta: ``[C]`` or ``[1, 1, 1, C]``.
        eps: added to the mean over C of the per-channel L2 norms.
    Returns:
        ``[N, H, W, C]`` contiguous, in x.dtype.
    """
    _check(x, gamma, beta)
    if not use_triton(x, gamma, beta) or x.dtype not in DTYPES:
        return grn_ref(x, gamma, beta, eps)
    return _grn_op(x, gamma, beta, float(eps))
