"""Shared machinery of the fused blocks: forward shadowing on the instance, eager fallback, lazily fused weights.

Nothing is a new module in the tree. :class:`InstanceForward` is the one mechanism: an object installed as
``module.forward`` (an instance attribute shadowing the class's ``forward``), so the module tree, the parameters
and ``state_dict()`` keys stay exactly the original ones; removing it deletes the attribute (and whatever the
object attached, e.g. non-persistent buffers) and the original ``forward`` is back, bit for bit. Two kinds extend
it: :class:`FusedForward` (a block's fused path, installed by :func:`fastvit.patching.patch`) and
:class:`~fastvit.fused.graphs.CUDAGraphForward` (a whole-model CUDA-graph runner). They stack: each keeps the
forward it shadows as ``original`` and calls it for the eager path; removing one relinks the others.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn

#: the patch flags, one per kernel (``fastvit.patch(model, **flags)``); a builder gets all of them
FLAGS = ("attention", "layer_norm", "dwconv", "grn", "swiglu", "fused_linear")

_ATTR = "forward"
F = TypeVar("F", bound="InstanceForward")


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _stack(module: nn.Module) -> Iterator[InstanceForward]:
    """The instance forwards installed on ``module``, outermost first."""
    f = module.__dict__.get(_ATTR)
    while isinstance(f, InstanceForward):
        yield f
        f = f.original


class InstanceForward:
    """A callable installed as ``module.forward``, shadowing the class's ``forward`` on that instance only.

    ``original`` is what it shadows (an instance-level forward already there, e.g. accelerate hooks or another
    :class:`InstanceForward`, or None for the class's ``forward``); :meth:`eager` calls it. ``__signature__`` is the
    original signature, for code that inspects ``module.forward`` (HF pipelines, argument binding). Subclasses
    implement ``__call__`` and may extend :meth:`_attach` / :meth:`_detach` (run on install / removal).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.original = None  # set by install()
        self.__signature__ = inspect.signature(module.forward)  # what inspect.signature(module.forward) said before

    def eager(self, *args, **kwargs):
        """The forward this one shadows."""
        if self.original is not None:
            return self.original(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _attach(self) -> None:
        """Called when installed (e.g. register hooks)."""

    def _detach(self) -> None:
        """Called when removed (e.g. drop buffers, hooks, caches)."""

    @classmethod
    def kind(cls) -> type[InstanceForward]:
        """The direct subclass of :class:`InstanceForward` this one derives from (``FusedForward``, ...): a module
        holds at most one forward of each kind."""
        return next(c for c in reversed(cls.__mro__) if issubclass(c, InstanceForward) and c is not InstanceForward)

    def install(self: F) -> F:
        """Install on ``self.module`` (outermost), replacing a forward of the same :meth:`kind`. Returns self."""
        self.kind().remove(self.module)
        self.original = self.module.__dict__.get(_ATTR)
        self.module.__dict__[_ATTR] = self
        self._attach()
        return self

    def uninstall(self) -> None:
        """Take this forward off its module wherever it sits in the stack; the others stay, relinked."""
        above = None
        for f in _stack(self.module):
            if f is self:
                break
            above = f
        else:
            return
        if above is not None:
            above.original = self.original
        elif self.original is not None:
            self.module.__dict__[_ATTR] = self.original
        else:
            del self.module.__dict__[_ATTR]
        self.original = None
        self._detach()

    @classmethod
    def installed(cls: type[F], module: nn.Module) -> F | None:
        """The forward of this kind installed on ``module``, or None."""
        return next((f for f in _stack(module) if isinstance(f, cls)), None)

    @classmethod
    def remove(cls: type[F], module: nn.Module) -> F | None:
        """Uninstall the forward of this kind from ``module``; returns it (None if there was none)."""
        f = cls.installed(module)
        if f is not None:
            f.uninstall()
        return f


class FusedForward(InstanceForward):
    """The fused path of a block, or the original forward when the call needs it.

    Subclasses implement :meth:`fused` (same signature and return convention as the original forward), may refine
    :meth:`needs_eager`, and give a builder ``from_module(module, flags) -> FusedForward | str | None``: the fused
    forward for a block (flags: :data:`fastvit.patching.FLAGS` -> bool), or the reason it does not fit (reported by
    the patcher), or None to leave the block alone silently. The original path runs for the whole call in training
    mode, when autograd would record gradients of the block's parameters, and whenever ``needs_eager`` says so.

    Structure after patching: a submodule registered anywhere below the block (``prune_heads``, a LoRA / PEFT or
    quantised Linear swapped in, any ``setattr`` of a module) or a parameter that no longer fits a fused weight
    marks the block; its next eager call re-resolves the structure with the builder (``from_module`` with the
    patch flags): what still fits is fused again (e.g. fewer heads after pruning), otherwise the block runs its
    original forward from then on, with the reason in :attr:`skip_reason` (a warning, and
    :func:`fastvit.patching.report`). Weights are never copied into caches: see :class:`FusedLinear`.
    """

    #: kernel name -> count, what this block uses (for the patch report)
    kernels: dict[str, int]
    #: the patch flags this block was built with (re-resolution rebuilds with them); None: every kernel on
    flags: dict[str, bool] | None = None

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.kernels = {}
        self.skip_reason: str | None = None  # set when the block stopped fitting after patching
        self._dirty = False  # structure changed below the block: re-resolve at the next eager call
        self._tracked = False
        self._apply_original = None  # an instance-level _apply already on the module

    # -- structure tracking (module surgery after patching) ------------------------------------------------------
    def fused_linears(self) -> list[FusedLinear]:
        return [v for v in self.__dict__.values() if isinstance(v, FusedLinear)]

    def structure_changed(self) -> None:
        """Called by the registration hooks: re-resolve at the next eager call."""
        self._dirty = True

    def _track(self) -> None:
        for m in self.module.modules():
            _BLOCKS[m] = self
        for fl in self.fused_linears():
            fl.owner = self
            for lin in fl.linears:
                owners = _LINEARS.setdefault(lin, [])
                if fl not in owners:
                    owners.append(fl)
        self._tracked = True

    def _untrack(self) -> None:
        for m in list(_BLOCKS):
            if _BLOCKS.get(m) is self:
                del _BLOCKS[m]
        for fl in self.fused_linears():
            for lin in fl.linears:
                owners = _LINEARS.get(lin)
                if owners is not None and fl in owners:
                    owners.remove(fl)
        self._tracked = False

    def _refresh(self) -> None:
        """Re-resolve the block's structure with the builder: adopt the new fused state, or run eager from now."""
        self._untrack()
        self._dirty = False
        flags = self.flags or dict.fromkeys(FLAGS, True)
        new = self.from_module(self.module, flags)
        if type(new) is type(self):
            keep = ("module", "original", "__signature__", "flags", "_apply_original")
            self.__dict__.update({k: v for k, v in new.__dict__.items() if k not in keep})
            self.skip_reason = None
        else:
            reason = new if isinstance(new, str) else "its structure no longer fits this fused block"
            if reason != self.skip_reason:
                warnings.warn(
                    f"fastvit: {type(self.module).__name__} changed after patching ({reason}); it runs its "
                    "original forward",
                    stacklevel=4,
                )
            self.skip_reason = reason
        self._track()

    def fused_path_ok(self) -> bool:
        """Is the fused path usable for this call as far as the block's structure goes (re-resolving if needed)?"""
        if not self._tracked and not _compiling():
            self._track()
        if self._dirty:
            if _compiling():
                return False  # resolved by the next eager call
            self._refresh()
        return self.skip_reason is None

    @classmethod
    def from_module(cls, module: nn.Module, flags: dict[str, bool]) -> FusedForward | str | None:
        raise NotImplementedError  # pragma: no cover - every fused block class defines its builder

    # -- conversions: .to() / .half() / .cuda() re-fuse the concatenated weights right after ------------------------
    def _apply(self, fn, recurse: bool = True):
        original = self._apply_original
        out = original(fn, recurse) if original is not None else type(self.module)._apply(self.module, fn, recurse)
        for fl in self.fused_linears():
            if not fl._aliased():  # a conversion made new tensors (an in-place one, share_memory_, did not)
                fl.fuse()
        return out

    def _attach(self) -> None:
        self._apply_original = self.module.__dict__.get("_apply")
        self.module.__dict__["_apply"] = self._apply
        self._track()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tracked": False}  # the weak registries are per process: re-track when next used

    def needs_eager(self, args: tuple, kwargs: dict) -> bool:
        return False

    def must_run_eager(self, args: tuple, kwargs: dict) -> bool:
        """Training mode, an empty input (a batch of 0: the original forward returns HF's empty outputs), or
        autograd recording for the block's parameters or its tensor arguments."""
        if self.module.training:
            return True
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is not None and first.numel() == 0:
            return True
        if not torch.is_grad_enabled():
            return False
        tensors = (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return any(p.requires_grad for p in self.module.parameters()) or any(t.requires_grad for t in tensors)

    def __call__(self, *args, **kwargs):
        if not self.fused_path_ok() or self.must_run_eager(args, kwargs) or self.needs_eager(args, kwargs):
            return self.eager(*args, **kwargs)
        return self.fused(*args, **kwargs)

    def fused(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _detach(self) -> None:
        if self.module.__dict__.get("_apply") == self._apply:
            if self._apply_original is not None:
                self.module.__dict__["_apply"] = self._apply_original
            else:
                del self.module.__dict__["_apply"]
        self._untrack()
        for fl in self.fused_linears():
            fl.unalias()

    def __repr__(self) -> str:
        used = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in self.kernels.items()) or "no kernels"
        return f"{type(self).__name__}({type(self.module).__name__}: {used})"


def is_fused(module: nn.Module) -> bool:
    """True if a :class:`FusedForward` is installed on ``module``."""
    return FusedForward.installed(module) is not None


# ------------------------------------------------------------------------------------- weights that cannot go stale


class FusedLinear:
    """Several ``nn.Linear`` layers that read the same input (q|k|v, gate|up) as ONE ``[sum(out), in]`` weight
    whose rows ARE their weights: nothing is cached, so nothing can go stale.

    At construction the weights (and biases) are copied once into one concatenated tensor and each Linear's
    parameter is re-pointed at its slice (``param.data = fused[rows]``): the Parameter objects stay the same
    (optimizers, hooks and ``state_dict()`` keys see no change; the values are equal), and every write into them
    - ``copy_``, ``.data`` writes, ``load_state_dict`` copies, writes under ``torch.inference_mode()`` - lands in
    the fused weight. What *replaces* a parameter's storage is caught where it happens and re-fuses:

    * a new Parameter (``load_state_dict(assign=True)``, ``linear.weight = nn.Parameter(...)``): the
      parameter-registration hook of this module;
    * ``.to()`` / ``.half()`` / ``.cuda()`` of the block or the model (``Module._apply``): the block's fused
      forward re-fuses right after the conversion (:meth:`FusedForward._apply`, shadowing the block's own);
    * anything else (``linear.weight.data = t``, a loader writing ``module._parameters`` directly): the check at
      every eager call (:meth:`get`: each parameter still aliases its slice, by identity and data pointer).

    ``get()`` returns ``(weight, bias or None)``, or None when the layers no longer agree (shape, dtype, device:
    a partial conversion or a load in progress); the caller then runs the original forward. Under
    ``torch.compile`` the pointer check is skipped: the hooks above keep the aliasing.
    """

    def __init__(self, owner: FusedForward, name: str, linears: Sequence[nn.Linear]) -> None:
        self.owner = owner
        self.name = name
        self.linears = tuple(linears)
        self.has_bias = all(lin.bias is not None for lin in self.linears)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._params: tuple[nn.Parameter, ...] = ()
        self.fuse()

    def _current(self, replacing: tuple | None = None) -> list[tuple[nn.Linear, str, torch.Tensor]]:
        """(linear, "weight"/"bias", tensor) for every source, with ``replacing = (linear, name, param)`` applied."""
        names = ("weight", "bias") if self.has_bias else ("weight",)
        out = []
        for n in names:
            for lin in self.linears:
                t = lin._parameters.get(n)
                if replacing is not None and replacing[0] is lin and replacing[1] == n:
                    t = replacing[2]
                out.append((lin, n, t))
        return out

    def fuse(self, replacing: tuple | None = None) -> torch.Tensor | None:
        """Copy the current values into fresh concatenated storage and re-point the parameters at it. Returns the
        parameter that replaces ``replacing[2]`` (a registration in progress), or None. When the sources do not
        agree (shapes, dtype, device), leaves everything as it is and the fused weight unavailable."""
        self.weight = self.bias = None
        self._params, self._ptrs = (), ()
        entries = self._current(replacing)
        tensors = [t for _, _, t in entries]
        if any(not isinstance(t, torch.Tensor) for t in tensors):
            return None
        ws = tensors[: len(self.linears)]
        bs = tensors[len(self.linears) :]
        same = lambda ts: len({(t.dtype, t.device) for t in ts}) == 1  # noqa: E731
        if not same(tensors) or len({w.shape[1:] for w in ws}) != 1 or any(w.dim() != 2 for w in ws):
            return None
        if any(b.dim() != 1 or b.shape[0] != w.shape[0] for w, b in zip(ws, bs, strict=False)):
            return None
        replaced = None
        with torch.no_grad():
            weight = torch.cat([w.detach() for w in ws], 0)  # [sum(out), in]
            bias = torch.cat([b.detach() for b in bs], 0) if bs else None
            params = []
            for fused, group in ((weight, entries[: len(ws)]), (bias, entries[len(ws) :])):
                row = 0
                for lin, n, t in group:
                    view = fused[row : row + t.shape[0]]
                    row += t.shape[0]
                    if replacing is not None and replacing[0] is lin and replacing[1] == n:
                        p = replaced = nn.Parameter(view, requires_grad=t.requires_grad)
                        p.__dict__.update(getattr(t, "__dict__", {}))  # the loader's marks (HF: _is_hf_initialized)
                    else:
                        p = lin._parameters[n]
                        p.data = view
                    params.append(p)
        self.weight, self.bias, self._params = weight, bias, tuple(params)
        self._ptrs = tuple(p.data_ptr() for p in params)  # where each parameter must keep pointing
        return replaced

    def unalias(self) -> None:
        """Give every source parameter its own storage again (unpatch: independent tensors, as before patching)."""
        with torch.no_grad():
            for p in self._params:
                p.data = p.data.clone()
        self.weight = self.bias = None
        self._params, self._ptrs = (), ()

    def _aliased(self) -> bool:
        """Every source parameter is still the one re-pointed at its slice, and still points there (the fused
        tensors are held here, so a pointer into them cannot be reused by another tensor)."""
        if self.weight is None:
            return False
        entries = self._current()
        if len(entries) != len(self._params):
            return False
        for (_, _, t), p, ptr in zip(entries, self._params, self._ptrs, strict=True):
            if t is not p or t.data_ptr() != ptr:
                return False
        return True

    def get(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(fused weight ``[sum(out), in]``, fused bias or None), or None when the layers cannot be fused now."""
        if not _compiling() and not self._aliased():
            self.fuse()
        if self.weight is None:
            return None
        return self.weight, self.bias


# Hooks that keep fused weights aliased and block structures current. The maps are weak: an unpatched or deleted
# model leaves nothing behind. Parameter registration (``setattr``, ``load_state_dict(assign=True)``) on a Linear
# that feeds a fused weight re-fuses with the new tensor; module registration below a fused block (``prune_heads``,
# a LoRA / quantised Linear swapped in) marks the block for re-resolution of its structure at the next call.
_LINEARS: weakref.WeakKeyDictionary[nn.Module, list[FusedLinear]] = weakref.WeakKeyDictionary()
_BLOCKS: weakref.WeakKeyDictionary[nn.Module, FusedForward] = weakref.WeakKeyDictionary()


def _on_parameter(module: nn.Module, name: str, param: torch.Tensor | None):
    replaced = None
    for fl in list(_LINEARS.get(module, ())):
        new = fl.fuse(replacing=(module, name, param if replaced is None else replaced))
        replaced = new if new is not None else replaced
        if fl.weight is None:
            fl.owner.structure_changed()
    return replaced


def _on_module(parent: nn.Module, name: str, submodule: nn.Module | None):
    owner = _BLOCKS.get(parent)
    if owner is not None:
        owner.structure_changed()


_HOOKS = (
    torch.nn.modules.module.register_module_parameter_registration_hook(_on_parameter),
    torch.nn.modules.module.register_module_module_registration_hook(_on_module),
)
