"""fastvit_kernels.layer_norm_2d (channels-first LN over C of [N, C, H, W]) against HF ConvNext's formula, under the
Triton interpreter on CPU, for NCHW and channels_last inputs."""

from __future__ import annotations

import importlib

import fastvit_kernels as K
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import DTYPE_TOLS, assert_same_nonfinite, check_vs_fp64, f64, max_err, norm_inputs

ln2d_mod = importlib.import_module("fastvit_kernels.layer_norm_2d")

SHAPES = [
    # C = 1: normalizes to 0, output = bias
    (2, 1, 3, 3),
    # C = 3, 1x1 map
    (4, 3, 1, 1),
    # ConvNeXt-T stage-1 channels, 7x7 map
    (2, 96, 7, 7),
    # prime sizes
    (3, 97, 5, 7),
    # ConvNeXt-L stage-4 channels
    (1, 1536, 2, 3),
]
FORMATS = [torch.contiguous_format, torch.channels_last]


def hf_channels_first(x, w, b, eps):
    """HF ConvNextLayerNorm(data_format="channels_first").forward, verbatim, with parameters in x.dtype."""
    input_dtype = x.dtype
    x = x.float()
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    x = x.to(dtype=input_dtype)
    return w[:, None, None] * x + b[:, None, None]


def _inputs(shape, dtype, memory_format=torch.contiguous_format):
    return norm_inputs(shape, dtype, 1, memory_format=memory_format)


def _ref64(x, w, b, eps=1e-6):
    return K.layer_norm_2d_ref(*f64(x, w, b), eps)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, memory_format, dtype, atol, rtol):
    x, w, b = _inputs(shape, dtype, memory_format)
    ours = K.layer_norm_2d(x, w, b, 1e-6)
    check_vs_fp64(ours, _ref64(x, w, b), hf_channels_first(x, w, b, 1e-6), dtype, atol, rtol, f"ln2d{shape}")
    # output in the input's memory format (strides as HF's output)
    assert ours.stride() == hf_channels_first(x, w, b, 1e-6).stride()


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_optional_affine(has_w, has_b, memory_format):
    x, w, b = _inputs((2, 5, 3, 4), torch.float32, memory_format)
    w, b = (w if has_w else None), (b if has_b else None)
    check_vs_fp64(K.layer_norm_2d(x, w, b), _ref64(x, w, b), None, torch.float32, 1e-5, 1e-5, "affine")


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_triton_path_runs(monkeypatch, memory_format):
    def boom(*args):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(ln2d_mod, "layer_norm_2d_ref", boom)
    x, w, b = _inputs((2, 8, 3, 5), torch.float32, memory_format)
    assert K.layer_norm_2d(x, w, b).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize(
    "make",
    [
        # NCHW view: channel, row and column slices (H and W do not collapse)
        lambda x: torch.randn(2, 12, 11, 14)[:, 1:8, ::2, 2:9],
        # channels_last view sliced along C (row stride > C)
        lambda x: torch.randn(2, 12, 6, 7).contiguous(memory_format=torch.channels_last)[:, 2:9],
        # C innermost but H and W swapped in memory
        lambda x: torch.randn(2, 7, 6, 7).permute(0, 3, 2, 1),
    ],
    ids=["nchw-sliced", "channels_last-sliced", "c-innermost-hw-swapped"],
)
def test_non_contiguous(make):
    x = make(None)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(x.shape[1]), torch.randn(x.shape[1])
    check_vs_fp64(K.layer_norm_2d(x, w, b), _ref64(x, w, b), None, torch.float32, 1e-5, 1e-5, "non-contiguous")


