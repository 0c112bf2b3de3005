"""fastvit_kernels.add_layer_norm (s = x + gamma * a, h = LayerNorm(s) in one pass) against an fp64 truth, under the
Triton interpreter on CPU."""

from __future__ import annotations

import importlib

import fastvit_kernels as K
import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPE_TOLS, check_vs_fp64, strided

aln = importlib.import_module("fastvit_kernels.add_layer_norm")
TOLS = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}

SHAPES = [
    # C = 1: h = bias
    (5, 1),
    # prime sizes, 3-D
    (3, 7, 97),
    # ViT-B width
    (2, 5, 768),
]


def _inputs(shape, dtype, gamma=True, affine=True):
    C = shape[-1]
    x = (torch.randn(shape) * 2 + 0.5).to(dtype)
    a = torch.randn(shape).to(dtype)
    g = (1 + 0.5 * torch.randn(C)).to(dtype) if gamma else None
    w = (1 + 0.5 * torch.randn(C)).to(dtype) if affine else None
    b = (0.5 * torch.randn(C)).to(dtype) if affine else None
    return x, a, g, w, b


def _truth(x, a, g, w, b, eps):
    """fp64 s, and h normalised from s rounded to the dtype (what the kernel stores and normalises)."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    s = x.double() + (a.double() if g is None else g.double() * a.double())
    h = F.layer_norm(s.to(x.dtype).double(), (x.shape[-1],), d(w), d(b), eps)
    return s, h


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("gamma", [True, False], ids=["gamma", "plain"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, gamma, dtype, atol, rtol):
    x, a, g, w, b = _inputs(shape, dtype, gamma)
    s, h = K.add_layer_norm(x, a, w, b, 1e-6, gamma=g)
    s_lowp, h_lowp = aln.add_layer_norm_ref(x, a, w, b, 1e-6, gamma=g)  # torch's own ops in dtype
    s64, h64 = _truth(x, a, g, w, b, 1e-6)
    check_vs_fp64(s, s64, s_lowp, dtype, atol, rtol, f"sum{shape}")
    # h: one rounding of s (up to an ulp apart from the truth's, see kernel_testing) divided by the row's std
    std = s64.to(dtype).double().std(-1, unbiased=False, keepdim=True).clamp_min(1e-3)
    slack = (TOLS[dtype][1] * s64.abs() / std * (1 if w is None else w.double().abs())).max().item()
    check_vs_fp64(h, h64, h_lowp, dtype, atol + slack, rtol, f"ln{shape}")


def test_sum_only_h_and_no_affine():
    x, a, _, _, _ = _inputs((6, 33), torch.float32, gamma=False, affine=False)
    h = K.add_layer_norm(x, a, store_sum=False)
    assert isinstance(h, torch.Tensor)
    check_vs_fp64(h, _truth(x, a, None, None, None, 1e-5)[1], None, torch.float32, 1e-5, 1e-5, "h only")


def test_inputs_untouched_and_outputs_fresh():
    x, a, g, w, b = _inputs((4, 40), torch.bfloat16)
    x0, a0 = x.clone(), a.clone()
    s, h = K.add_layer_norm(x, a, w, b, gamma=g)
    assert torch.equal(x, x0) and torch.equal(a, a0)
    assert len({s.data_ptr(), h.data_ptr(), x.data_ptr(), a.data_ptr()}) == 4
    assert s.is_contiguous() and h.is_contiguous()


def test_non_contiguous():
    x, a, g, w, b = _inputs((6, 37), torch.float32)
    xv, av = strided(x, 0), x.new_zeros(37, 6).t()  # row-strided x; a with the last dim not innermost
    av.copy_(a)
    s, h = K.add_layer_norm(xv, av, w, b, gamma=g)
    s64, h64 = _truth(x, a, g, w, b, 1e-5)
    check_vs_fp64(s, s64, None, torch.float32, 1e-5, 1e-5, "strided s")
    check_vs_fp64(h, h64, None, torch.float32, 1e-5, 1e-5, "strided h")


def test_triton_path_runs(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(aln, "add_layer_norm_ref", boom)
    x, a, g, w, b = _inputs((3, 16), torch.float32)
    s, h = K.add_layer_norm(x, a, w, b, gamma=g)
    assert s.shape == h.shape == (3, 16)


def test_empty():
    x = torch.randn(0, 8)
    s, h = K.add_layer_norm(x, x.clone())
    assert s.shape == h.shape == (0, 8)


def test_requires_grad_uses_reference():
    x, a, g, w, b = _inputs((4, 12), torch.float32)
    ag = a.clone().requires_grad_(True)
    s, h = K.add_layer_norm(x, ag, w, b, gamma=g)
    assert h.grad_fn is not None
    (s.sum() + h.square().sum()).backward()
    a2 = a.clone().requires_grad_(True)
    s2 = x + g * a2
    (s2.sum() + F.layer_norm(s2, (12,), w, b).square().sum()).backward()
    torch.testing.assert_close(ag.grad, a2.grad)


def test_compile_fullgraph():
    x, a, g, w, b = _inputs((3, 24), torch.float32)
    fn = torch.compile(lambda x: K.add_layer_norm(x, a, w, b, gamma=g)[1] * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), 2 * aln.add_layer_norm_ref(x, a, w, b, gamma=g)[1])


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        # a of another shape
        ((torch.randn(2, 8), torch.randn(2, 7)), {}, "a must have x's shape"),
        # a of another dtype
        ((torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float64)), {}, "a is torch.float64"),
        # gamma of the wrong length
        ((torch.randn(2, 8), torch.randn(2, 8)), {"gamma": torch.randn(7)}, r"gamma must have shape \(8,\)"),
        # integer x
        ((torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64)), {}, "floating"),
    ],
    ids=["shape", "dtype", "gamma", "int"],
)
def test_bad_input_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        K.add_layer_norm(*args, **kwargs)
