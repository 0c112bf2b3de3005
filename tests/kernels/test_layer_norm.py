"""fastvit_kernels.layer_norm (last dim) against F.layer_norm, under the Triton interpreter on CPU."""

from __future__ import annotations

import importlib

import fastvit_kernels as K
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import DTYPE_TOLS, assert_same_nonfinite, check_vs_fp64, f64, max_err, norm_inputs, strided

ln_mod = importlib.import_module("fastvit_kernels.layer_norm")

SHAPES = [
    # C = 1: the row normalizes to 0, output = bias
    (5, 1),
    # C = 3
    (7, 3),
    # ViT-S width, 3-D leading dims
    (2, 5, 96),
    # prime sizes: C and rows
    (3, 7, 97),
    # DINOv2-L / ConvNeXt-L width
    (3, 1536),
]


def _inputs(shape, dtype, affine=True):
    return norm_inputs(shape, dtype, affine=affine)


def _ref64(x, w, b, eps):
    return K.layer_norm_ref(*f64(x, w, b), eps)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, atol, rtol):
    x, w, b = _inputs(shape, dtype)
    ours = K.layer_norm(x, w, b, 1e-5)
    torch_lowp = F.layer_norm(x, (shape[-1],), w, b, 1e-5)  # HF's eager op in the input dtype
    check_vs_fp64(ours, _ref64(x, w, b, 1e-5), torch_lowp, dtype, atol, rtol, f"layer_norm{shape}")


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True)])
def test_optional_affine(has_w, has_b):
    x, w, b = _inputs((4, 33), torch.float32)
    w, b = (w if has_w else None), (b if has_b else None)
    check_vs_fp64(K.layer_norm(x, w, b, 1e-6), _ref64(x, w, b, 1e-6), None, torch.float32, 1e-5, 1e-5, "affine")


def test_triton_path_runs(monkeypatch):
    def boom(*args):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(ln_mod, "layer_norm_ref", boom)
    x, w, b = _inputs((3, 40), torch.float32)
    assert K.layer_norm(x, w, b).shape == (3, 40)


@pytest.mark.parametrize(
    "make",
    [
        # row-strided view (every other row)
        lambda x: strided(x, 0),
        # column slice of a wider buffer: row stride 2C
        lambda x: torch.cat([x, x], dim=-1)[..., : x.shape[-1]],
        # last dim not innermost (transposed)
        lambda x: x.t().contiguous().t(),
    ],
    ids=["rows", "cols", "transposed"],
)
def test_non_contiguous(make):
    x, w, b = _inputs((6, 37), torch.float32)
    xv = make(x)
    assert not xv.is_contiguous() and torch.equal(xv, x)
    out = K.layer_norm(xv, w, b, 1e-5)
    assert out.is_contiguous()
    check_vs_fp64(out, _ref64(x, w, b, 1e-5), None, torch.float32, 1e-5, 1e-5, "non-contiguous")


@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (3, 0)], ids=str)
def test_empty(shape):
    x = torch.randn(shape)
    w = torch.randn(shape[-1])
    out = K.layer_norm(x, w, None)
    assert out.shape == shape and out.dtype == x.dtype


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf - inf inside the interpreter
def test_nonfinite_propagates_like_reference():
    x, w, b = _inputs((4, 9), torch.float32)
    x[0, 3] = float("nan")
    x[1, 0] = float("inf")
    x[2, 5] = -float("inf")
    assert_same_nonfinite(K.layer_norm(x, w, b), F.layer_norm(x, (9,), w, b), "layer_norm nonfinite")


def test_torch_backend_matches_triton():
    x, w, b = _inputs((5, 67), torch.bfloat16)
    with K.backend("torch"):
        assert not K.use_triton(x)
        ref = K.layer_norm(x, w, b)
    ours = K.layer_norm(x, w, b)
    assert torch.equal(ref, K.layer_norm_ref(x, w, b))
    assert max_err(ours, ref) <= 2**-7 * ref.float().abs().max().item(), max_err(ours, ref)  # <= 1 bf16 ulp


def test_requires_grad_uses_reference():
    x, w, b = _inputs((4, 12), torch.float32)
    w.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = K.layer_norm(xg, w, b)
    assert out.grad_fn is not None
    out.square().sum().backward()
    x2, w2 = x.clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    F.layer_norm(x2, (12,), w2, b).square().sum().backward()
    torch.testing.assert_close(xg.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize(
    "args,match",
    [
        # weight of the wrong length
        ((torch.randn(2, 8), torch.randn(7), None), r"weight must have shape \(8,\)"),
        # bias of the wrong rank
        ((torch.randn(2, 8), None, torch.randn(1, 8)), r"bias must have shape \(8,\)"),
        # integer input
        ((torch.ones(2, 8, dtype=torch.int64), None, None), "floating"),
        # 0-d input
        ((torch.tensor(1.0), None, None), "at least 1 dims"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        K.layer_norm(*args)


def test_float64_falls_back_to_reference():
    x = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(K.layer_norm(x), F.layer_norm(x, (10,)))


def test_compile_fullgraph():
    x, w, b = _inputs((3, 24), torch.float32)
    fn = torch.compile(lambda x: K.layer_norm(x, w, b, 1e-5) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), 2 * K.layer_norm_ref(x, w, b, 1e-5))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    C=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes(lead, C, dtype, seed):
    torch.manual_seed(seed)
    x, w, b = _inputs((*lead, C), dtype)
    atol, rtol = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}[dtype]
    check_vs_fp64(K.layer_norm(x, w, b), _ref64(x, w, b, 1e-5), None, dtype, atol, rtol, f"fuzz{(*lead, C)}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize(
    "shape",
    [
        # DINOv2-B/L/g tokens at batch 64 (16448 = 64 x 257)
        (64, 257, 768),
        (64, 257, 1024),
        (64, 257, 1536),
        # ConvNeXt-T stage-1 channels_last LN (dim 96, 56x56 map)
        (64, 56, 56, 96),
    ],
    ids=str,
)
def test_gpu_real_sizes(shape, dtype, atol, rtol):
    x, w, b = _inputs(shape, dtype)
    x, w, b = x.cuda(), w.cuda(), b.cuda()
    ours = K.layer_norm(x, w, b, 1e-6)
    torch_lowp = F.layer_norm(x, (shape[-1],), w, b, 1e-6)
    check_vs_fp64(ours, _ref64(x, w, b, 1e-6), torch_lowp, dtype, atol, rtol, f"gpu layer_norm{shape}")
