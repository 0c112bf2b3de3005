"""fastvit_kernels.grn (ConvNeXt V2 Global Response Normalization on [N, H, W, C]) against HF's ConvNextV2GRN
formula, under the Triton interpreter on CPU."""

from __future__ import annotations

import importlib

import fastvit_kernels as K
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import DTYPE_TOLS, assert_same_nonfinite, check_vs_fp64, f64, max_err, norm_inputs

grn_mod = importlib.import_module("fastvit_kernels.grn")

SHAPES = [
    # C = 1: nx = gx / (gx + eps)
    (2, 3, 3, 1),
    # C = 3, 1x1 map
    (4, 1, 1, 3),
    # 7x7 map
    (2, 7, 7, 96),
    # prime sizes
    (3, 5, 7, 97),
    # ConvNeXt V2-T stage-3 MLP width, 2x3 map
    (1, 2, 3, 1536),
    # H*W = 667 > 512: pass 1 splits the map over several programs
    (1, 23, 29, 5),
]


def hf_grn(x, gamma, beta, eps=1e-6):
    """HF ConvNextV2GRN.forward, verbatim (parameters [1, 1, 1, C] in x.dtype)."""
    global_features = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    norm_features = global_features / (global_features.mean(dim=-1, keepdim=True) + eps)
    return gamma * (x * norm_features) + beta + x


def _inputs(shape, dtype, param_shape="hf"):
    pshape = (1, 1, 1, shape[-1]) if param_shape == "hf" else None  # HF's [1, 1, 1, C], or [C]
    return norm_inputs(shape, dtype, weight_mean=0.0, param_shape=pshape)  # gamma ~ 0.5 N(0, 1)


def _ref64(x, gamma, beta, eps=1e-6):
    return K.grn_ref(*f64(x, gamma, beta), eps)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, atol, rtol):
    x, g, b = _inputs(shape, dtype)
    ours = K.grn(x, g, b)
    check_vs_fp64(ours, _ref64(x, g, b), hf_grn(x, g, b), dtype, atol, rtol, f"grn{shape}")


def test_param_shapes_c_and_hf():
    x, g, b = _inputs((2, 4, 5, 12), torch.float32, param_shape="c")
    ours_c = K.grn(x, g, b)
    ours_hf = K.grn(x, g.reshape(1, 1, 1, -1), b.reshape(1, 1, 1, -1))
    assert torch.equal(ours_c, ours_hf)
    check_vs_fp64(ours_c, _ref64(x, g, b), None, torch.float32, 1e-5, 1e-5, "grn [C] params")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy 0 / 0 inside the interpreter
def test_eps_is_used():
    x = torch.zeros(1, 2, 2, 4)  # gx = 0: nx = 0 / (0 + eps) = 0 for any eps > 0, and NaN for eps = 0
    g, b = torch.ones(4), torch.zeros(4)
    assert torch.equal(K.grn(x, g, b, eps=1e-3), torch.zeros_like(x))
    assert K.grn(x, g, b, eps=0.0).isnan().all()


def test_triton_path_runs(monkeypatch):
    def boom(*args):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(grn_mod, "grn_ref", boom)
    x, g, b = _inputs((2, 3, 4, 8), torch.float32)
    assert K.grn(x, g, b).shape == x.shape


@pytest.mark.parametrize(
    "make",
    [
        # NCHW-contiguous memory seen as [N, H, W, C]: C is the outer stride
        lambda: torch.randn(2, 6, 5, 4).permute(0, 2, 3, 1),
        # sliced in H, W and C: H and W do not collapse
        lambda: torch.randn(2, 9, 10, 12)[:, 1:7, ::2, 3:10],
    ],
    ids=["permuted-nchw", "sliced"],
)
def test_non_contiguous(make):
    x = make()
    assert not x.is_contiguous()
    g, b = torch.randn(x.shape[-1]), torch.randn(x.shape[-1])
    out = K.grn(x, g, b)
    assert out.is_contiguous()
    check_vs_fp64(out, _ref64(x, g, b), None, torch.float32, 1e-5, 1e-5, "non-contiguous")


