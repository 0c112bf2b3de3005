"""Fuse a model in place: ``patch(model)`` / ``unpatch(model)``, and ``patch_transformers()`` for HF models.

Works on fastvit's eager models and on HF transformers models of the five families (4.46-4.50 and the 5.x
families: ConvNeXt, ConvNeXt V2, DINOv2, AltCLIP). What lives where:

  * this module: the walk over the module tree, :class:`PatchReport`, the transformers hook, and :data:`BUILDERS`,
    the one table ``block class name (or exact type) -> builder``. It names no attribute of any block;
  * ``fastvit/fused/<block>.py``: each fused block class with its builder ``from_module(module, flags)``, which
    checks the block's structure (the attributes holding the weights, their types and shapes) and returns the
    fused forward, or the reason it does not fit (reported as skipped), or None (left alone, not reported).

Blocks are recognised by class name AND structure, never by file path. Adding a family whose blocks look like
an existing one (a pre-/post-norm transformer layer, a ConvNeXt block) is one row in :data:`BUILDERS`; a new kind
of block is one fused file with a ``from_module`` and its row.

Design: patching does not replace modules. Each recognised block gets its ``forward`` shadowed by an instance
attribute (a :class:`~fastvit.fused.base.FusedForward`, one kind of :class:`~fastvit.fused.base.InstanceForward`,
that calls the kernels with the block's own parameters), so the module tree, ``isinstance`` checks, hooks on the
block, parameters and ``state_dict()`` keys are untouched: a patched model's state dict loads into an unpatched
one and vice versa. No weight is copied: the q, k, v (and split SwiGLU gate, up) parameters become views of one
concatenated tensor made at patch time, so every write to them is a write to the fused weight. ``unpatch``
removes every instance forward (the fused blocks' and the CUDA-graph runner, the other kind) and gives each of
those parameters its own storage again: outputs are bit-exact the original ones again. Calls the fused path
cannot serve (training mode, gradients, ``output_attentions``, ``head_mask``, non-padding masks, caches,
cross-attention) run the original forward of that block for that call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

from .fused.base import FLAGS, FusedForward, InstanceForward, is_fused
from .fused.convnext import FusedChannelsFirstLayerNorm, FusedConvNextLayer, FusedLayerNorm
from .fused.graphs import CUDAGraphForward
from .fused.status import gemm_choices
from .fused.transformer import FusedTransformerLayer

#: module -> fused forward | reason it does not fit | None (leave it alone, unreported); flags: FLAGS -> bool
Builder = Callable[[nn.Module, dict[str, bool]], "FusedForward | str | None"]

#: block class name (HF's and fastvit's eager classes share names) or exact type -> builder. One row per block
#: class; the walk does not descend into a block it has a row for (its inner norms are part of the fused block).
BUILDERS: dict[str | type[nn.Module], Builder] = {
    "ConvNextLayer": FusedConvNextLayer.from_module,
    "ConvNextV2Layer": FusedConvNextLayer.from_module,
    "ConvNextLayerNorm": FusedChannelsFirstLayerNorm.from_module,
    "ConvNextV2LayerNorm": FusedChannelsFirstLayerNorm.from_module,
    "Dinov2Layer": FusedTransformerLayer.from_module,
    "Dinov2WithRegistersLayer": FusedTransformerLayer.from_module,
    "ViTHybridLayer": FusedTransformerLayer.from_module,
    "AltCLIPEncoderLayer": FusedTransformerLayer.from_module,
    "AltRobertaLayer": FusedTransformerLayer.from_module,
    nn.LayerNorm: FusedLayerNorm.from_module,  # standalone norms (stems, final norms); exact type, not subclasses
}


@dataclass
class PatchReport:
    """What ``patch`` did: kernels used per block type, blocks fused, blocks skipped (path, class, reason)."""

    kernels: Counter = field(default_factory=Counter)  # kernel name -> number of call sites
    blocks: Counter = field(default_factory=Counter)  # block class name -> number fused
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    cuda_graphs: bool = False

    @property
    def num_fused(self) -> int:
        return sum(self.blocks.values())

    def __str__(self) -> str:
        lines = [f"fastvit.patch: {self.num_fused} blocks fused"]
        for name, n in sorted(self.blocks.items()):
            lines.append(f"  {name:<28} x{n}")
        if self.kernels:
            lines.append("kernels:")
            for name, n in sorted(self.kernels.items()):
                lines.append(f"  {name:<28} x{n}")
        if self.cuda_graphs:
            lines.append("cuda graphs: on (one graph per input shape/dtype, captured on first use)")
        choices = gemm_choices()  # filled in by the first GPU call of each GEMM shape
        if choices:
            lines.append("fused_linear choices per GEMM shape (fused kernel vs cuBLAS, timed on first use):")
            lines += [f"  {line}" for line in choices]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for path, cls, reason in self.skipped:
                lines.append(f"  {path or '<root>'} ({cls}): {reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PatchReport(blocks={dict(self.blocks)}, kernels={dict(self.kernels)}, skipped={len(self.skipped)})"


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------


def builder_for(module: nn.Module) -> Builder | None:
    """The :data:`BUILDERS` row for ``module``: by class name, else by exact type."""
    return BUILDERS.get(type(module).__name__) or BUILDERS.get(type(module))


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Pre-order walk that does not descend into blocks the patcher handles (their inner norms stay eager, so the
    eager fallback of a fused block is exactly the original)."""
    yield prefix, module
    if builder_for(module) is not None:
        return
    for name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, f"{prefix}.{name}" if prefix else name)


