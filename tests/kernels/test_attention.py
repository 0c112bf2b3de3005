"""fastvit_kernels.attention: Triton kernel (interpreter on CPU, real on GPU) vs the eager formula in fp32.

Tolerances. Every comparison is against the HF eager formula ``softmax(q k^T * scale + additive_mask) v`` computed
in fp32 from the same (rounded) inputs. Two bounds must hold:
  * relative to torch: our max error <= 2 x the max error of torch SDPA (``attention_ref``) run in the input dtype on
    the same inputs, plus a floor of one output ulp (SDPA on CPU keeps the softmax weights in fp32; the kernel, like
    the GPU flash backends, rounds them to the input dtype before ``P @ V``, which costs up to half an ulp more);
  * absolute (``TOL``: dtype -> (atol, rtol)): fp32 1e-5 (IEEE fp32 dots and softmax under the interpreter, SDPA
    on CUDA: only summation-order differences, <= 1e-6 measured); fp16 4e-3 / bf16 3e-2, i.e. ~4 ulps at
    |out| ~ 1 (inputs are exact in the dtype; the error is output rounding + weight rounding: measured max
    1e-3 fp16 (= SDPA's), 1.9e-2 bf16 at |out| ~ 2-3 (SDPA 7.5e-3, ratio <= 2.75 before the 1-ulp floor)).
"""

from __future__ import annotations

import math
import sys

import fastvit_kernels
import pytest
import torch
from fastvit_kernels import attention, attention_ref, backend, use_triton
from hypothesis import given, settings
from hypothesis import strategies as st

# the op module (not `import fastvit_kernels.attention`: that would bind the module over the package's function)
attn_mod = sys.modules["fastvit_kernels.attention"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}
TOL_KW = {dtype: {"atol": atol, "rtol": rtol} for dtype, (atol, rtol) in TOL.items()}
ULP = {torch.float32: 1e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # floor of the relative-to-torch bound

requires_kernel = pytest.mark.skipif(
    not use_triton(torch.empty(1, device=DEVICE)), reason="Triton kernel unavailable (no GPU, interpreter off)"
)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def fused_qkv(B: int, S: int, H: int, D: int, dtype: torch.dtype, device: str = DEVICE):
    """q, k, v [B, H, S, D] as non-contiguous views of one fused projection output [B, S, 3*H*D]."""
    qkv = torch.randn(B, S, 3 * H * D, device=device).to(dtype)
    return qkv.view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)


def padding_mask(B: int, S: int, kind: str, device: str = DEVICE) -> torch.Tensor:
    """[B, S], 1 = keep: row 0 full, row 1 a right-padded prefix, row 2 a random pattern (rows of different lengths)."""
    keep = torch.ones(B, S, dtype=torch.bool, device=device)
    if B > 1:
        keep[1, math.ceil(S / 2) :] = False
    if B > 2:
        keep[2] = torch.rand(S, device=device) < 0.4
        keep[2, S // 3] = True
    return {"bool": keep, "int": keep.to(torch.int64), "float": keep.float(), "uint8": keep.to(torch.uint8)}[kind]


def eager_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """HF eager formula in fp32: additive finfo.min mask, so a fully padded row averages V."""
    q, k, v = q.float(), k.float(), v.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale  # [B, H, Sq, S]
    if key_padding_mask is not None:
        bias = torch.zeros(key_padding_mask.shape, device=q.device)
        bias = bias.masked_fill(key_padding_mask == 0, torch.finfo(torch.float32).min)
        scores = scores + bias[:, None, None, :]
    return scores.softmax(dim=-1) @ v


def check(out, q, k, v, key_padding_mask=None, scale=None) -> float:
    """Assert ``out`` matches the fp32 eager formula within TOL and within 2x torch's own error + 1 ulp."""
    assert out.dtype == q.dtype and out.shape == q.shape and out.is_contiguous()
    assert torch.isfinite(out).all(), "non-finite output"
    expected = eager_attention(q, k, v, key_padding_mask, scale)
    with backend("torch"):
        torch_out = attention(q, k, v, key_padding_mask=key_padding_mask, scale=scale)
    err = (out.float() - expected).abs().max().item()
    torch_err = (torch_out.float() - expected).abs().max().item()
    bound = 2 * torch_err + ULP[q.dtype] * max(1.0, expected.abs().max().item())
    assert err <= bound, f"max error {err:.3g} > 2 x torch's {torch_err:.3g} + 1 ulp (bound {bound:.3g})"
    atol, rtol = TOL[q.dtype]
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{m} (max err {err:.3g})")
    return err


# --------------------------------------------------------------------------------------------------------------
# interpreter / kernel tests
# --------------------------------------------------------------------------------------------------------------
@requires_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 64, 80])  # 80: head-dim block padded to 128
@pytest.mark.parametrize("S", [1, 7, 64])  # single token, tail-only block, exactly one full block
@pytest.mark.parametrize("mask", [None, "bool"])
def test_matches_eager(S, D, dtype, mask):
    q, k, v = fused_qkv(3, S, 2, D, dtype)
    kpm = None if mask is None else padding_mask(3, S, mask)
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


