"""Host-side helpers shared by the kernel files: the dtypes the kernels take, block-size arithmetic, input checks."""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take (fp32 math inside)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def check_input(op: str, x: torch.Tensor, min_dim: int) -> None:
    """ValueError unless ``x`` is a floating tensor of at least ``min_dim`` dims."""
    if x.dim() < min_dim:
        raise ValueError(f"{op}: x must have at least {min_dim} dims, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point tensor, got {x.dtype}")


def check_param(op: str, name: str, p: torch.Tensor, x: torch.Tensor) -> None:
    """ValueError unless the parameter ``p`` is a floating tensor on x's device (shape checked by the caller)."""
    if not p.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"{op}: {name} is on {p.device} but x is on {x.device}")


def check_channel_param(op: str, name: str, p: torch.Tensor | None, x: torch.Tensor, C: int) -> None:
    """ValueError unless ``p`` is None or a floating ``[C]`` tensor on x's device."""
    if p is None:
        return
    if tuple(p.shape) != (C,):
        raise ValueError(f"{op}: {name} must have shape ({C},) for the {C} channels of x, got {tuple(p.shape)}")
    check_param(op, name, p, x)


def dummy(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``t``, or ``x`` as a stand-in pointer for an absent optional tensor (never read: the kernel's HAS_* is off)."""
    return x if t is None else t
