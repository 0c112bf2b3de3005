"""fastvit_kernels.fused_linear (GEMM + epilogue/prologue) against an fp64 truth, under the Triton interpreter on CPU;
the implementation chooser with an injected timer; an sm_90 compile check (wgmma, no spills)."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import textwrap

import fastvit_kernels as K
import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPE_TOLS, check_vs_fp64, max_err, strided

fl = importlib.import_module("fastvit_kernels.fused_linear")
TOLS = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}

# tiny tiles: several tiles in M and N, a K tail (K % 16 != 0), tiles that straddle images
TEST_CONFIG = fl.GemmConfig(16, 16, 16, group_m=2, num_warps=1, num_stages=1)


@pytest.fixture(autouse=True)
def _tiny_tiles(monkeypatch):
    monkeypatch.setattr(fl, "INTERPRET_CONFIG", TEST_CONFIG)


def _inputs(lead, K, N, dtype, *, bias=True, scale=False, residual=False, prologue=False, images=1):
    """x [*lead, K] ~ N(0, 1), W ~ N(0, 1/K) so outputs are O(1); prologue scale ~ U(0.5, 1.5) per image."""
    x = torch.randn(*lead, K).to(dtype)
    w = (torch.randn(N, K) / K**0.5).to(dtype)
    kw = dict(bias=(0.5 * torch.randn(N)).to(dtype) if bias else None)
    if scale:
        kw["scale"] = (1 + 0.5 * torch.randn(N)).to(dtype)
    if residual:
        kw["residual"] = torch.randn(*lead, N).to(dtype)
    if prologue:
        kw["prologue"] = (torch.rand(images, K) + 0.5, (0.3 * torch.randn(K)).to(dtype))
    return x, w, kw


def _truth(x, w, kw, activation, sumsq_images=None):
    """fp64 result of the same (rounded) inputs; the prologue's A' is rounded to x.dtype as the kernel feeds it
    to the tensor cores."""
    d = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "prologue"}
    x64 = x.double()
    if "prologue" in kw:
        s, b = kw["prologue"]
        x3 = x64.reshape(s.shape[0], -1, x.shape[-1])
        x64 = (x3 * s.double()[:, None] + b.double()).to(x.dtype).double().view(x.shape)
    return fl.fused_linear_ref(x64, w.double(), activation=activation, sumsq_images=sumsq_images, **d)


# one ulp relative to a value (the interpreter rounds to bf16 toward zero, GPUs to nearest: half of this)
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _prologue_allowance(x, w, kw) -> float:
    """Worst case of the prologue's rounding of A' to x.dtype (one ulp per element) carried through the product:
    ``ulp * max(|A'| @ |W|^T)`` times |scale| and the activations' slope (< 1.25)."""
    if "prologue" not in kw:
        return 0.0
    s, b = kw["prologue"]
    a = (x.double().reshape(s.shape[0], -1, x.shape[-1]) * s.double()[:, None] + b.double()).abs()
    bound = ULP[x.dtype] * 1.25 * (a @ w.double().abs().T)
    if kw.get("scale") is not None:
        bound = bound * kw["scale"].double().abs()
    return bound.max().item()


def _check(x, w, kw, activation, name, sumsq_images=None):
    dtype = x.dtype
    atol, rtol = TOLS[dtype]
    atol += _prologue_allowance(x, w, kw)
    ours = K.fused_linear(x, w, activation=activation, sumsq_images=sumsq_images, **kw)
    truth = _truth(x, w, kw, activation, sumsq_images)
    lowp = fl.fused_linear_ref(x, w, activation=activation, sumsq_images=sumsq_images, **kw)  # torch in dtype
    if sumsq_images is None:
        check_vs_fp64(ours, truth, lowp, dtype, atol, rtol, name)
        return ours
    (y, sums), (y64, sums64) = ours, truth
    check_vs_fp64(y, y64, lowp[0], dtype, atol, rtol, name)
    assert sums.dtype == torch.float32 and sums.shape == (sumsq_images, w.shape[0])
    # the sums square y as stored: exact up to fp32 summation
    exact = y.double().square().reshape(sumsq_images, -1, w.shape[0]).sum(1)
    torch.testing.assert_close(sums.double(), exact, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} sumsq\n{m}")
    # and within two output roundings of the fp64 truth's sums
    torch.testing.assert_close(sums.double(), sums64, rtol=4 * rtol, atol=atol, msg=lambda m: f"{name} vs fp64\n{m}")
    return y, sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", fl.ACTIVATIONS)
def test_activations_with_full_epilogue(activation, dtype):
    # odd M (37, not a multiple of 8), N, K (K % 16 != 0)
    x, w, kw = _inputs((37,), 70, 45, dtype, scale=True, residual=True)
    _check(x, w, kw, activation, f"{activation} +bias+scale+res")


FLAGS = list(itertools.product([False, True], repeat=5))  # bias, scale, residual, prologue, sumsq


@pytest.mark.parametrize("bias,scale,residual,prologue,sumsq", FLAGS, ids=lambda v: "1" if v else "0")
def test_every_epilogue_prologue_combination(bias, scale, residual, prologue, sumsq):
    # 3 images of 11 rows: tiles of 16 rows straddle images; K = 40 leaves a K tail
    x, w, kw = _inputs((3, 11), 40, 33, torch.bfloat16, bias=bias, scale=scale, residual=residual,
                       prologue=prologue, images=3)  # fmt: skip
    _check(x, w, kw, "gelu", f"flags{(bias, scale, residual, prologue, sumsq)}", 3 if sumsq else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "lead,images",
    [
        # one image, rows over several tiles
        ((1, 45), 1),
        # many small images: 5 of 9 rows (a 16-row tile touches up to 3)
        ((5, 9), 5),
        # one row per image: a tile touches 16 images
        ((20, 1), 20),
        # images larger than a tile, not a multiple of it
        ((2, 37), 2),
    ],
    ids=["1img", "5x9", "20x1", "2x37"],
)
def test_grn_sums_and_prologue(lead, images, dtype):
    x, w, kw = _inputs(lead, 24, 40, dtype, prologue=True, images=images)
    _check(x, w, kw, "gelu", f"grn{lead}", images)


def test_grn_chain_matches_hf_grn():
    """pwconv1 (+GELU, sums) -> grn_prologue -> pwconv2 (prologue) == Linear -> GELU -> HF GRN -> Linear."""
    torch.manual_seed(1)
    N, H, W, C = 2, 3, 5, 8
    x = torch.randn(N, H, W, C)
    w1, b1 = torch.randn(4 * C, C) / C**0.5, torch.randn(4 * C)
    w2, b2 = torch.randn(C, 4 * C) / (2 * C**0.5), torch.randn(C)
    gamma, beta = torch.randn(4 * C), torch.randn(4 * C)
    h, sums = K.fused_linear(x, w1, b1, activation="gelu", sumsq_images=N)
    y = K.fused_linear(h, w2, b2, prologue=K.grn_prologue(sums, gamma, beta, 1e-6))
    h2, a_scale = K.fused_linear(x, w1, b1, activation="gelu", sumsq_images=N, grn=(gamma, 1e-6))
    torch.testing.assert_close(K.fused_linear(h2, w2, b2, prologue=(a_scale, beta)), y)
    h_ref = F.gelu(F.linear(x.double(), w1.double(), b1.double()))
    g_ref = K.grn_ref(h_ref, gamma.double(), beta.double(), 1e-6)
    y_ref = F.linear(g_ref, w2.double(), b2.double())
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lead,images", [((1, 45), 1), ((5, 9), 5), ((20, 1), 20)], ids=["1img", "5x9", "20x1"])
def test_grn_scale_from_the_reduction(lead, images):
    """``grn=(gamma, eps)``: the reduction launch returns gamma * nx + 1, grn_prologue's formula on the sums."""
    x, w, kw = _inputs(lead, 24, 40, torch.float32)
    gamma = torch.randn(1, 1, 1, 40)  # HF's GRN weight shape
    y, sums = K.fused_linear(x, w, activation="gelu", sumsq_images=images, **kw)
    y2, a_scale = K.fused_linear(x, w, activation="gelu", sumsq_images=images, grn=(gamma, 1e-6), **kw)
    assert torch.equal(y, y2)
    expected, shift = K.grn_prologue(sums, gamma, torch.zeros(1, 1, 1, 40), 1e-6)
    torch.testing.assert_close(a_scale, expected, atol=1e-6, rtol=1e-5)
    assert shift.shape == (40,)
    ref_y, ref_scale = fl.fused_linear_ref(x, w, activation="gelu", sumsq_images=images, grn=(gamma, 1e-6), **kw)
    torch.testing.assert_close(a_scale, ref_scale, atol=1e-5, rtol=1e-4)


def test_persistent_grid(monkeypatch):
    # 4 programs (the interpreter's "SM count") walk 3 x 3 tiles
    monkeypatch.setattr(fl, "INTERPRET_CONFIG", fl.GemmConfig(16, 16, 16, group_m=2, persistent=True))
    x, w, kw = _inputs((37,), 40, 45, torch.float32, scale=True, residual=True)
    _check(x, w, kw, "quick_gelu", "persistent")


@pytest.mark.parametrize("persistent", [False, True], ids=["grid", "persistent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tensor_descriptor_loads(monkeypatch, dtype, persistent):
    """The TMA variant (x and W through tensor descriptors, zero fill past M, N and K) gives the same numbers."""
    if fl.TensorDescriptor is None:
        pytest.skip("this triton has no tensor descriptors")
    cfg = fl.GemmConfig(16, 16, 16, group_m=2, persistent=persistent, tma=True)
    monkeypatch.setattr(fl, "INTERPRET_CONFIG", cfg)
    # 3 images of 11 rows, K = 40 (a K tail; rows of 80 / 160 bytes: 16-byte multiples), N = 33
    x, w, kw = _inputs((3, 11), 40, 33, dtype, scale=True, residual=True, prologue=True, images=3)
    _check(x, w, kw, "gelu_tanh", f"tma{dtype}", 3)


def test_tensor_descriptors_need_aligned_rows(monkeypatch):
    monkeypatch.setattr(fl, "INTERPRET_CONFIG", fl.GemmConfig(16, 16, 16, tma=True))
    x, w, _ = _inputs((9,), 20, 8, torch.bfloat16)  # 40-byte rows
    assert not fl.tma_ok(x, w)
    with pytest.raises(ValueError, match="16-byte aligned"):
        K.fused_linear(x, w)
    assert all(not c.tma for c in fl.prune_configs(4096, 768, 768, tma=False))
    assert any(c.tma for c in fl.prune_configs(4096, 768, 768, tma=True))


def test_epilogue_plan_matches():
    """The cuBLAS + one-pass epilogue plan (what the kernel is timed against on GPUs) gives the same numbers."""
    x, w, kw = _inputs((5, 9), 24, 40, torch.float32, scale=True, residual=True, prologue=True, images=5)
    ref, ref_s = fl.fused_linear_ref(x, w, activation="silu", sumsq_images=5, **kw)
    r2 = kw["residual"].reshape(45, 40)
    y, s = fl._run_plan(fl._Plan("epilogue"), x.reshape(45, 24), w, kw["bias"], "silu", kw["scale"], r2,
                        kw["prologue"], 5, True)  # fmt: skip
    torch.testing.assert_close(y.view(5, 9, 40), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=1e-5)


def test_inputs_untouched_and_residual_aliases_nothing():
    x, w, kw = _inputs((13,), 20, 18, torch.float32, scale=True, residual=True)
    saved = {k: v.clone() for k, v in kw.items()}
    x0 = x.clone()
    y = K.fused_linear(x, w, activation="gelu", **kw)
    assert y.data_ptr() not in (x.data_ptr(), kw["residual"].data_ptr())
    assert torch.equal(x, x0) and all(torch.equal(kw[k], saved[k]) for k in kw)


@pytest.mark.parametrize(
    "make",
    [
        # row-strided x (every other row)
        lambda x: strided(x, 0),
        # column-major x: stride (1, M)
        lambda x: x.t().contiguous().t(),
        # neither stride 1: copied first
        lambda x: strided(x, 1),
    ],
    ids=["rows", "colmajor", "copied"],
)
def test_strided_x_and_residual(make):
    x, w, kw = _inputs((19,), 24, 20, torch.float32, residual=True)
    xv, rv = make(x), strided(kw["residual"], 0)
    assert not xv.is_contiguous() and torch.equal(xv, x)
    ours = K.fused_linear(xv, w, kw["bias"], residual=rv)
    check_vs_fp64(ours, _truth(x, w, kw, "none"), None, torch.float32, 1e-5, 1e-5, "strided")


def test_triton_path_runs(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(fl, "fused_linear_ref", boom)
    x, w, kw = _inputs((9,), 16, 8, torch.float32, scale=True)
    assert K.fused_linear(x, w, activation="gelu", **kw).shape == (9, 8)


def test_torch_backend_and_fp64_use_reference():
    x, w, kw = _inputs((9,), 16, 8, torch.bfloat16, residual=True)
    with K.backend("torch"):
        ref = K.fused_linear(x, w, activation="quick_gelu", **kw)
    assert torch.equal(ref, fl.fused_linear_ref(x, w, activation="quick_gelu", **kw))
    ours = K.fused_linear(x, w, activation="quick_gelu", **kw)
    assert max_err(ours, ref) <= 2 * 2**-7 * ref.float().abs().max().item()
    x64, w64 = x.double(), w.double()
    torch.testing.assert_close(K.fused_linear(x64, w64, activation="gelu"), F.gelu(F.linear(x64, w64)))


def test_reference_matches_hf_formulas():
    x = torch.randn(6, 10, dtype=torch.float64)
    w, b, g, r = torch.randn(7, 10, dtype=torch.float64), torch.randn(7), torch.randn(7), torch.randn(6, 7)
    b, g, r = b.double(), g.double(), r.double()
    z = x @ w.T + b
    acts = {
        "none": z,
        "gelu": F.gelu(z),
        "gelu_tanh": F.gelu(z, approximate="tanh"),
        "quick_gelu": z * torch.sigmoid(1.702 * z),
        "silu": F.silu(z),
    }
    for name, a in acts.items():
        torch.testing.assert_close(fl.fused_linear_ref(x, w, b, activation=name, scale=g, residual=r), r + g * a)


def test_empty_rows():
    x, w = torch.randn(0, 16), torch.randn(8, 16)
    assert K.fused_linear(x, w).shape == (0, 8)
    y, s = K.fused_linear(torch.randn(2, 0, 16), w, sumsq_images=2)
    assert y.shape == (2, 0, 8) and torch.equal(s, torch.zeros(2, 8))
    _, g = K.fused_linear(torch.randn(2, 0, 16), w, sumsq_images=2, grn=(torch.randn(8), 1e-6))
    _, g_ref = fl.fused_linear_ref(torch.randn(2, 0, 16), w, sumsq_images=2, grn=(torch.randn(8), 1e-6))
    assert torch.equal(g, torch.ones(2, 8)) and torch.equal(g_ref, g)  # nx = 0: gamma * 0 + 1


def test_requires_grad_uses_reference():
    x, w, kw = _inputs((5,), 12, 6, torch.float32, scale=True, residual=True)
    wg = w.clone().requires_grad_(True)
    out = K.fused_linear(x, wg, activation="gelu", **kw)
    assert out.grad_fn is not None
    out.square().sum().backward()
    w2 = w.clone().requires_grad_(True)
    (kw["residual"] + kw["scale"] * F.gelu(F.linear(x, w2, kw["bias"]))).square().sum().backward()
    torch.testing.assert_close(wg.grad, w2.grad)


def test_compile_fullgraph():
    x, w, kw = _inputs((7,), 16, 8, torch.float32, scale=True, residual=True)
    fn = torch.compile(lambda x: K.fused_linear(x, w, activation="gelu", **kw) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), 2 * fl.fused_linear_ref(x, w, activation="gelu", **kw))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        # weight of the wrong K
        (dict(weight=torch.randn(8, 15)), r"weight must be \[N, K=16\]"),
        # unknown activation
        (dict(activation="relu6"), "activation must be one of"),
        # bias of the wrong length
        (dict(bias=torch.randn(7)), r"bias must have shape \(8,\)"),
        # residual of the wrong shape
        (dict(residual=torch.randn(6, 9)), "residual must have the output's shape"),
        # prologue not a pair
        (dict(prologue=torch.randn(1, 16)), "prologue must be a pair"),
        # prologue scale of the wrong K
        (dict(prologue=(torch.randn(2, 15), torch.randn(16))), r"a_scale must be \[I, K=16\]"),
        # rows do not split into images
        (dict(sumsq_images=4), "do not split into 4 images"),
        # images disagree with the prologue
        (dict(prologue=(torch.randn(2, 16), torch.randn(16)), sumsq_images=3), "match the prologue"),
        # GRN scale without the sums
        (dict(grn=(torch.randn(8), 1e-6)), "needs sumsq_images"),
        # GRN gamma of the wrong size
        (dict(grn=(torch.randn(7), 1e-6), sumsq_images=2), "grn gamma must hold N=8"),
    ],
    ids=["K", "act", "bias", "residual", "pro-pair", "pro-K", "images", "images-pro", "grn-sums", "grn-N"],
)
def test_bad_input_raises(kwargs, match):
    args = dict(weight=torch.randn(8, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        K.fused_linear(torch.randn(6, 16), **args)


# ------------------------------------------------------------------------------------------------ choosing
class FakeTimer:
    """Returns a fixed time per candidate (identified by the closure's plan name) and counts the calls."""

    def __init__(self, times):
        self.times, self.calls = times, []

    def __call__(self, fn):
        name = fn()
        self.calls.append(name)
        if self.times[name] is None:
            raise RuntimeError("out of shared memory")
        return self.times[name]


def _candidates(names):
    return {n: (lambda n=n: n) for n in names}


def test_chooser_keeps_the_fastest_and_caches(tmp_path):
    timer = FakeTimer({"torch": 3e-5, "epilogue": 2e-5, "triton:a": 1e-5, "triton:b": None})
    chooser = fl.ImplChooser(timer=timer, cache_dir=str(tmp_path))
    names = ["torch", "epilogue", "triton:a", "triton:b"]
    assert chooser.choose("k1", _candidates(names)) == "triton:a"
    assert len(timer.calls) == 4
    assert chooser.choose("k1", _candidates(names)) == "triton:a"
    assert len(timer.calls) == 4  # cached: not timed again
    (row,) = chooser.table()
    assert row["key"] == "k1" and row["choice"] == "triton:a"
    assert row["times_us"]["triton:a"] == 10.0 and row["times_us"]["triton:b"] == float("inf")
    # persisted: a fresh chooser (a new process) reads the choice instead of timing
    fresh_timer = FakeTimer({})
    fresh = fl.ImplChooser(timer=fresh_timer, cache_dir=str(tmp_path))
    assert fresh.choose("k1", _candidates(names)) == "triton:a" and fresh_timer.calls == []
    assert json.loads((tmp_path / fl.ImplChooser.FILE).read_text())["k1"]["choice"] == "triton:a"


def test_chooser_prefers_cublas_when_faster_and_ignores_stale_choices(tmp_path):
    (tmp_path / fl.ImplChooser.FILE).write_text(json.dumps({"k": {"choice": "triton:gone", "times": {}}}))
    timer = FakeTimer({"torch": 1e-5, "triton:a": 2e-5})
    chooser = fl.ImplChooser(timer=timer, cache_dir=str(tmp_path))
    assert chooser.choose("k", _candidates(["torch", "triton:a"])) == "torch"  # the cached name is no candidate
    assert chooser.choose("other", _candidates(["torch", "triton:a"])) == "torch"
    (tmp_path / fl.ImplChooser.FILE).write_text("{not json")
    assert fl.ImplChooser(timer=timer, cache_dir=str(tmp_path)).cached("k") is None  # corrupt cache: ignored


def test_choices_table_is_the_chooser_s(monkeypatch):
    chooser = fl.ImplChooser(timer=FakeTimer({"torch": 2e-5, "triton:a": 1e-5}))
    monkeypatch.setattr(fl, "CHOOSER", chooser)
    chooser.choose("H200|M256|N768|K3072|bfloat16|none+bias+scale+res", _candidates(["torch", "triton:a"]))
    (row,) = K.fused_linear_choices()
    assert row["choice"] == "triton:a" and row["times_us"] == {"torch": 20.0, "triton:a": 10.0}


def test_cpu_is_inert():
    before = fl.fused_linear_choices()
    x, w, kw = _inputs((5,), 16, 8, torch.float32)
    K.fused_linear(x, w, **kw)
    with K.backend("torch"):
        K.fused_linear(x, w, **kw)
    assert fl.fused_linear_choices() == before  # nothing timed on CPU


def test_prune_configs():
    assert fl.prune_configs(200704, 384, 96)[0] == fl.GPU_CONFIGS[0]  # the default stays first
    small = fl.prune_configs(8, 32, 32)
    assert all(c.block_m <= 64 and c.block_n <= 64 for c in small)
    assert all(c.block_m * c.block_k <= 1024 * c.num_warps for c in fl.prune_configs(4096, 96, 384, True))


# ------------------------------------------------------------------------------------------------ sm_90 compile
_COMPILE = textwrap.dedent(
    """
    import collections, importlib, os, re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fl = importlib.import_module("fastvit_kernels.fused_linear")

    BIN = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")
    P, I = "*bf16", "i32"
    SIG = dict(A=P, Wt=P, Y=P, Bias=P, Scale=P, R=P, PS="*fp32", PB=P, P="*fp32", M=I, N=I, K=I, ROWS_PER_IMG=I,
               stride_am=I, stride_wn=I, stride_ym=I, stride_rm=I)
    DIV16 = {"N", "K", "stride_am", "stride_wn", "stride_ym", "stride_rm"}  # model shapes: multiples of 16
    EPILOGUES = {  # pwconv1 of ConvNeXt V2 (GELU + GRN sums), pwconv2 (GRN prologue + scale + residual), AltCLIP fc1
        "gelu+sumsq": dict(HAS_BIAS=True, ACT=1, HAS_SCALE=False, HAS_RES=False, HAS_PRO=False, SUMSQ=True, MAX_SEG=2),
        "pro+scale+res": dict(HAS_BIAS=True, ACT=0, HAS_SCALE=True, HAS_RES=True, HAS_PRO=True, SUMSQ=False, MAX_SEG=1),
        "quick_gelu": dict(HAS_BIAS=True, ACT=3, HAS_SCALE=False, HAS_RES=False, HAS_PRO=False, SUMSQ=False, MAX_SEG=1),
    }
    configs = fl.GPU_CONFIGS if sys.argv[1] == "all" else fl.GPU_CONFIGS[:1]
    if sys.argv[1] != "all":  # the default config on the two epilogues with the most live registers
        EPILOGUES.pop("quick_gelu")
    names = list(fl._fused_linear_kernel.arg_names)
    for cfg in configs:
        for ep, flags in EPILOGUES.items():
            if flags["HAS_PRO"] and cfg not in fl.prune_configs(4096, 4096, 4096, True, cfg.tma):
                continue  # pruned for prologue calls
            consts = dict(flags, stride_ak=1, stride_wk=1, EVEN_K=True, DOT_FP32=False, DOT_PRECISION="tf32",
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                          USE_TMA=cfg.tma)
            sig = {**SIG, **{k: "constexpr" for k in consts}}
            if cfg.tma:  # host-side tensor descriptors of the x and W tiles
                sig["A"] = f"tensordesc<bf16[{cfg.block_m}, {cfg.block_k}]>"
                sig["Wt"] = f"tensordesc<bf16[{cfg.block_n}, {cfg.block_k}]>"
            div = [n for n in names if sig[n].startswith("*") or n in DIV16]
            attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div}
            src = ASTSource(fn=fl._fused_linear_kernel, signature=sig, constexprs=consts, attrs=attrs)
            c = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(c.asm["cubin"])
                f.flush()
                res = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
                sass = subprocess.run([f"{BIN}/nvdisasm", "-c", f.name], capture_output=True, text=True).stdout
            opcode = r"^\\s+/\\*[0-9a-f]+\\*/\\s+(?:@!?U?P\\w+\\s+)?([A-Z0-9_]+)"  # /*0a10*/ [@P0] OPCODE
            ops = collections.Counter(re.findall(opcode, sass, re.M))
            usage = re.search(r"REG:(\\d+) STACK:(\\d+) SHARED:\\d+ LOCAL:(\\d+)", res)
            print(f"RESULT {cfg.name} {ep} regs={usage[1]} stack={usage[2]} local={usage[3]} "
                  f"HGMMA={ops['HGMMA']} HMMA={ops['HMMA']} LDGSTS={ops['LDGSTS']} UTMALDG={ops['UTMALDG']} "
                  f"STL={ops['STL']} LDL={ops['LDL']} "
                  f"smem={c.metadata.shared}")
    """
)


def _compile_sm90(which: str) -> list[dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _COMPILE, which], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "cuobjdump" in proc.stderr) and "not found" in proc.stderr:
        pytest.skip(f"no CUDA tools: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, cfg, ep, *kv = line.split()
            rows.append({"cfg": cfg, "epilogue": ep, **{k: int(v) for k, v in (p.split("=") for p in kv)}})
    assert rows, proc.stdout
    for r in rows:
        print(r)
        assert r["HGMMA"] > 0 and r["HMMA"] == 0, f"{r}: tl.dot did not lower to wgmma"
        if "-tma" in r["cfg"]:
            assert r["UTMALDG"] > 0, f"{r}: the descriptor loads did not become TMA loads"
        else:
            assert r["LDGSTS"] > 0, f"{r}: the K loop is not software-pipelined (no cp.async)"
        assert r["stack"] == 0 and r["local"] == 0 and r["STL"] == 0 and r["LDL"] == 0, f"{r}: register spills"
        assert r["smem"] <= 227 * 1024, f"{r}: more shared memory than an sm_90 block may have"
    return rows


def test_default_config_compiles_to_wgmma_without_spills():
    assert len(_compile_sm90("default")) == 2


@pytest.mark.slow
def test_all_configs_compile_to_wgmma_without_spills():
    assert len(_compile_sm90("all")) >= len(fl.GPU_CONFIGS) * 2
