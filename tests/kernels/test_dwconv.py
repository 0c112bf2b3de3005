"""Depthwise conv (+ fused LayerNorm) kernels against F.conv2d(groups=C) (+ F.layer_norm) in float64.

On CPU the Triton kernels run under the interpreter (conftest sets TRITON_INTERPRET=1), so tensors stay tiny.
"""

from __future__ import annotations

import fastvit_kernels as fk
import pytest
import torch
import torch.nn.functional as F
from fastvit_kernels import dwconv as dw
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testing import f64

# (dtype, atol, rtol) against a float64 reference computed from the same (already rounded) inputs.
#  fp32: the kernel sums <= 49 fp32 products in another order than the reference: ~k*k * 2^-24 * sum|terms|,
#        below 1e-5 for the O(1) data used here.
#  fp16/bf16: fp32 accumulation and one rounding on store, half an ulp (2^-11 / 2^-8 relative) on a GPU; the
#        Triton interpreter truncates on the fp32 -> bf16 cast (up to one ulp), so rtol is one ulp (2^-10 / 2^-7).
#        atol covers outputs near 0, where the fp32 accumulation error (~1e-6) dominates the rounding.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-5, 2**-10), (torch.bfloat16, 1e-5, 2**-7)]
EPS = 1e-6

CASES = [  # (N, C, H, W, k)
    (1, 1, 1, 1, 3),  # 1x1 map, one channel
    (2, 3, 3, 3, 7),  # 3x3 map under a 7x7 kernel: every tap of the border masks
    (2, 13, 5, 7, 5),  # 5x7 map, odd C, k = 5
    (1, 96, 3, 3, 7),  # ConvNeXt-tiny stage-1 channels: three channel blocks of 32
    (1, 5, 9, 4, 3),  # k = 3: one-row tiles, nine of them
    (1, 128, 3, 19, 7),  # W = 19 over 16-wide tiles: two column tiles, two row tiles
]
FORMATS = [torch.contiguous_format, torch.channels_last]
FORMAT_IDS = ["nchw", "channels_last"]

needs_triton = pytest.mark.skipif(not fk.use_triton(torch.empty(1)), reason="Triton cannot run on CPU tensors here")


def make_inputs(N, C, H, W, k, dtype=torch.float32, memory_format=torch.contiguous_format, device="cpu"):
    """x, weight, bias, ln_weight, ln_bias; weight scaled by 1/k so that outputs are O(1)."""
    x = torch.randn(N, C, H, W, device=device).to(dtype).contiguous(memory_format=memory_format)
    weight = (torch.randn(C, 1, k, k, device=device) / k).to(dtype)
    bias, ln_weight, ln_bias = (torch.randn(C, device=device).to(dtype) for _ in range(3))
    return x, weight, bias, ln_weight, ln_bias


