"""Shared plumbing for the kernel files: Triton availability, the dispatch rule, op registration.

Dispatch rule (decided once per call, cheap enough for dynamo to guard on):
  * Triton for CUDA tensors;
  * Triton for CPU tensors when the interpreter is on (``TRITON_INTERPRET=1`` set before triton is imported);
  * the torch reference otherwise, and whenever autograd needs gradients of an input.
``backend("torch")`` forces the reference (tests compare the two paths; benchmarks time both).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

try:  # triton is a Linux-only dependency; everything still works (through the references) without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAS_TRITON = False

    class _Stub:
        """Stands in for ``triton``/``triton.language`` so kernel files still import; their kernels never run."""

        constexpr = None

        def __getattr__(self, name: str):
            return _Stub()

        def __call__(self, *args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]  # bare decorator: @triton.jit
            return lambda fn: fn  # decorator with arguments: @triton.autotune(...)

    triton = tl = _Stub()  # type: ignore[assignment]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_BACKENDS = ("auto", "torch")
_backend = "auto"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the Triton kernel should run for these inputs (the first tensor decides the device)."""
    if not HAS_TRITON or _backend == "torch":
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False  # inference-only kernels: autograd goes through the reference
    x = tensors[0]
    if x.is_cuda:
        return True
    # interpreted kernels cannot be traced (torch.library.wrap_triton passes them through), so torch.compile
    # sees the reference on CPU
    return INTERPRET and x.device.type == "cpu" and not torch.compiler.is_compiling()


def triton_reason(device: torch.device | str = "cuda") -> str:
    """One line saying which path runs for tensors on ``device`` and why."""
    device = torch.device(device)
    if not HAS_TRITON:
        return "torch fallback (triton is not installed)"
    if _backend == "torch":
        return "torch fallback (forced by fastvit_kernels.backend('torch'))"
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and INTERPRET:
        return "triton (interpreter: TRITON_INTERPRET=1)"
    return f"torch fallback ({device.type}: set TRITON_INTERPRET=1 to run the Triton kernels on CPU)"


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager: ``"auto"`` (the dispatch rule above) or ``"torch"`` (always the reference)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {_BACKENDS}")
    old, _backend = _backend, name
    try:
        yield
    finally:
        _backend = old


def register_op(qualname: str, launcher: Callable, *, mutates_args: tuple = ()) -> Callable:
    """Register ``launcher`` (which launches Triton kernels through :func:`launch`) as a torch.library op.

    Uses ``torch.library.triton_op`` where the installed torch has it, so ``torch.compile(fullgraph=True)``
    traces into the kernels; on older torch a ``custom_op`` with a fake implementation that returns what the
    launcher would allocate. Eager calls work under the Triton interpreter too (torch 2.13 / triton 3.9), but
    interpreted kernels cannot be traced: under ``torch.compile`` on CPU, :func:`use_triton` sends calls to the
    reference, so compile-through-Triton is exercised on CUDA only.
    """
    if not HAS_TRITON:
        return launcher
    triton_op = getattr(torch.library, "triton_op", None)
    if triton_op is not None:
        return triton_op(qualname, launcher, mutates_args=mutates_args)
    op = torch.library.custom_op(qualname, launcher, mutates_args=mutates_args)  # pragma: no cover - torch<2.6
    return op


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, through ``torch.library.wrap_triton`` when torch has it (needed inside
    a ``triton_op`` so that dynamo and functionalization see the kernel)."""
    wrap_triton = getattr(torch.library, "wrap_triton", None)
    if wrap_triton is not None:
        kernel = wrap_triton(kernel)
    kernel[grid](*args, **kwargs)
