"""Shared plumbing for the kernel files: Triton availability, the dispatch rule, op registration.

Dispatch rule (decided once per call, cheap enough for dynamo to guard on):
  * Triton for CUDA tensors;
  * Triton for CPU tensors when the interpreter is on (``TRITON_INTERPRET=1`` set before triton is imported);
  * the torch reference otherwise, and whenever autograd needs gradients of an input.
``backend("torch")`` forces the reference (tests compare the two paths; benchmarks time both).

Recording launches (``fastvit profile``, ``bench.sass``): under ``with recording() as launches:`` every
:func:`launch` appends a :class:`Launch` (kernel, grid, args, kwargs) to ``launches`` instead of running the kernel,
ops registered with :func:`register_op` call their launcher directly (so a ``TorchDispatchMode`` sees the
launcher's own aten ops: allocations, copies), and :func:`use_triton` says True for ``meta`` tensors, as it would
on CUDA. So one forward on the meta device records, at no cost, every launch the fused model would make on a GPU::

    with torch.device("meta"):
        model = build_model(config)                       # no weights, no memory
    with torch.no_grad(), recording() as launches:
        model(torch.empty(64, 3, 224, 224, device="meta", dtype=torch.bfloat16))
    for r in launches:
        r.name, r.grid, r.named["BLOCK_C"], r.kwargs.get("num_warps"), r.configs()

``recording(execute=True)`` records and also runs each launch (real tensors), e.g. to time it.
Outputs of launches that were not executed hold no values (``torch.empty``). What a launch costs (bytes, FLOPs)
each kernel file declares beside its launcher: see :mod:`fastvit_kernels._cost`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

try:  # triton is a Linux-only dependency; everything still works (through the references) without it
    import triton
    import triton.language as tl

    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # needs numpy: fail here (-> fallbacks), not in @triton.jit
        import triton.runtime.interpreter  # noqa: F401

    HAS_TRITON = True
    IMPORT_ERROR: str | None = None
except ImportError as _e:  # pragma: no cover - exercised only where triton is missing or broken
    HAS_TRITON = False
    # what went wrong, for ``fastvit info``: triton missing, or installed but failing to import (e.g. numpy
    # missing under TRITON_INTERPRET=1, a broken install)
    IMPORT_ERROR = f"{type(_e).__name__}: {_e}"

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
    if x.is_cuda or (_recording is not None and x.device.type == "meta"):
        return True
    # interpreted kernels cannot be traced (torch.library.wrap_triton passes them through), so torch.compile
    # sees the reference on CPU
    return INTERPRET and x.device.type == "cpu" and not torch.compiler.is_compiling()


def triton_reason(device: torch.device | str = "cuda") -> str:
    """One line saying which path runs for tensors on ``device`` and why."""
    device = torch.device(device)
    if not HAS_TRITON:
        return f"torch fallback (triton cannot be imported: {IMPORT_ERROR})"
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
        op = triton_op(qualname, launcher, mutates_args=mutates_args)
    else:  # pragma: no cover - torch<2.6
        op = torch.library.custom_op(qualname, launcher, mutates_args=mutates_args)

    @functools.wraps(launcher)
    def call(*args, **kwargs):
        if _recording is not None:  # the launcher itself: its aten ops stay visible, its launches are recorded
            return launcher(*args, **kwargs)
        return op(*args, **kwargs)

    call.op = op
    call.qualname = qualname
    return call


# The Triton interpreter is not thread-safe (it patches triton.language and keeps per-launch global state): calls
# of one model from several threads crash inside it. Interpreted launches are serialised; compiled launches never
# take the lock.
_INTERPRETER_LOCK = threading.RLock()


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, through ``torch.library.wrap_triton`` when torch has it (needed inside
    a ``triton_op`` so that dynamo and functionalization see the kernel). Under ``TRITON_INTERPRET=1`` launches are
    serialised by a lock (the interpreter is not thread-safe); the compiled path is lock-free."""
    rec = _recording
    if rec is not None:
        rec.records.append(Launch(kernel, _resolve_grid(kernel, grid, args, kwargs), args, kwargs))
        if not rec.execute:
            return
        if rec.around is not None:  # e.g. a profiler's timer around the kernel
            with rec.around(len(rec.records) - 1):
                return _run(kernel, grid, args, kwargs)
    _run(kernel, grid, args, kwargs)


def _run(kernel, grid, args: tuple, kwargs: dict) -> None:
    wrap_triton = getattr(torch.library, "wrap_triton", None)
    if wrap_triton is not None:
        kernel = wrap_triton(kernel)
    if INTERPRET:
        with _INTERPRETER_LOCK:
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


