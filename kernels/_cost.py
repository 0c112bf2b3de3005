"""The cost protocol: every Triton kernel declares the device-memory traffic and FLOPs of one launch.

Each kernel file puts, beside its launcher, one small function per ``@triton.jit`` kernel it launches::

    @kernel_cost(_layer_norm_rows_kernel)
    def _layer_norm_rows_cost(r: Launch) -> Cost:
        \"\"\"x read once, y written once, weight and bias once.\"\"\"
        params = (r["HAS_W"] + r["HAS_B"]) * nbytes(r["W"], r["C"])
        return Cost(read=nbytes(r["X"]) + params, written=nbytes(r["Y"]), kind="norm")

``r`` is the :class:`~fastvit_kernels._dispatch.Launch` record of the launch (``r["NAME"]`` is the argument of that
name in the kernel's signature, positional or keyword; tensors may be on the meta device). The function returns a
:class:`Cost`: bytes the launch reads from and writes to device memory (each tensor it touches once: the ideal a
kernel aims at, not counting cache re-reads of its own tiles), FLOPs (matmuls, convolutions and attention only,
2 per multiply-add, as in the profiler's count of aten ops) and the kind of op. ``fastvit profile`` calls
:func:`cost_of` on every recorded launch; it holds no table of kernel names. ``tests/test_profile.py`` checks that
every kernel launched by ``fastvit_kernels`` declares a cost and that it agrees with the tensors the launch gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: op kinds, in the order the profiler's table shows them
KINDS = ("gemm", "attention", "norm", "elementwise", "dwconv", "copy")

_ATTR = "fastvit_cost"


@dataclass(frozen=True)
class Cost:
    """Traffic and work of one device operation."""

    read: int  # bytes read from device memory
    written: int  # bytes written
    flops: float = 0.0  # matmul / conv / attention FLOPs (2 per multiply-add)
    kind: str = "elementwise"  # one of KINDS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Cost.kind must be one of {KINDS}, got {self.kind!r}")
        if self.read < 0 or self.written < 0 or self.flops < 0:
            raise ValueError(f"Cost must not be negative, got {self}")

    @property
    def bytes(self) -> int:
        return self.read + self.written


def nbytes(t: torch.Tensor, numel: int | None = None) -> int:
    """Bytes of the distinct elements a tensor (view) addresses: broadcast (stride-0) dims count once. With
    ``numel``: bytes of that many elements of t's dtype."""
    if numel is None:
        if t.numel() == 0:
            return 0
        numel = math.prod(d for d, s in zip(t.shape, t.stride(), strict=True) if s != 0)
    return int(numel) * t.element_size()


def kernel_cost(kernel) -> Callable[[Callable], Callable]:
    """Decorator: declare ``fn(launch) -> Cost`` as the cost of one launch of ``kernel`` (a ``@triton.jit``
    function; an autotuned wrapper of it finds the same declaration)."""

    def register(fn: Callable) -> Callable:
        setattr(kernel, _ATTR, fn)
        return fn

    return register


def declared_cost(kernel) -> Callable | None:
    """The cost function declared for ``kernel`` or for the function it wraps (autotuner, heuristics); else None."""
    while kernel is not None:
        fn = getattr(kernel, _ATTR, None)
        if fn is not None:
            return fn
        kernel = getattr(kernel, "fn", None) if type(kernel).__name__ in ("Autotuner", "Heuristics") else None
    return None


def cost_of(launch) -> Cost:
    """The declared :class:`Cost` of a recorded launch; LookupError naming the kernel when it declares none."""
    fn = declared_cost(launch.kernel)
    if fn is None:
        raise LookupError(
            f"kernel {launch.name} declares no cost: add `@kernel_cost({launch.name})` beside its launcher "
            "(see fastvit_kernels._cost)"
        )
    return fn(launch)