@requires_kernel
@pytest.mark.parametrize(
    "D, dtype, mask",
    [
        (32, torch.float32, None),
        (64, torch.bfloat16, "bool"),
        (80, torch.float16, "int"),
        (64, torch.float16, "float"),
    ],
    ids=str,
)
def test_matches_eager_s197(D, dtype, mask):
    # 197 = 3 full 64-key blocks + a 5-key tail (ViT/DINOv2 at 224 px, patch 16)
    q, k, v = fused_qkv(3, 197, 1, D, dtype)
    kpm = None if mask is None else padding_mask(3, 197, mask)
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


@requires_kernel
@pytest.mark.parametrize("kind", ["int", "float", "uint8"])
def test_numeric_masks(kind):
    q, k, v = fused_qkv(3, 23, 2, 64, torch.float16)
    kpm = padding_mask(3, 23, kind)
    out = attention(q, k, v, key_padding_mask=kpm)
    check(out, q, k, v, kpm)
    torch.testing.assert_close(out, attention(q, k, v, key_padding_mask=kpm.bool()), atol=0, rtol=0)


@requires_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_masked_row_is_mean_of_v(dtype):
    # batch row 1 has every key padded: uniform weights (HF eager additive-mask semantics), never NaN
    q, k, v = fused_qkv(2, 40, 2, 32, dtype)
    kpm = torch.ones(2, 40, dtype=torch.bool, device=DEVICE)
    kpm[1] = False
    out = attention(q, k, v, key_padding_mask=kpm)
    check(out, q, k, v, kpm)
    mean_v = v[1].float().mean(dim=-2, keepdim=True).expand(2, 40, 32)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out[1].float(), mean_v, atol=atol, rtol=rtol)
    with backend("torch"):
        ref = attention(q, k, v, key_padding_mask=kpm)
    torch.testing.assert_close(ref[1].float(), mean_v, atol=atol, rtol=rtol)


@requires_kernel
def test_padded_first_block():
    # the first 64-key block is entirely padded: the running max must recover once real keys arrive
    q, k, v = fused_qkv(2, 150, 2, 64, torch.float16)
    kpm = torch.ones(2, 150, dtype=torch.bool, device=DEVICE)
    kpm[:, :100] = False
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


@requires_kernel
@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_scale(scale):
    q, k, v = fused_qkv(2, 33, 2, 32, torch.float32)
    out = attention(q, k, v, scale=scale)
    check(out, q, k, v, scale=scale)
    assert (out - attention(q, k, v)).abs().max() > 1e-3  # the scale is used


@requires_kernel
def test_contiguous_and_non_unit_d_stride():
    q, k, v = (torch.randn(2, 2, 19, 64, device=DEVICE, dtype=torch.float16) for _ in range(3))
    check(attention(q, k, v), q, k, v)
    qt = torch.randn(2, 2, 64, 19, device=DEVICE, dtype=torch.float16).transpose(-1, -2)  # D stride 19: copied
    assert qt.stride(-1) != 1
    check(attention(qt, k, v), qt, k, v)


@requires_kernel
def test_out_layout_bshd():
    q, k, v = fused_qkv(2, 21, 3, 32, torch.float16)
    kpm = padding_mask(2, 21, "bool")
    out = attention(q, k, v, key_padding_mask=kpm, out_layout="bshd")
    assert out.shape == (2, 21, 3, 32) and out.is_contiguous()
    check(out.transpose(1, 2).contiguous(), q, k, v, kpm)
    ref = attention_ref(q, k, v, key_padding_mask=kpm, out_layout="bshd")
    assert ref.shape == (2, 21, 3, 32) and ref.is_contiguous()