def conv64(x, weight, bias):
    k = weight.shape[-1]
    return F.conv2d(*f64(x, weight, bias), padding=k // 2, groups=x.shape[1])


def conv_ln64(x, weight, bias, ln_weight, ln_bias):
    y = conv64(x, weight, bias).permute(0, 2, 3, 1)
    return F.layer_norm(y, (x.shape[1],), *f64(ln_weight, ln_bias), EPS)


def assert_close(actual, expected, atol, rtol, what=""):
    err = (actual.double() - expected).abs().max().item() if actual.numel() else 0.0
    torch.testing.assert_close(
        actual.double(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: max abs error {err:.3g}\n{m}"
    )
    return err


def check_format(y, x):
    if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:  # otherwise both formats describe the same strides
        assert y.is_contiguous(memory_format=dw._out_format(x)), (y.shape, y.stride(), x.stride())


@pytest.mark.parametrize("C", [40, 80, 96, 128, 160, 192, 320, 352, 384, 768, 1024, 1536, 2816, 7])
@pytest.mark.parametrize("W", [56, 28, 14, 7, 3])
def test_ln_blocks_are_powers_of_two_covering_c(C, W):
    block_w, block_c, block_c2, num_warps = dw._ln_blocks(C, W)
    for b in (block_w, block_c, block_c2 or 1, num_warps):
        assert b & (b - 1) == 0, (block_w, block_c, block_c2, num_warps)
    assert block_c <= C <= block_c + block_c2 or (block_c2 == 0 and block_c == C)


# (C, W) of ConvNeXt / ConvNeXt V2 stages: 3 * 2^k, 5 * 2^k and 2^k channels at 56 / 28 / 14 / 7
STAGES_CW = [(96, 56), (192, 28), (384, 14), (768, 7), (128, 56), (256, 28), (512, 14), (1024, 7),
             (160, 56), (320, 28), (640, 14), (1280, 7), (192, 56), (384, 28), (768, 14), (1536, 7)]  # fmt: skip


@pytest.mark.parametrize("C, W", STAGES_CW, ids=str)
def test_ln_blocks_mask_no_lane_at_stage_shapes(C, W):
    """No masked channel (96 = 64 + 32 instead of 128) and no masked column (56 = 7 tiles of 8) at the real
    shapes, with at least 8 channels per thread in each block (16-byte accesses)."""
    block_w, block_c, block_c2, num_warps = dw._ln_blocks(C, W)
    # W = 7 below 1024 channels: two pixels per program (one masked column in 8) rather than a spill on Triton 3.6
    assert block_c + block_c2 == C and (W % block_w == 0 or (W, block_w) == (7, 2)), (block_w, block_c, block_c2)
    assert block_w * (block_c2 or block_c) >= 8 * 32 * num_warps


# ---------------------------------------------------------------------------------------------------------------
# shapes, formats, dtypes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_dwconv2d(case, memory_format):
    x, w, b, _, _ = make_inputs(*case, memory_format=memory_format)
    y = fk.dwconv2d(x, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    check_format(y, x)
    assert_close(y, conv64(x, w, b), 1e-5, 1e-5, f"dwconv2d {case}")


@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_dwconv2d_layer_norm(case, memory_format):
    x, w, b, lw, lb = make_inputs(*case, memory_format=memory_format)
    y = fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS)
    N, C, H, W, _ = case
    assert y.shape == (N, H, W, C) and y.is_contiguous() and y.dtype == x.dtype
    assert_close(y, conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, f"dwconv2d_layer_norm {case}")


@pytest.mark.parametrize("fused", [False, True], ids=["dwconv2d", "dwconv2d_layer_norm"])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=[str(d[0]) for d in DTYPES])
def test_dtypes(dtype, atol, rtol, fused):
    """Within the per-dtype tolerance of float64, and at most 2x torch's own error in that dtype (plus half an ulp
    at the largest output: the interpreter truncates where torch rounds)."""
    x, w, b, lw, lb = make_inputs(1, 13, 4, 7, 7, dtype, torch.channels_last)
    if fused:
        ours, ref = fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS), conv_ln64(x, w, b, lw, lb)
        theirs = F.layer_norm(F.conv2d(x, w, b, padding=3, groups=13).permute(0, 2, 3, 1), (13,), lw, lb, EPS)
    else:
        ours, ref = fk.dwconv2d(x, w, b), conv64(x, w, b)
        theirs = F.conv2d(x, w, b, padding=3, groups=13)
    assert ours.dtype == dtype
    err = assert_close(ours, ref, atol, rtol, f"{dtype}")
    torch_err = (theirs.double() - ref).abs().max().item()
    floor = atol + rtol / 2 * ref.abs().max().item()
    assert err <= 2 * torch_err + floor, f"{dtype}: ours {err:.3g} vs torch {torch_err:.3g} (floor {floor:.3g})"


# ---------------------------------------------------------------------------------------------------------------
# optional arguments, layouts, empty tensors, int64 indexing
# ---------------------------------------------------------------------------------------------------------------


