"""Fused multi-head attention forward (flash-style online softmax) with an optional key padding mask.

    out = softmax(q @ k^T * scale + mask) @ v        q, k, v: [B, H, S, D] -> out: [B, H, S, D]

The S x S score matrix is never materialized: each program owns BLOCK_M query rows of one (batch, head), streams
the keys/values in BLOCK_N blocks and keeps a running max / running sum in fp32 (FlashAttention-2 forward, as in
the Triton tutorial 06). Memory traffic: q, k, v read once per query block, out written once.

Fully-masked rows. ``key_padding_mask[b]`` may mark every key of a batch row as padded. HF's eager attention adds
``finfo(float32).min`` to the padded scores, which makes all scores of such a row equal, hence uniform weights:
the output of a fully-masked row is the **mean of V over all S keys** (torch SDPA with a boolean mask would give
NaN instead). Both the kernel and :func:`attention_ref` implement the HF behaviour, so patched HF models give the
same numbers as eager ones. The kernel gets it by *replacing* padded scores with a large finite negative value
(equal for every padded key), while keys past the end of the sequence get ``-inf``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._cost import Cost, kernel_cost, nbytes
from ._dispatch import INTERPRET, launch, register_op, tl, triton, use_triton

SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp32: interpreter only (see attention())
_OUT_LAYOUTS = ("bhsd", "bshd")
_LOG2E = 1.4426950408889634
TAIL_N = 16  # key blocks after the last full one, under the interpreter (GPU: from the autotune config)


# ----------------------------------------------------------------------------------------------------------------
# torch reference (also the fallback)
# ----------------------------------------------------------------------------------------------------------------
def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, out_layout: str
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be [B, H, S, D] (4-D), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"attention: q {tuple(q.shape)} and k/v {tuple(k.shape)} must agree on B, H and D ([B, H, S, D])"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if key_padding_mask is not None:
        expected = (k.shape[0], k.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"attention: key_padding_mask must be [B, S] = {list(expected)} (1 = keep, 0 = padded key), "
                f"got shape {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != k.device:
            raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device}, k on {k.device}")
    if out_layout not in _OUT_LAYOUTS:
        raise ValueError(f"attention: out_layout must be one of {_OUT_LAYOUTS}, got {out_layout!r}")


def _check_key_bias(k: torch.Tensor, key_padding_mask: torch.Tensor | None, key_bias: torch.Tensor) -> None:
    if key_padding_mask is not None:
        raise ValueError("attention: pass key_padding_mask or key_bias, not both")
    expected = (k.shape[0], k.shape[2])
    if tuple(key_bias.shape) != expected or not key_bias.is_floating_point():
        raise ValueError(
            f"attention: key_bias must be a float [B, S] = {list(expected)} tensor (added to the scores), got "
            f"{key_bias.dtype} of shape {tuple(key_bias.shape)}"
        )
    if key_bias.device != k.device:
        raise ValueError(f"attention: key_bias is on {key_bias.device}, k on {k.device}")


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    out_layout: str = "bhsd",
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Torch reference and fallback: ``F.scaled_dot_product_attention`` (non-causal) with HF mask semantics.

    Args:
        q: [B, H, Sq, D]; k, v: [B, H, S, D] (any strides).
        key_padding_mask: optional [B, S], bool or 0/1 numbers; 0/False marks a padded key (any nonzero keeps it).
        scale: softmax scale, default ``1/sqrt(D)``.
        out_layout: ``"bhsd"`` -> [B, H, Sq, D] contiguous; ``"bshd"`` -> [B, Sq, H, D] contiguous.
        key_bias: optional [B, S] float added to the scores (HF's additive mask row; exclusive with the above).
    Returns:
        The attention output in q's dtype. A batch row whose keys are all padded gets the mean of V over all S keys
        (HF eager semantics, see the module docstring); gradients stay finite.
    """
    _check_inputs(q, k, v, key_padding_mask, out_layout)
    mask = empty = None
    if key_bias is not None:
        _check_key_bias(k, key_padding_mask, key_bias)
        # scores + bias in (at least) fp32, as the kernel: an fp32 finfo.min bias stays finite (fp16 would make it
        # -inf, NaN rows); a row padded everywhere then has equal scores: the mean of V, as HF eager
        acc = torch.promote_types(q.dtype, torch.float32)
        bias = key_bias[:, None, None, :].to(acc)  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q.to(acc), k.to(acc), v.to(acc), attn_mask=bias, scale=scale)
        out = out.to(q.dtype)
        return (out.transpose(1, 2) if out_layout == "bshd" else out).contiguous()
    if key_padding_mask is not None:
        keep = key_padding_mask != 0  # [B, S]
        empty = ~keep.any(dim=-1)  # [B]: every key padded
        mask = (keep | empty[:, None])[:, None, None, :]  # [B, 1, 1, S]; empty rows unmasked to stay finite
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if empty is not None:
        acc = torch.promote_types(v.dtype, torch.float32)  # float64 stays float64
        v_mean = v.mean(dim=-2, keepdim=True, dtype=acc).to(v.dtype)  # [B, H, 1, D]
        out = torch.where(empty[:, None, None, None], v_mean, out)
    if out_layout == "bshd":
        return out.transpose(1, 2).contiguous()
    return out.contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_block(
    acc,
    l_i,
    m_i,
    q,
    k_ptrs,
    v_ptrs,
    mask_ptrs,
    offs_n,
    n_left,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TAIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One key block: acc [BLOCK_M, BLOCK_D] fp32, l_i/m_i [BLOCK_M] fp32 (log2 domain); ``TAIL``: n_left < BLOCK_N."""
    offs_d = tl.arange(0, BLOCK_D)
    if TAIL:
        n_valid = offs_n < n_left
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs, mask=n_valid[None, :], other=0.0)  # [BLOCK_D, BLOCK_N]
            v = tl.load(v_ptrs, mask=n_valid[:, None], other=0.0)  # [BLOCK_N, BLOCK_D]
        else:
            k = tl.load(k_ptrs, mask=n_valid[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
            v = tl.load(v_ptrs, mask=n_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    if DOT_FP32:  # interpreter work-around: its bf16 tl.dot is wrong; fp32 dots on the same (rounded) values
        k = k.to(tl.float32)
    qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N] fp32, log2 domain
    if HAS_MASK:
        if TAIL:
            keep = tl.load(mask_ptrs, mask=n_valid, other=0)
        else:
            keep = tl.load(mask_ptrs)
        if HAS_MASK == 2:  # additive [B, S] bias (HF's extended mask row), log2 domain, floored at -1e30: a padded
            # key's score is then -1e30 exactly (finite and equal, like the keep-mask below)
            qk = qk + tl.maximum(keep.to(tl.float32)[None, :] * 1.4426950408889634, -1.0e30)
        else:
            qk = tl.where(keep[None, :] != 0, qk, -1.0e30)  # padded: finite and equal, see the module docstring
    if TAIL:
        qk = tl.where(n_valid[None, :], qk, float("-inf"))  # past the end: not a key at all
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    p = p.to(v.dtype)
    if DOT_FP32:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = tl.dot(p, v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(
    Q,  # [B, H, Sq, D], unit stride on D
    K,  # [B, H, S, D], unit stride on D
    V,  # [B, H, S, D], unit stride on D
    Out,  # [B, H, Sq, D] (any strides, unit stride on D)
    Mask,  # [B, S]: HAS_MASK 1: int8/bool, 0 = padded key; 2: float additive bias; 0: unused
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_mb,
    stride_mn,
    N_Q,
    N_K,
    N_K_BUCKET,  # next power of two of N_K: autotune key only
    qk_scale,  # scale * log2(e)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two of HEAD_DIM
    HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,  # upcast dot operands to fp32 (interpreter + bf16 only)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TAIL_N: tl.constexpr,  # keys past the last full BLOCK_N block go in blocks of TAIL_N (<= BLOCK_N)
):
    start_m = tl.program_id(0)
    off_b = tl.program_id(1).to(tl.int64)
    off_h = tl.program_id(2).to(tl.int64)
    row0 = start_m.to(tl.int64) * BLOCK_M

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # int64 base offsets (batch, head, first row); in-block offsets are small
    q_ptrs = (
        Q + off_b * stride_qb + off_h * stride_qh + row0 * stride_qm + offs_m[:, None] * stride_qm + offs_d[None, :]
    )
    k_ptrs = K + off_b * stride_kb + off_h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None]  # [D, N]
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]  # [N, D]
    mask_ptrs = Mask + off_b * stride_mb + offs_n * stride_mn

    m_valid = (row0 + offs_m) < N_Q
    if BLOCK_D == HEAD_DIM:
        q = tl.load(q_ptrs, mask=m_valid[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    n_full = (N_K // BLOCK_N) * BLOCK_N
    for _ in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attn_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, offs_n, BLOCK_N, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, HAS_MASK, False, DOT_PRECISION, DOT_FP32,
        )  # fmt: skip
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        mask_ptrs += BLOCK_N * stride_mn
    # the last N_K - n_full keys in blocks of TAIL_N: S = 257 costs 4 blocks of 64 + one of 16, not 5 of 64
    offs_t = tl.arange(0, TAIL_N)
    k_ptrs = K + off_b * stride_kb + off_h * stride_kh + (n_full + offs_t)[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + (n_full + offs_t)[:, None] * stride_vn + offs_d[None, :]
    mask_ptrs = Mask + off_b * stride_mb + (n_full + offs_t) * stride_mn
    for start in tl.range(n_full, N_K, TAIL_N, num_stages=1):  # at most BLOCK_N / TAIL_N blocks: not pipelined
        acc, l_i, m_i = _attn_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, offs_t, N_K - start, qk_scale,
            TAIL_N, HEAD_DIM, BLOCK_D, HAS_MASK, True, DOT_PRECISION, DOT_FP32,
        )  # fmt: skip
        k_ptrs += TAIL_N * stride_kn
        v_ptrs += TAIL_N * stride_vn
        mask_ptrs += TAIL_N * stride_mn

    # l_i >= 1: the first block always holds an in-range key, whose weight is exp2(0) at the running max
    acc = acc / l_i[:, None]
    o_ptrs = (
        Out + off_b * stride_ob + off_h * stride_oh + row0 * stride_om + offs_m[:, None] * stride_om + offs_d[None, :]
    )
    if BLOCK_D == HEAD_DIM:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_valid[:, None])
    else:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM))


def _prune_configs(configs, named_args, **kwargs):
    """Keep the configs worth timing for this shape (at most four):
      * BLOCK_M values that pad the queries least (within 5%): S = 257 keeps 64 only (320 rows computed; 128 would
        compute 384), S = 197 / 577 / 1370 keep 64 and 128;
      * BLOCK_N <= the keys rounded up to a power of two (at least 64): the keys past the last full block cost
        blocks of TAIL_N = 16 (4 warps) or 32 (8 warps), whatever BLOCK_N;
      * no 128 x 128 tiles with a head dim padded to 128 and more than two stages (shared memory).
    """
    n_q, n_k, block_d = named_args["N_Q"], named_args["N_K"], kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    rows = {bm: triton.cdiv(n_q, bm) * bm for bm in {c.kwargs["BLOCK_M"] for c in configs}}
    kept = [
        c
        for c in configs
        if rows[c.kwargs["BLOCK_M"]] <= 1.05 * min(rows.values())
        and c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(n_k))
        and not (block_d >= 128 and c.kwargs["BLOCK_N"] == 128 and c.num_stages > 2)  # shared memory
    ]
    return kept or configs[:1]


# TAIL_N: 16 keys on 4 warps, 32 on 8, so that the tail's K/V tiles still give each thread 16-byte loads at D = 64
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TAIL_N": 4 * w}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((64, 64, 4, 3), (64, 128, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2))
]
# the interpreter: one fixed small config (autotuning there is slow and meaningless); tests may change it
INTERPRET_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64}

if INTERPRET:
    _attn_fwd_launchable = _attn_fwd
else:
    _attn_fwd_launchable = triton.autotune(
        configs=_GPU_CONFIGS,
        key=["N_K_BUCKET", "HEAD_DIM", "HAS_MASK"],  # (+ dtypes); bucketed S: varying text lengths retune rarely
        prune_configs_by={"early_config_prune": _prune_configs},
    )(_attn_fwd)


# ----------------------------------------------------------------------------------------------------------------
# launcher (registered op) and public function
# ----------------------------------------------------------------------------------------------------------------
def _attention_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    bshd: bool,
    additive: bool,
) -> torch.Tensor:
    """Allocate the output and launch the kernel. Inputs checked by :func:`attention` (unit stride on D).
    ``additive``: ``key_padding_mask`` is a float bias added to the scores (``key_bias``), not a keep-mask."""
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    if bshd:
        out = torch.empty((B, n_q, H, D), device=q.device, dtype=q.dtype)
        o = out.transpose(1, 2)  # [B, H, Sq, D] view
    else:
        out = o = torch.empty((B, H, n_q, D), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    if key_padding_mask is not None and additive:
        mask = key_padding_mask  # [B, S] float: added to the scores
        stride_mb, stride_mn = mask.stride()
    elif key_padding_mask is not None:
        mask = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        mask = mask.view(torch.int8)  # [B, S], free reinterpretation of bool
        stride_mb, stride_mn = mask.stride()
    else:
        mask, stride_mb, stride_mn = q, 0, 0  # dummy pointer, never read
    dot_fp32 = INTERPRET and q.dtype == torch.bfloat16  # the interpreter's bf16 tl.dot is broken (triton 3.9)
    meta = {
        "HEAD_DIM": D,
        "BLOCK_D": triton.next_power_of_2(D),
        "HAS_MASK": 0 if key_padding_mask is None else (2 if additive else 1),
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 or dot_fp32 else "tf32",
        "DOT_FP32": dot_fp32,
    }
    if INTERPRET:
        meta.update(TAIL_N=TAIL_N, **INTERPRET_CONFIG)
    grid = lambda META: (triton.cdiv(n_q, META["BLOCK_M"]), B, H)  # B, H < 65536 (CUDA grid y/z limit)
    launch(
        _attn_fwd_launchable,
        grid,
        q, k, v, o, mask,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        stride_mb, stride_mn,
        n_q, n_k, triton.next_power_of_2(n_k),
        scale * _LOG2E,
        **meta,
    )  # fmt: skip
    return out


@kernel_cost(_attn_fwd)
def _attn_fwd_cost(r) -> Cost:
    """q, k, v (and the [B, S] int8 key mask) read once, out written once; 4*B*H*Sq*Sk*D FLOPs (QK^T and PV)."""
    q = r["Q"]
    B, H, n_q, D = q.shape
    n_k = r["N_K"]
    read = nbytes(q) + nbytes(r["K"]) + nbytes(r["V"]) + (nbytes(r["Mask"], B * n_k) if r["HAS_MASK"] else 0)
    return Cost(read=read, written=nbytes(r["Out"]), flops=4.0 * B * H * n_q * n_k * D, kind="attention")


_attention_op = register_op("fastvit::attention", _attention_launch)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    out_layout: str = "bhsd",
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Non-causal multi-head attention ``softmax(q k^T * scale [+ key_bias]) v`` with an optional key padding mask.

    Args:
        q: [B, H, Sq, D]; k, v: [B, H, S, D] (Sq == S for self-attention). Any strides with unit stride on D, e.g.
            views of a fused QKV projection ``qkv.view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)``; a non-unit D stride
            is made contiguous first (one copy).
        key_padding_mask: optional [B, S], bool or 0/1 ints/floats; 0/False = padded key (scored as -inf).
            A batch row with every key padded yields the mean of V (HF eager semantics, see the module docstring).
        scale: softmax scale, default ``1/sqrt(D)``.
        out_layout: ``"bhsd"`` (default) -> [B, H, Sq, D] contiguous; ``"bshd"`` -> [B, Sq, H, D] contiguous, so
            ``out.view(B, Sq, H * D)`` feeds the output projection without a transpose copy.
        key_bias: optional [B, S] float, added to every query's scores (an HF additive mask ``[B, 1, 1, S]`` read
            whole: any values, ``finfo.min`` for padding). Exclusive with ``key_padding_mask``.
    Returns:
        Attention output in q's dtype.

    The Triton kernel runs for fp16/bf16 and head dims 32, 64, 80, 96, 128, with fp32 softmax and accumulators
    and the weights rounded to the input dtype before ``P @ V`` (as the flash backends of SDPA). fp32 inputs run
    the kernel with IEEE fp32 dots (no TF32, so it matches eager fp32) under the interpreter; on CUDA they take
    :func:`attention_ref` (SDPA's fp32 kernels are exact, and Triton's IEEE fp32 dot is FMA-emulated: slow to
    compile and no faster). Anything else, and anything that needs gradients, runs :func:`attention_ref`.
    """
    _check_inputs(q, k, v, key_padding_mask, out_layout)
    additive = key_bias is not None
    if additive:
        _check_key_bias(k, key_padding_mask, key_bias)
    if (
        not use_triton(q, k, v)
        or q.dtype not in _KERNEL_DTYPES
        or (q.dtype == torch.float32 and q.device.type in ("cuda", "meta"))  # SDPA's fp32: exact and faster
        or q.shape[-1] not in SUPPORTED_HEAD_DIMS
        or k.shape[2] == 0
        or max(q.shape[0], q.shape[1]) > 65535  # CUDA grid y/z limit
    ):
        return attention_ref(
            q, k, v, key_padding_mask=key_padding_mask, scale=scale, out_layout=out_layout, key_bias=key_bias
        )
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    mask = key_bias if additive else key_padding_mask
    return _attention_op(q, k, v, mask, scale, out_layout == "bshd", additive)