@requires_kernel
def test_cross_attention_lengths():
    # Sq != S is allowed (k/v and the mask carry S)
    q = torch.randn(2, 2, 9, 32, device=DEVICE, dtype=torch.float16)
    k, v = (torch.randn(2, 2, 70, 32, device=DEVICE, dtype=torch.float16) for _ in range(2))
    kpm = padding_mask(2, 70, "bool")
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


@requires_kernel
@pytest.mark.skipif(not attn_mod.INTERPRET, reason="interpreter block config")
def test_small_uneven_blocks(monkeypatch):
    # BLOCK_M != BLOCK_N and several full key blocks + a tail, with padding
    monkeypatch.setattr(attn_mod, "INTERPRET_CONFIG", {"BLOCK_M": 32, "BLOCK_N": 16})
    q, k, v = fused_qkv(3, 70, 1, 80, torch.bfloat16)
    kpm = padding_mask(3, 70, "bool")
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


@requires_kernel
def test_dispatch_uses_kernel_and_backend_torch(monkeypatch):
    q, k, v = fused_qkv(1, 8, 1, 32, torch.float16)
    kernel_out = attention(q, k, v)

    def boom(*args, **kwargs):
        raise AssertionError("reference called")

    monkeypatch.setattr(attn_mod, "attention_ref", boom)
    torch.testing.assert_close(attention(q, k, v), kernel_out, atol=0, rtol=0)  # kernel path: no reference call
    with backend("torch"), pytest.raises(AssertionError, match="reference called"):
        attention(q, k, v)


def test_backend_torch_is_reference():
    q, k, v = fused_qkv(2, 13, 2, 32, torch.float32)
    kpm = padding_mask(2, 13, "int")
    with backend("torch"):
        out = fastvit_kernels.attention(q, k, v, key_padding_mask=kpm)
    torch.testing.assert_close(out, attention_ref(q, k, v, key_padding_mask=kpm), atol=0, rtol=0)
    check(out, q, k, v, kpm)


def test_requires_grad_uses_reference():
    q, k, v = (t.detach().clone().requires_grad_() for t in fused_qkv(2, 11, 2, 32, torch.float32))
    kpm = torch.ones(2, 11, dtype=torch.bool, device=DEVICE)
    kpm[1] = False  # fully masked row: gradients must stay finite
    out = attention(q, k, v, key_padding_mask=kpm)
    assert out.grad_fn is not None
    check(out.detach(), q.detach(), k.detach(), v.detach(), kpm)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("D", [16, 48])
def test_unsupported_head_dim_falls_back(D):
    q, k, v = fused_qkv(2, 10, 2, D, torch.float32)
    out = attention(q, k, v)
    torch.testing.assert_close(out, attention_ref(q, k, v), atol=0, rtol=0)
    check(out, q, k, v)


def test_empty_batch():
    q = torch.randn(0, 2, 5, 32, device=DEVICE, dtype=torch.float16)
    out = attention(q, q, q)
    assert out.shape == (0, 2, 5, 32)


@pytest.mark.parametrize(
    "q_shape, k_shape, mask_shape, match",
    [
        ((2, 5, 32), (2, 5, 32), None, "4-D"),
        ((1, 2, 5, 32), (1, 2, 6, 32), None, "same shape"),  # v differs from k below
        ((1, 2, 5, 32), (1, 3, 5, 32), None, "agree on B, H and D"),
        ((1, 2, 5, 32), (1, 2, 5, 64), None, "agree on B, H and D"),
        ((1, 2, 5, 32), (1, 2, 5, 32), (1, 4), r"key_padding_mask must be \[B, S\]"),
    ],
)
def test_bad_inputs(q_shape, k_shape, mask_shape, match):
    q = torch.randn(q_shape, device=DEVICE)
    k = torch.randn(k_shape, device=DEVICE)
    v = torch.randn(1, 2, 5, 32, device=DEVICE) if match == "same shape" else k
    kpm = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool, device=DEVICE)
    for fn in (attention, attention_ref):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, key_padding_mask=kpm)