def patch(
    model: nn.Module,
    *,
    attention: bool = True,
    layer_norm: bool = True,
    dwconv: bool = True,
    grn: bool = True,
    swiglu: bool = True,
    fused_linear: bool = True,
    kernels: bool = True,
    cuda_graphs: bool = False,
) -> PatchReport:
    """Fuse ``model`` in place with fastvit's kernels; one flag per kernel. Returns what was replaced and skipped.

    Patching twice re-patches with the new flags; ``kernels=False`` fuses no block (and unfuses fused ones), for
    a CUDA-graph runner over the eager model. Standalone LayerNorms (stems, final norms) are fused too when
    ``layer_norm`` is on; the norms inside fused blocks are part of the blocks. ``cuda_graphs=True`` also installs
    a fresh CUDA-graph runner as the model's forward (:class:`fastvit.fused.graphs.CUDAGraphForward`; it runs the
    model normally on CPU or when capture is impossible); a runner already there stays, its graphs dropped.
    """
    flags = dict(
        attention=attention, layer_norm=layer_norm, dwconv=dwconv, grn=grn, swiglu=swiglu, fused_linear=fused_linear
    )
    # a runner's graphs replay the old blocks and read the buffers their removal frees: lift it off while the
    # blocks change (dropping its graphs), put it back on top afterwards
    runner = CUDAGraphForward.remove(model)
    report = PatchReport()
    for path, m in _walk(model):
        build = builder_for(m)
        if build is None:
            continue
        FusedForward.remove(m)
        if not kernels:
            continue
        fused = build(m, flags)
        if fused is None:
            continue
        if isinstance(fused, str):
            report.skipped.append((path, type(m).__name__, fused))
            continue
        fused.flags = flags  # structure re-resolution after module surgery rebuilds with the same flags
        fused.install()
        report.blocks[type(m).__name__] += 1
        report.kernels.update(fused.kernels)
    if cuda_graphs:
        runner = CUDAGraphForward(model)
        report.cuda_graphs = True
    if runner is not None:
        runner.install()
    return report


def unpatch(model: nn.Module) -> int:
    """Restore every fused block of ``model`` (and a CUDA-graph runner) to the original forward; returns how many
    blocks were restored."""
    restored = 0
    for m in model.modules():
        while (f := InstanceForward.installed(m)) is not None:
            f.uninstall()
            restored += isinstance(f, FusedForward)
    return restored


def patched_blocks(model: nn.Module) -> list[str]:
    """Paths of the fused blocks in ``model``."""
    return [name for name, m in model.named_modules() if is_fused(m)]


def report(model: nn.Module) -> PatchReport:
    """What ``model`` runs now: its fused blocks, and (skipped) those that stopped fitting after patching (module
    surgery such as ``prune_heads`` or a LoRA adapter, re-resolved at their last call) with the reason."""
    out = PatchReport(cuda_graphs=CUDAGraphForward.installed(model) is not None)
    for path, m in model.named_modules():
        fused = FusedForward.installed(m)
        if fused is None:
            continue
        if fused.skip_reason is not None:
            out.skipped.append((path, type(m).__name__, f"changed after patching: {fused.skip_reason}"))
            continue
        out.blocks[type(m).__name__] += 1
        out.kernels.update(fused.kernels)
    return out


_TRANSFORMERS_STATE: dict = {}


def patch_transformers(**flags: bool) -> None:
    """Make HF transformers models of the five families come out fused when created from now on
    (``from_pretrained``, ``AutoModel...``, pipelines, direct construction). Flags as :func:`patch`.

    Wraps ``PreTrainedModel.post_init`` (run at the end of every HF model's ``__init__``): a model holding a block
    named in :data:`BUILDERS` is patched right after construction (other models are left alone); weights loaded
    afterwards are picked up lazily by the fused blocks.
    """
    from transformers import PreTrainedModel

    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise TypeError(f"unknown patch flags {sorted(unknown)}; expected some of {FLAGS}")
    original = _TRANSFORMERS_STATE.get("post_init", PreTrainedModel.post_init)

    def post_init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if any(type(m).__name__ in BUILDERS for m in self.modules()):
            patch(self, **flags)
        return result

    post_init.__wrapped__ = original
    _TRANSFORMERS_STATE["post_init"] = original
    PreTrainedModel.post_init = post_init


def unpatch_transformers() -> None:
    """Undo :func:`patch_transformers` (models already created stay fused; ``unpatch`` them if needed)."""
    if "post_init" not in _TRANSFORMERS_STATE:
        return
    from transformers import PreTrainedModel

    PreTrainedModel.post_init = _TRANSFORMERS_STATE.pop("post_init")
