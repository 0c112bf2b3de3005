"""fastvit_kernels.swiglu (silu(h[..., :H]) * h[..., H:]) against HF Dinov2SwiGLUFFN's gate, under the Triton
interpreter on CPU."""

from __future__ import annotations

import importlib

import fastvit_kernels as K
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import DTYPE_TOLS, assert_same_nonfinite, check_vs_fp64, max_err, strided

swiglu_mod = importlib.import_module("fastvit_kernels.swiglu")

SHAPES = [
    # H = 1
    (5, 2),
    # H = 3
    (7, 6),
    # 3-D leading dims, H = 96
    (2, 5, 192),
    # prime sizes
    (3, 7, 194),
    # DINOv2-g SwiGLU width (2H = 8192), two tokens
    (2, 8192),
]


def hf_gate(h):
    """HF Dinov2SwiGLUFFN's gate, verbatim, in h.dtype."""
    x1, x2 = h.chunk(2, dim=-1)
    return F.silu(x1) * x2


def _input(shape, dtype):
    return (torch.randn(shape) * 3).to(dtype)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, atol, rtol):
    h = _input(shape, dtype)
    check_vs_fp64(K.swiglu(h), K.swiglu_ref(h.double()), hf_gate(h), dtype, atol, rtol, f"swiglu{shape}")


def test_triton_path_runs(monkeypatch):
    def boom(*args):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(swiglu_mod, "swiglu_ref", boom)
    assert K.swiglu(_input((3, 10), torch.float32)).shape == (3, 5)


@pytest.mark.parametrize(
    "make",
    [
        # row-strided view (every other row)
        lambda h: strided(h, 0),
        # slice of a wider buffer (e.g. a fused projection's output): row stride > 2H
        lambda h: torch.cat([h, h], dim=-1)[..., : h.shape[-1]],
        # last dim not innermost (transposed)
        lambda h: h.t().contiguous().t(),
    ],
    ids=["rows", "cols", "transposed"],
)
def test_non_contiguous(make):
    h = _input((6, 22), torch.float32)
    hv = make(h)
    assert not hv.is_contiguous() and torch.equal(hv, h)
    out = K.swiglu(hv)
    assert out.is_contiguous()
    check_vs_fp64(out, K.swiglu_ref(h.double()), None, torch.float32, 1e-5, 1e-5, "non-contiguous")


@pytest.mark.parametrize("shape,out_shape", [((0, 8), (0, 4)), ((2, 3, 0), (2, 3, 0)), ((2, 0, 6), (2, 0, 3))], ids=str)
def test_empty(shape, out_shape):
    out = K.swiglu(torch.randn(shape))
    assert out.shape == out_shape and out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow / inf * 0 inside the interpreter
def test_nonfinite_propagates_like_reference():
    inf, nan = float("inf"), float("nan")
    # gate half: -inf (silu -> nan), inf, nan, large negative (exp overflow), 0 * inf
    a = torch.tensor([[-inf, inf, nan, -100.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0, inf, -inf]])
    h = torch.cat([a, b], dim=-1)
    assert_same_nonfinite(K.swiglu(h), hf_gate(h), "swiglu nonfinite")


def test_torch_backend_matches_triton():
    h = _input((5, 70), torch.bfloat16)
    with K.backend("torch"):
        ref = K.swiglu(h)
    assert torch.equal(ref, K.swiglu_ref(h))
    ours = K.swiglu(h)
    assert max_err(ours, ref) <= 2**-7 * ref.float().abs().max().item(), max_err(ours, ref)  # <= 1 bf16 ulp


def test_requires_grad_uses_reference():
    h = _input((4, 10), torch.float32)
    hg, h2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    K.swiglu(hg).square().sum().backward()
    hf_gate(h2).square().sum().backward()
    torch.testing.assert_close(hg.grad, h2.grad)


@pytest.mark.parametrize(
    "h,match",
    [
        # odd last dim
        (torch.randn(4, 7), r"even last dim, got shape \(4, 7\)"),
        # 0-d
        (torch.tensor(1.0), "even last dim"),
        # integer input
        (torch.ones(2, 4, dtype=torch.int64), "floating"),
    ],
)
def test_bad_input_raises(h, match):
    with pytest.raises(ValueError, match=match):
        K.swiglu(h)


def test_compile_fullgraph():
    h = _input((3, 16), torch.float32)
    fn = torch.compile(lambda h: K.swiglu(h) + 1, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(h), K.swiglu_ref(h) + 1)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    H=st.integers(1, 600),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes(lead, H, dtype, seed):
    torch.manual_seed(seed)
    h = _input((*lead, 2 * H), dtype)
    atol, rtol = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}[dtype]
    check_vs_fp64(K.swiglu(h), K.swiglu_ref(h.double()), None, dtype, atol, rtol, f"fuzz{(*lead, 2 * H)}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize(
    "shape",
    [
        # DINOv2-g tokens at batch 64 (16448 = 64 x 257), 2H = 8192
        (16448, 8192),
        # odd row count, 3-D
        (7, 257, 2 * 1000),
    ],
    ids=str,
)
def test_gpu_real_sizes(shape, dtype, atol, rtol):
    h = _input(shape, dtype).cuda()
    check_vs_fp64(K.swiglu(h), K.swiglu_ref(h.double()), hf_gate(h), dtype, atol, rtol, f"gpu swiglu{shape}")