@pytest.mark.parametrize("shape", [(0, 3, 3, 8), (2, 0, 3, 8), (2, 3, 3, 0)], ids=str)
def test_empty(shape):
    x = torch.randn(shape)
    out = K.grn(x, torch.randn(shape[-1]), torch.randn(shape[-1]))
    assert out.shape == shape and out.dtype == x.dtype


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf / inf inside the interpreter
def test_nonfinite_propagates_like_reference():
    x, g, b = _inputs((3, 3, 4, 5), torch.float32)
    x[0, 1, 2, 3] = float("nan")  # poisons image 0 (mean over C)
    x[1, 0, 0, 1] = float("inf")  # channel 1 of image 1 -> inf / inf
    x[2, 2, 3, 4] = -float("inf")
    assert_same_nonfinite(K.grn(x, g, b), hf_grn(x, g, b), "grn nonfinite")


def test_torch_backend_matches_triton():
    x, g, b = _inputs((2, 5, 5, 24), torch.bfloat16)
    with K.backend("torch"):
        ref = K.grn(x, g, b)
    assert torch.equal(ref, K.grn_ref(x, g, b))
    ours = K.grn(x, g, b)
    assert max_err(ours, ref) <= 2**-7 * ref.float().abs().max().item(), max_err(ours, ref)  # <= 1 bf16 ulp


def test_requires_grad_uses_reference():
    x, g, b = _inputs((2, 3, 3, 6), torch.float32)
    xg, gg = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
    K.grn(xg, gg, b).square().sum().backward()
    x2, g2 = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
    hf_grn(x2, g2, b).square().sum().backward()
    torch.testing.assert_close(xg.grad, x2.grad)
    torch.testing.assert_close(gg.grad, g2.grad)


@pytest.mark.parametrize(
    "args,match",
    [
        # [N, C, H, W] given where [N, H, W, C] is expected: gamma length mismatch
        ((torch.randn(2, 8, 5, 5), torch.randn(8), torch.randn(8)), r"gamma must have shape \(5,\) or \(1, 1, 1, 5\)"),
        # beta broadcastable but not [C] / [1, 1, 1, C]
        ((torch.randn(2, 3, 3, 4), torch.randn(4), torch.randn(1, 4)), r"beta must have shape"),
        # 3-D input
        ((torch.randn(3, 3, 4), torch.randn(4), torch.randn(4)), r"at least 4 dims"),
        # missing gamma
        ((torch.randn(1, 3, 3, 4), None, torch.randn(4)), r"gamma must be a tensor"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        K.grn(*args)


def test_compile_fullgraph():
    x, g, b = _inputs((2, 3, 3, 16), torch.float32)
    fn = torch.compile(lambda x: K.grn(x, g, b) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), 2 * K.grn_ref(x, g, b))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    N=st.integers(1, 3),
    H=st.integers(1, 12),
    W=st.integers(1, 12),
    C=st.integers(1, 160),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes(N, H, W, C, dtype, seed):
    torch.manual_seed(seed)
    x, g, b = _inputs((N, H, W, C), dtype)
    atol, rtol = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}[dtype]
    check_vs_fp64(K.grn(x, g, b), _ref64(x, g, b), None, dtype, atol, rtol, f"fuzz{(N, H, W, C)}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize(
    "shape",
    # the four ConvNeXt V2-T GRN shapes (MLP width 4 x dim) at batch 64
    [(64, 56, 56, 384), (64, 28, 28, 768), (64, 14, 14, 1536), (64, 7, 7, 3072)],
    ids=str,
)
def test_gpu_real_sizes(shape, dtype, atol, rtol):
    x, g, b = (t.cuda() for t in _inputs(shape, dtype))
    ours = K.grn(x, g, b)
    check_vs_fp64(ours, _ref64(x, g, b), hf_grn(x, g, b), dtype, atol, rtol, f"gpu grn{shape}")