def test_optional_params_none():
    x, w, _, _, _ = make_inputs(1, 7, 4, 5, 3, memory_format=torch.channels_last)
    assert_close(fk.dwconv2d(x, w, None), conv64(x, w, None), 1e-5, 1e-5, "bias=None")
    assert_close(fk.dwconv2d(x, w), conv64(x, w, None), 1e-5, 1e-5, "bias omitted")
    y = fk.dwconv2d_layer_norm(x, w, None, None, None, EPS)
    assert_close(y, conv_ln64(x, w, None, None, None), 1e-5, 1e-5, "all None")


def test_mixed_param_dtypes():
    """bf16 activations with fp32 parameters (autocast-style): parameters are read in fp32, output is bf16."""
    x, w, b, lw, lb = make_inputs(1, 6, 4, 4, 3)
    xb = x.bfloat16()
    y = fk.dwconv2d_layer_norm(xb, w, b, lw, lb, EPS)
    assert y.dtype == torch.bfloat16
    assert_close(y, conv_ln64(xb, w, b, lw, lb), 1e-5, 2**-7, "bf16 x, fp32 params")


@pytest.mark.parametrize(
    "layout", ["channel_slice", "spatial_slice", "permuted_nhwc_view", "weight_transposed", "weight_packed"]
)
def test_non_contiguous(layout):
    base = torch.randn(1, 10, 4, 7)
    w = torch.randn(5, 1, 5, 5) / 5
    if layout == "channel_slice":  # every other channel of an NCHW tensor
        x = base[:, ::2]
    elif layout == "spatial_slice":  # a crop of a channels_last tensor
        x = base.contiguous(memory_format=torch.channels_last)[:, :5, 1:, 2:]
    elif layout == "permuted_nhwc_view":  # [N, H, W, C] storage seen as [N, C, H, W]
        x = torch.randn(1, 4, 6, 5).permute(0, 3, 1, 2)
    elif layout == "weight_transposed":  # a non-contiguous weight
        x, w = base[:, :5], w.transpose(2, 3)
    else:  # a tap-major weight from pack_weight (read in place by the kernels)
        x, w = base[:, :5], dw.pack_weight(w)
        assert w.stride(0) == 1
    assert not x.is_contiguous() or not w.is_contiguous()
    b, lw, lb = torch.randn(5), torch.randn(5), torch.randn(5)
    y = fk.dwconv2d(x, w, b)
    check_format(y, x)
    assert_close(y, conv64(x, w, b), 1e-5, 1e-5, layout)
    assert_close(fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS), conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, layout)


@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
def test_empty_batch(memory_format):
    x, w, b, lw, lb = make_inputs(0, 4, 5, 5, 3, memory_format=memory_format)
    y = fk.dwconv2d(x, w, b)
    assert y.shape == (0, 4, 5, 5)
    assert fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS).shape == (0, 5, 5, 4)


@needs_triton
def test_int64_indexing(monkeypatch):
    """The int64 index path (taken for tensors of >= 2^31 elements) computes the same thing."""
    monkeypatch.setattr(dw, "_INT64_THRESHOLD", 0)
    x, w, b, lw, lb = make_inputs(1, 9, 4, 5, 5, memory_format=torch.channels_last)
    assert_close(fk.dwconv2d(x, w, b), conv64(x, w, b), 1e-5, 1e-5, "int64 dwconv2d")
    assert_close(fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS), conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, "int64 LN")


@needs_triton
def test_int64_indexing_for_strided_views(monkeypatch):
    """The int64 decision looks at the offsets a view addresses, not its element count: a channel slice of a larger
    channels_last buffer has few elements but strides of the whole buffer."""
    x, w, b, lw, lb = make_inputs(2, 12, 4, 5, 5, memory_format=torch.channels_last)
    xv = x[:, :3]  # 120 elements addressing offsets up to 470
    span = 1 + sum((d - 1) * s for d, s in zip(xv.shape, xv.stride(), strict=True))
    assert xv.numel() < span
    monkeypatch.setattr(dw, "_INT64_THRESHOLD", span)
    assert dw._use_int64(xv) and not dw._use_int64(x[:1, :3, :1])
    wv, bv, lwv, lbv = w[:3], b[:3], lw[:3], lb[:3]
    assert_close(fk.dwconv2d(xv, wv, bv), conv64(xv, wv, bv), 1e-5, 1e-5, "int64 view dwconv2d")
    got = fk.dwconv2d_layer_norm(xv, wv, bv, lwv, lbv, EPS)
    assert_close(got, conv_ln64(xv, wv, bv, lwv, lbv), 1e-5, 1e-5, "int64 view LN")