def test_bad_dtype_and_layout():
    q = torch.randn(1, 2, 5, 32, device=DEVICE)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, q.half(), q)
    with pytest.raises(ValueError, match="out_layout"):
        attention(q, q, q, out_layout="sbhd")


@requires_kernel
@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    S=st.integers(1, 80),
    D=st.sampled_from([32, 64, 80, 96, 128]),
    dtype=st.sampled_from(DTYPES),
    lengths=st.none() | st.lists(st.integers(0, 80), min_size=2, max_size=2),
)
def test_fuzz(B, H, S, D, dtype, lengths):
    q, k, v = fused_qkv(B, S, H, D, dtype)
    kpm = None
    if lengths is not None:  # right padding; length 0 = fully masked row
        kpm = torch.arange(S, device=DEVICE)[None, :] < torch.tensor(lengths[:B], device=DEVICE)[:, None]
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)


# --------------------------------------------------------------------------------------------------------------
# full-size GPU tests
# --------------------------------------------------------------------------------------------------------------
# (S, D): ViT/DINOv2 at 224 px (197 / 257 tokens), ViT-L/14 at 336 px (577), DINOv2 at 518 px (1370); D = 64 for
# ViT-S/B/L, CLIP; 80/96 padded head-dim blocks; 128 for ViT-g-like heads
GPU_CASES = [(197, 64), (257, 64), (577, 64), (1370, 64), (197, 32), (257, 80), (577, 96), (1370, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("S, D", GPU_CASES)
@pytest.mark.parametrize("mask", [None, "bool"])
def test_gpu_real_sizes(S, D, dtype, mask):
    B, H = 4, 12
    q, k, v = fused_qkv(B, S, H, D, dtype, device="cuda")
    kpm = None if mask is None else padding_mask(B, S, mask, device="cuda")
    check(attention(q, k, v, key_padding_mask=kpm), q, k, v, kpm)
    out = attention(q, k, v, key_padding_mask=kpm, out_layout="bshd")
    check(out.transpose(1, 2).contiguous(), q, k, v, kpm)


@pytest.mark.gpu
def test_gpu_fp32_and_fully_masked():
    # fp32 on CUDA takes SDPA; a fully padded row (index 3) averages V in fp16 on the kernel path
    q, k, v = fused_qkv(4, 257, 12, 64, torch.float32, device="cuda")
    check(attention(q, k, v), q, k, v)
    q, k, v = (t.half() for t in (q, k, v))
    kpm = padding_mask(4, 257, "int", device="cuda")
    kpm[3] = 0
    out = attention(q, k, v, key_padding_mask=kpm)
    check(out, q, k, v, kpm)
    torch.testing.assert_close(
        out[3].float(), v[3].float().mean(-2, keepdim=True).expand_as(out[3]), **TOL_KW[torch.float16]
    )


@pytest.mark.gpu
def test_gpu_int64_offsets():
    # fused QKV of > 2**31 elements: batch offsets overflow int32; check the last batch rows
    B, S, H, D = 2200, 257, 16, 128  # 2200 * 257 * 3 * 16 * 128 = 3.5e9 elements (6.9 GB in fp16)
    q, k, v = fused_qkv(B, S, H, D, torch.float16, device="cuda")
    out = attention(q, k, v)
    check(out[-2:], q[-2:], k[-2:], v[-2:])


def test_autotune_configs_pruned_for_the_tails():
    """S = 257 keeps BLOCK_M = 64 only (128 would compute 384 query rows for 257); S = 1370 keeps both (1408 rows
    each); never more than four configs; the key tail block fits in a full one."""
    prune, configs = attn_mod._prune_configs, attn_mod._GPU_CONFIGS
    assert len(configs) <= 4
    assert all(c.kwargs["TAIL_N"] <= c.kwargs["BLOCK_N"] for c in configs)
    assert {c.kwargs["BLOCK_M"] for c in prune(configs, {"N_Q": 257, "N_K": 257}, BLOCK_D=64)} == {64}
    assert {c.kwargs["BLOCK_M"] for c in prune(configs, {"N_Q": 1370, "N_K": 1370}, BLOCK_D=64)} == {64, 128}
    short = prune(configs, {"N_Q": 50, "N_K": 50}, BLOCK_D=128)
    assert short and all(c.kwargs["BLOCK_N"] == 64 for c in short)
