"""Shared machinery of the fused blocks: forward swapping on the instance, eager fallback, lazily fused weights.

A fused block is not a new module in the tree. ``install(module, fused)`` sets ``module.forward`` to a
:class:`FusedForward` object (an instance attribute shadowing the class's ``forward``), so the module tree,
the parameters and ``state_dict()`` keys stay exactly the original ones; ``uninstall`` deletes the attribute (and
the non-persistent buffers a block added) and the original ``forward`` is back, bit for bit.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

_ATTR = "forward"


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _version(t: torch.Tensor) -> int:
    """The in-place-write counter; inference tensors (weights created under ``torch.inference_mode``) have none, so
    for them only a new storage, dtype or device rebuilds the cache."""
    return -1 if t.is_inference() else t._version


class FusedForward:
    """Callable installed as ``module.forward``: the fused path, or the original forward when the call needs it.

    Subclasses implement :meth:`fused` (same signature and return convention as the original forward) and may
    refine :meth:`needs_eager`. The original path runs for the whole call in training mode, when autograd would
    record gradients of the block's parameters, and whenever ``needs_eager`` says the fused path cannot serve it.
    """

    #: kernel name -> count, what this block uses (for the patch report)
    kernels: dict[str, int]

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.original = module.__dict__.get(_ATTR)  # an instance-level forward already there (e.g. accelerate hooks)
        self.__signature__ = inspect.signature(module.forward)  # what inspect.signature(module.forward) said before
        self.kernels = {}
        self.buffers: list[str] = []  # non-persistent buffers this block registered on ``module``

    def eager(self, *args, **kwargs):
        """The original forward of the module."""
        if self.original is not None:
            return self.original(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def needs_eager(self, args: tuple, kwargs: dict) -> bool:
        return False

    def must_run_eager(self, args: tuple, kwargs: dict) -> bool:
        """Training mode, or autograd recording for the block's parameters or its tensor arguments."""
        if self.module.training:
            return True
        if not torch.is_grad_enabled():
            return False
        tensors = (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return any(p.requires_grad for p in self.module.parameters()) or any(t.requires_grad for t in tensors)

    def __call__(self, *args, **kwargs):
        if self.must_run_eager(args, kwargs) or self.needs_eager(args, kwargs):
            return self.eager(*args, **kwargs)
        return self.fused(*args, **kwargs)

    def fused(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        used = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in self.kernels.items()) or "no kernels"
        return f"{type(self).__name__}({type(self.module).__name__}: {used})"


def install(module: nn.Module, fused: FusedForward) -> None:
    """Make ``fused`` the forward of ``module`` (replacing an earlier fused forward, if any)."""
    if is_fused(module):
        uninstall(module)
        fused.original = module.__dict__.get(_ATTR)
    module.__dict__[_ATTR] = fused


def uninstall(module: nn.Module) -> bool:
    """Restore the module's original forward and drop the buffers the fused block added; True if it was fused."""
    fused = module.__dict__.get(_ATTR)
    if not isinstance(fused, FusedForward):
        return False
    for name in fused.buffers:
        module._buffers.pop(name, None)
        module._non_persistent_buffers_set.discard(name)
    if fused.original is not None:
        module.__dict__[_ATTR] = fused.original
    else:
        del module.__dict__[_ATTR]
    return True


def is_fused(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get(_ATTR), FusedForward)


class DerivedWeights:
    """Tensors derived from a block's parameters (a concatenation, a repacked layout), computed once and cached.

    The tensors live in non-persistent buffers on the block (so ``state_dict()`` keeps exactly the original keys and
    ``.to()`` moves the cache with the model; ``uninstall`` drops them). They are rebuilt whenever a source tensor
    changes: another storage (``load_state_dict(assign=True)``, ``.to()``, ``from_pretrained`` materialising meta
    tensors), an in-place write (``load_state_dict`` copy, bumps the version counter; not tracked for tensors
    created under ``torch.inference_mode()``, whose storage, dtype and device still are), dtype or device. Under
    ``torch.compile`` the check is skipped and the cache (built by an eager call) is used, or the computation is
    traced into the graph when there is no cache yet. Subclasses give ``_sources`` and ``_compute``.
    """

    def __init__(self, owner: FusedForward, names: Sequence[str]) -> None:
        self.owner = owner
        self.names = tuple(f"fastvit_{name}" for name in names)
        self._key: tuple | None = None
        owner.buffers += list(self.names)

    def _sources(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute(self) -> tuple[torch.Tensor | None, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self) -> tuple[torch.Tensor | None, ...]:
        """The derived tensors, one per name, fresh."""
        module = self.owner.module
        if _compiling():
            if self.names[0] not in module._buffers:
                with torch.no_grad():
                    return self._compute()
            return tuple(module._buffers.get(name) for name in self.names)
        key = tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in self._sources())
        if key != self._key or self.names[0] not in module._buffers:
            with torch.no_grad():
                for name, value in zip(self.names, self._compute(), strict=True):
                    module.register_buffer(name, value, persistent=False)
            self._key = key
        return tuple(module._buffers[name] for name in self.names)


class FusedLinear(DerivedWeights):
    """Several ``nn.Linear`` layers that read the same input, as one ``[sum(out), in]`` weight (q|k|v, gate|up);
    ``get()`` gives (weight, bias or None)."""

    def __init__(self, owner: FusedForward, name: str, linears: Sequence[nn.Linear]) -> None:
        super().__init__(owner, (f"{name}_weight", f"{name}_bias"))
        self.linears = tuple(linears)
        self.has_bias = all(lin.bias is not None for lin in self.linears)

    def _sources(self) -> list[torch.Tensor]:
        ws = [lin.weight for lin in self.linears]
        return ws + [lin.bias for lin in self.linears] if self.has_bias else ws

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = torch.cat([lin.weight for lin in self.linears], 0)  # [sum(out), in]
        b = torch.cat([lin.bias for lin in self.linears], 0) if self.has_bias else None
        return w, b