@pytest.mark.parametrize("shape", [(0, 8, 3, 3), (2, 8, 0, 3), (2, 0, 3, 3)], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_empty(shape, memory_format):
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    out = K.layer_norm_2d(x, None, None)
    assert out.shape == shape and out.dtype == x.dtype


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf - inf inside the interpreter
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_nonfinite_propagates_like_reference(memory_format):
    x, w, b = _inputs((2, 5, 3, 3), torch.float32)
    x[0, 1, 0, 0] = float("nan")
    x[0, 2, 1, 1] = float("inf")
    x[1, 0, 2, 2] = -float("inf")
    x = x.contiguous(memory_format=memory_format)
    assert_same_nonfinite(K.layer_norm_2d(x, w, b), hf_channels_first(x, w, b, 1e-6), "ln2d nonfinite")


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_channels_last_out(memory_format, backend):
    """``channels_last_out``: the ConvNeXt stem norm writes channels_last from an NCHW conv output (issue 14)."""
    x, w, b = _inputs((2, 7, 5, 3), torch.float32, memory_format)
    with K.backend(backend):
        ours = K.layer_norm_2d(x, w, b, 1e-6, channels_last_out=True)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    check_vs_fp64(ours, _ref64(x, w, b), None, torch.float32, 1e-5, 1e-5, "ln2d channels_last_out")


def test_torch_backend_matches_triton():
    x, w, b = _inputs((2, 24, 5, 5), torch.bfloat16, torch.channels_last)
    with K.backend("torch"):
        ref = K.layer_norm_2d(x, w, b)
    assert torch.equal(ref, K.layer_norm_2d_ref(x, w, b))
    ours = K.layer_norm_2d(x, w, b)
    assert max_err(ours, ref) <= 2**-7 * ref.float().abs().max().item(), max_err(ours, ref)  # <= 1 bf16 ulp


def test_requires_grad_uses_reference():
    x, w, b = _inputs((2, 6, 3, 3), torch.float32)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    K.layer_norm_2d(xg, wg, b).square().sum().backward()
    x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    hf_channels_first(x2, w2, b, 1e-6).square().sum().backward()
    torch.testing.assert_close(xg.grad, x2.grad)
    torch.testing.assert_close(wg.grad, w2.grad)


@pytest.mark.parametrize(
    "args,match",
    [
        # channels-last [N, H, W, C] given where [N, C, H, W] is expected: weight length mismatch
        ((torch.randn(2, 5, 5, 8), torch.randn(8), None), r"weight must have shape \(5,\)"),
        # 3-D input
        ((torch.randn(8, 5, 5), None, None), r"at least 4 dims"),
        # 5-D input
        ((torch.randn(1, 8, 2, 5, 5), None, None), r"must be \[N, C, H, W\]"),
        # integer input
        ((torch.ones(1, 2, 3, 3, dtype=torch.int32), None, None), "floating"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        K.layer_norm_2d(*args)


def test_compile_fullgraph():
    x, w, b = _inputs((2, 16, 3, 3), torch.float32)
    fn = torch.compile(lambda x: K.layer_norm_2d(x, w, b, 1e-6) + 1, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), K.layer_norm_2d_ref(x, w, b, 1e-6) + 1)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    N=st.integers(1, 3),
    C=st.integers(1, 200),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    channels_last=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes(N, C, H, W, channels_last, dtype, seed):
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, w, b = _inputs((N, C, H, W), dtype, fmt)
    atol, rtol = {p.values[0]: p.values[1:] for p in DTYPE_TOLS}[dtype]
    check_vs_fp64(K.layer_norm_2d(x, w, b), _ref64(x, w, b), None, dtype, atol, rtol, f"fuzz{(N, C, H, W)}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    "shape",
    # the four ConvNeXt-T stage shapes at batch 64
    [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7)],
    ids=str,
)
def test_gpu_real_sizes(shape, memory_format, dtype, atol, rtol):
    x, w, b = (t.cuda() for t in _inputs(shape, dtype, memory_format))
    x = x.contiguous(memory_format=memory_format)
    ours = K.layer_norm_2d(x, w, b, 1e-6)
    assert ours.is_contiguous(memory_format=memory_format)
    check_vs_fp64(ours, _ref64(x, w, b), hf_channels_first(x, w, b, 1e-6), dtype, atol, rtol, f"gpu ln2d{shape}")
