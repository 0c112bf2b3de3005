"""Helpers shared by the kernel tests: per-dtype tolerances and checks against an fp64 reference."""

from __future__ import annotations

import pytest
import torch

# (dtype, atol, rtol) of a kernel's output against an fp64 reference computed from the same (already rounded)
# inputs. Kernels compute in fp32 and round once on store, so the error is half an ulp of the output dtype
# (relative 2^-24 fp32, 2^-11 = 4.9e-4 fp16, 2^-8 = 3.9e-3 bf16) plus the fp32 math error; rtol allows two such
# half-ulps (fp32 reassociation can move a value across a rounding boundary), atol covers outputs near zero
# where the fp32 math error (~1e-6 of the inputs' scale for reductions over a few thousand values) dominates.
# bf16 allows a full ulp (2^-7 = 7.8e-3): the Triton 3.9 interpreter rounds fp32 -> bf16 toward zero (GPUs round
# to nearest even, half an ulp), so CPU runs of the kernels are up to one ulp off.
DTYPE_TOLS = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-3, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, 8e-3, id="bf16"),
]


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |actual - expected| over finite positions (0.0 for empty tensors)."""
    if actual.numel() == 0:
        return 0.0
    d = (actual.double() - expected.double()).abs()
    d = d[torch.isfinite(d)]
    return d.max().item() if d.numel() else 0.0


def max_abs(x: torch.Tensor) -> float:
    """Max |x| over finite values (0.0 for none)."""
    x = x[torch.isfinite(x)]
    return x.abs().max().item() if x.numel() else 0.0


def check_vs_fp64(
    ours: torch.Tensor,
    ref64: torch.Tensor,
    torch_lowp: torch.Tensor | None,
    dtype: torch.dtype,
    atol: float,
    rtol: float,
    name: str,
) -> float:
    """``ours`` (in ``dtype``) within (atol, rtol) of the fp64 reference and, when torch's own computation in
    ``dtype`` is given, its max error at most 2x torch's + one rounding of the largest output.

    Returns (and prints) ours' max error."""
    assert ours.dtype == dtype, f"{name}: output dtype {ours.dtype}, expected {dtype}"
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    err = max_err(ours, ref64)
    torch.testing.assert_close(
        ours.double(), ref64, atol=atol, rtol=rtol, msg=lambda m: f"{name} {dtype}: max err {err:.3g}\n{m}"
    )
    if torch_lowp is not None:
        # floor: one rounding of the largest output (torch's own error can be luckily small on a few values)
        terr = max_err(torch_lowp, ref64)
        floor = atol + rtol * max_abs(ref64)
        assert err <= 2 * terr + floor, f"{name} {dtype}: max err {err:.3g} > 2 x torch's own {terr:.3g} + {floor:.3g}"
        print(f"{name} {dtype}: max err {err:.3g} (torch's own {terr:.3g})")
    return err


def assert_same_nonfinite(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """NaN where ref has NaN, +-Inf where ref has +-Inf, the finite rest close."""
    a, e = ours.double(), ref.double()
    assert torch.equal(a.isnan(), e.isnan()), (
        f"{name}: NaN at {a.isnan().nonzero().tolist()}, ref {e.isnan().nonzero().tolist()}"
    )
    assert torch.equal(a == float("inf"), e == float("inf")), f"{name}: +Inf positions differ"
    assert torch.equal(a == -float("inf"), e == -float("inf")), f"{name}: -Inf positions differ"
    fin = e.isfinite()
    torch.testing.assert_close(a[fin], e[fin], atol=1e-5, rtol=1e-5)


def strided(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The same values as x, as a non-contiguous view (every other element of a 2x larger buffer along ``dim``)."""
    shape = list(x.shape)
    shape[dim] *= 2
    buf = torch.zeros(shape, dtype=x.dtype, device=x.device)
    view = buf[(slice(None),) * dim + (slice(None, None, 2),)]
    view.copy_(x)
    return view


def f64(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors in float64 (None stays None), for an fp64 reference from the same rounded inputs."""
    return tuple(None if t is None else t.double() for t in tensors)


def norm_inputs(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    channel_dim: int = -1,
    *,
    affine: bool = True,
    weight_mean: float = 1.0,
    param_shape: tuple[int, ...] | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x, weight, bias for a normalization kernel, in ``dtype``: x ~ 2 N(0, 1) + 0.5 (activations with a mean
    to remove), weight ~ weight_mean + 0.5 N(0, 1), bias ~ 0.5 N(0, 1), both of ``param_shape`` (default
    ``[C]``, C = ``shape[channel_dim]``); weight and bias None unless ``affine``."""
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=memory_format)
    if not affine:
        return x, None, None
    pshape = param_shape or (shape[channel_dim],)
    weight = (weight_mean + 0.5 * torch.randn(pshape)).to(dtype)
    bias = (0.5 * torch.randn(pshape)).to(dtype)
    return x, weight, bias