# ---------------------------------------------------------------------------------------------------------------
# dispatch: which path runs
# ---------------------------------------------------------------------------------------------------------------


def _forbid_triton(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the Triton op ran where the reference should have")

    monkeypatch.setattr(dw, "_dwconv2d_op", boom)
    monkeypatch.setattr(dw, "_dwconv2d_layer_norm_op", boom)


@needs_triton
def test_triton_path_runs(monkeypatch):
    calls = []
    for name in ("_dwconv2d_op", "_dwconv2d_layer_norm_op"):
        op = getattr(dw, name)
        monkeypatch.setattr(dw, name, lambda *a, _op=op, _n=name: calls.append(_n) or _op(*a))
    x, w, b, lw, lb = make_inputs(1, 3, 2, 2, 3)
    fk.dwconv2d(x, w, b)
    fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS)
    assert calls == ["_dwconv2d_op", "_dwconv2d_layer_norm_op"]


def test_backend_torch_uses_reference(monkeypatch):
    _forbid_triton(monkeypatch)
    x, w, b, lw, lb = make_inputs(2, 5, 4, 6, 7, memory_format=torch.channels_last)
    with fk.backend("torch"):
        y = fk.dwconv2d(x, w, b)
        z = fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS)
    check_format(y, x)
    assert_close(y, conv64(x, w, b), 1e-5, 1e-5, "reference dwconv2d")
    assert_close(z, conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, "reference dwconv2d_layer_norm")
    assert z.shape == (2, 4, 6, 5) and z.is_contiguous()


@pytest.mark.parametrize("arg", ["x", "weight", "ln_weight"])
def test_requires_grad_uses_reference(monkeypatch, arg):
    _forbid_triton(monkeypatch)
    x, w, b, lw, lb = make_inputs(1, 4, 3, 3, 3)
    {"x": x, "weight": w, "ln_weight": lw}[arg].requires_grad_()
    y = fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS)
    y.sum().backward()
    if arg != "ln_weight":
        fk.dwconv2d(x, w, b).sum().backward()
    assert_close(y.detach(), conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, f"grad on {arg}")


@needs_triton
def test_no_grad_uses_triton_despite_requires_grad():
    x, w, b, _, _ = make_inputs(1, 4, 3, 3, 3)
    w.requires_grad_()
    with torch.no_grad():
        assert fk.use_triton(x, w, b)
        assert_close(fk.dwconv2d(x, w, b), conv64(x, w.detach(), b), 1e-5, 1e-5, "no_grad")


@pytest.mark.parametrize("what", ["float64", "k=17", "wide_ln"])
def test_unsupported_falls_back(monkeypatch, what):
    _forbid_triton(monkeypatch)
    if what == "float64":
        x, w, b, lw, lb = make_inputs(1, 3, 4, 4, 3, torch.float64)
    elif what == "k=17":
        x, w, b, lw, lb = make_inputs(1, 3, 4, 4, 17)
    else:  # more channels than the fused kernel holds in registers (limit lowered to keep the test small)
        monkeypatch.setattr(dw, "_MAX_LN_C", 4)
        x, w, b, lw, lb = make_inputs(1, 5, 3, 3, 3)
    assert_close(fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS), conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, what)
    if what != "wide_ln":
        assert_close(fk.dwconv2d(x, w, b), conv64(x, w, b), 1e-5, 1e-5, what)


# ---------------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------------