# ---------------------------------------------------------------------------------------------- recording launches


def jit_function(kernel):
    """The ``@triton.jit`` function under a launchable (an ``Autotuner`` / ``Heuristics`` wraps it as ``.fn``)."""
    while type(kernel).__name__ in ("Autotuner", "Heuristics"):
        kernel = kernel.fn
    return kernel


def _named(kernel, args: tuple, kwargs: dict) -> dict[str, Any]:
    return {**dict(zip(jit_function(kernel).arg_names, args, strict=False)), **kwargs}


def _resolve_grid(kernel, grid, args: tuple, kwargs: dict):
    """The grid as a tuple of ints; a grid over META that needs an autotune config stays the callable."""
    if not callable(grid):
        return tuple(grid)
    try:
        return tuple(grid(_named(kernel, args, kwargs)))
    except KeyError:  # a constexpr the autotuner picks (BLOCK_M): see Launch.grid_for
        return grid


@dataclass
class Launch:
    """One recorded kernel launch, with everything needed to compile it exactly as the JIT would.

    Attributes:
        kernel: what the launcher launched: a ``JITFunction`` (``InterpretedFunction`` under TRITON_INTERPRET=1),
            or a ``triton.autotune`` ``Autotuner`` wrapping one (then see :meth:`configs`).
        grid: the launch grid as a tuple of ints, or (autotuned kernels whose grid depends on the config) the
            grid callable over META: :meth:`grid_for` resolves it for one config.
        args: positional arguments as passed: tensors (on the meta device: dtype, shape, strides, no data),
            ints and floats (their values decide Triton's specialisation: 1, multiples of 16, ...).
        kwargs: keyword arguments as passed: constexprs (``BLOCK_C=128``) and launch options (``num_warps``,
            ``num_stages``; absent = Triton's defaults, or the autotune config's).
    """

    kernel: Any
    grid: tuple[int, ...] | Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def fn(self):
        """The ``@triton.jit`` function (unwrapped from an autotuner)."""
        return jit_function(self.kernel)

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def named(self) -> dict[str, Any]:
        """Every argument by its name in the kernel's signature (positional and keyword)."""
        return _named(self.kernel, self.args, self.kwargs)

    def __getitem__(self, name: str) -> Any:
        return self.named[name]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor arguments by name."""
        return {k: v for k, v in self.named.items() if isinstance(v, torch.Tensor)}

    @property
    def autotuned(self) -> bool:
        return type(self.kernel).__name__ == "Autotuner"

    def configs(self) -> list:
        """The configs this launch may run with: for an autotuned kernel, those its pruner keeps for these
        arguments (``Autotuner.prune_configs``, as ``Autotuner.run`` calls it); else one ``triton.Config`` of the
        constexprs and launch options passed."""
        if not self.autotuned:
            constexprs = {k: v for k, v in self.kwargs.items() if k not in _LAUNCH_OPTIONS}
            options = {k: v for k, v in self.kwargs.items() if k in _LAUNCH_OPTIONS}
            return [triton.Config(constexprs, **options)]
        tuner = self.kernel
        tuner.nargs = dict(zip(tuner.arg_names, self.args, strict=False))
        try:
            return list(tuner.prune_configs(self.kwargs))
        finally:
            tuner.nargs = None

    def grid_for(self, config=None) -> tuple[int, ...]:
        """The grid for one config (from :meth:`configs`); the recorded grid when it needed none."""
        if not callable(self.grid):
            return self.grid
        meta = self.named if config is None else {**self.named, **config.all_kwargs()}
        return tuple(self.grid(meta))


_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass
class _Recording:
    records: list
    execute: bool
    around: Callable[[int], contextlib.AbstractContextManager] | None


_recording: _Recording | None = None


@contextlib.contextmanager
def recording(
    records: list | None = None,
    *,
    execute: bool = False,
    around: Callable[[int], contextlib.AbstractContextManager] | None = None,
) -> Iterator[list[Launch]]:
    """Record every :func:`launch` into ``records`` (a new list by default), which the context yields.

    Args:
        records: the list to append :class:`Launch` records to (a profiler may interleave its own entries).
        execute: also run each launch (needs tensors on a device the kernels run on); by default nothing runs.
        around: with ``execute``, each launch runs inside ``around(index of its record)`` (e.g. a timer).
    """
    global _recording
    old, _recording = _recording, _Recording([] if records is None else records, execute, around)
    try:
        yield _recording.records
    finally:
        _recording = old


def is_recording() -> bool:
    """True inside :func:`recording`."""
    return _recording is not None