BAD = {  # name -> (x shape, weight shape, bias shape, ln_weight shape, expected message)
    "x_3d": ((4, 5, 5), (4, 1, 3, 3), None, None, "4-D"),
    "weight_channels": ((1, 4, 5, 5), (3, 1, 3, 3), None, None, r"\[C, 1, k, k\]"),
    "weight_not_depthwise": ((1, 4, 5, 5), (4, 2, 3, 3), None, None, r"\[C, 1, k, k\]"),
    "even_k": ((1, 4, 5, 5), (4, 1, 4, 4), None, None, "odd"),
    "non_square_k": ((1, 4, 5, 5), (4, 1, 3, 5), None, None, "square"),
    "bias_shape": ((1, 4, 5, 5), (4, 1, 3, 3), (5,), None, "bias must have shape"),
    "ln_weight_shape": ((1, 4, 5, 5), (4, 1, 3, 3), None, (4, 1), "ln_weight must have shape"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs(name):
    xs, ws, bs, ls, msg = BAD[name]
    x, w = torch.randn(xs), torch.randn(ws)
    b = None if bs is None else torch.randn(bs)
    lw = None if ls is None else torch.randn(ls)
    with pytest.raises(ValueError, match=msg):
        fk.dwconv2d_layer_norm(x, w, b, lw, None, EPS)
    if ls is None:
        with pytest.raises(ValueError, match=msg):
            fk.dwconv2d(x, w, b)


def test_bad_dtype_and_device():
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="floating-point"):
        fk.dwconv2d(torch.ones(1, 4, 5, 5, dtype=torch.int32), w)
    with pytest.raises(ValueError, match="bias is on meta"):
        fk.dwconv2d(torch.randn(1, 4, 5, 5), w, torch.randn(4, device="meta"))


# ---------------------------------------------------------------------------------------------------------------
# fuzz
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(
    N=st.integers(1, 2),
    C=st.integers(1, 20),
    H=st.integers(1, 6),
    W=st.integers(1, 9),
    k=st.sampled_from([3, 5, 7]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz(N, C, H, W, k, channels_last, seed):
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, w, b, lw, lb = make_inputs(N, C, H, W, k, memory_format=fmt)
    case = (N, C, H, W, k, channels_last)
    assert_close(fk.dwconv2d(x, w, b), conv64(x, w, b), 1e-5, 1e-5, f"dwconv2d {case}")
    assert_close(fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS), conv_ln64(x, w, b, lw, lb), 1e-5, 1e-5, f"LN {case}")


# ---------------------------------------------------------------------------------------------------------------
# GPU: ConvNeXt-tiny stage shapes at B=64 (skipped without CUDA)
# ---------------------------------------------------------------------------------------------------------------

STAGES = [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7)]


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("shape", STAGES, ids=lambda s: f"{s[1]}x{s[2]}")
def test_gpu_convnext_tiny_stages(shape, memory_format):
    _, atol, rtol = DTYPES[2]
    x, w, b, lw, lb = make_inputs(*shape, 7, torch.bfloat16, memory_format, device="cuda")
    y = fk.dwconv2d(x, w, b)
    check_format(y, x)
    err = assert_close(y, conv64(x, w, b), atol, rtol, f"dwconv2d {shape}")
    torch_err = (F.conv2d(x, w, b, padding=3, groups=shape[1]).double() - conv64(x, w, b)).abs().max().item()
    assert err <= 2 * torch_err + atol, (err, torch_err)
    z = fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS)
    assert z.shape == (shape[0], shape[2], shape[3], shape[1]) and z.is_contiguous()
    assert_close(z, conv_ln64(x, w, b, lw, lb), atol, rtol, f"dwconv2d_layer_norm {shape}")


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    """The ops are torch.library triton_ops: torch.compile(fullgraph=True) traces through them."""
    x, w, b, lw, lb = make_inputs(2, 96, 14, 14, 7, torch.bfloat16, torch.channels_last, device="cuda")

    def block_start(x):
        return fk.dwconv2d_layer_norm(x, w, b, lw, lb, EPS) + fk.dwconv2d(x, w, b).permute(0, 2, 3, 1)

    torch.testing.assert_close(torch.compile(block_start, fullgraph=True)(x), block_start(x))
