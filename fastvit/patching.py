"""Swap eager blocks for fused ones, in place: ``patch(model)`` / ``unpatch(model)``, and ``patch_transformers()``.

Works on fastvit's eager models and on HF transformers models of the five families (4.46-4.50 and the 5.x
families: ConvNeXt, ConvNeXt V2, DINOv2, AltCLIP). Blocks are recognised by class name AND structure (the
attributes holding the weights, their types and shapes), never by file path; a block whose structure does not
fit is skipped with the reason in the report.

Design: patching does not replace modules. Each recognised block gets its ``forward`` shadowed by an instance
attribute (a :class:`~fastvit.fused.base.FusedForward` that calls the kernels with the block's own parameters),
so the module tree, ``isinstance`` checks, hooks on the block, parameters and ``state_dict()`` keys are
untouched: a patched model's state dict loads into an unpatched one and vice versa. The only extra memory is
the concatenated q|k|v (and split SwiGLU gate|up) weight, kept in non-persistent buffers (not in
``state_dict()``) and rebuilt when the original weights change. ``unpatch`` deletes the attribute and those
buffers: outputs are bit-exact the original ones again. Calls the fused path cannot serve (training mode,
gradients, ``output_attentions``, ``head_mask``, non-padding masks, caches, cross-attention) run the original
forward of that block for that call.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .fused.base import FusedForward, install, is_fused, uninstall

FLAGS = ("attention", "layer_norm", "dwconv", "grn", "swiglu")

_CONVNEXT_LAYERS = {"ConvNextLayer", "ConvNextV2Layer"}
_CONVNEXT_NORMS = {"ConvNextLayerNorm", "ConvNextV2LayerNorm"}
_TRANSFORMER_LAYERS = {"Dinov2Layer", "ViTHybridLayer", "AltCLIPEncoderLayer", "AltRobertaLayer"}
# model classes patch_transformers() fuses (by class-name prefix)
_FAMILY_PREFIXES = ("ConvNext", "Dinov2", "ViTHybrid", "AltCLIP", "AltRoberta")


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
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for path, cls, reason in self.skipped:
                lines.append(f"  {path or '<root>'} ({cls}): {reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PatchReport(blocks={dict(self.blocks)}, kernels={dict(self.kernels)}, skipped={len(self.skipped)})"


# ---------------------------------------------------------------------------------------------------------------
# structure adapters: module -> fused forward, or the reason it cannot be fused
# ---------------------------------------------------------------------------------------------------------------


def _get(obj: nn.Module, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _linear(obj) -> bool:
    return isinstance(obj, nn.Linear)


def _layer_norm(obj) -> bool:
    """A last-dim LayerNorm with weight and bias over one dim (nn.LayerNorm or ConvNeXt's channels_last one)."""
    if obj is None or getattr(obj, "data_format", "channels_last") != "channels_last":
        return False
    w, b = getattr(obj, "weight", None), getattr(obj, "bias", None)
    shape = getattr(obj, "normalized_shape", None)
    ok = isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dim() == 1 and b.shape == w.shape
    return ok and shape is not None and len(tuple(shape)) == 1 and hasattr(obj, "eps")


def _convnext_layer(m: nn.Module, flags: dict) -> FusedForward | str:
    from .fused.convnext import FusedConvNextLayer

    dw, ln = getattr(m, "dwconv", None), getattr(m, "layernorm", None)
    if not isinstance(dw, nn.Conv2d) or dw.groups != dw.in_channels or dw.in_channels != dw.out_channels:
        return "dwconv is not a depthwise nn.Conv2d"
    k = dw.kernel_size[0]
    if dw.kernel_size != (k, k) or k % 2 == 0 or dw.stride != (1, 1) or dw.padding != (k // 2, k // 2):
        return f"dwconv is not a stride-1 'same' odd square conv (kernel {dw.kernel_size}, padding {dw.padding})"
    if dw.dilation != (1, 1) or dw.padding_mode != "zeros":
        return "dwconv has dilation or non-zero padding mode"
    if not _layer_norm(ln) or ln.weight.shape[0] != dw.out_channels:
        return "layernorm is not a channels_last LayerNorm over the block's channels"
    p1, p2 = getattr(m, "pwconv1", None), getattr(m, "pwconv2", None)
    if not (_linear(p1) and _linear(p2)) or p1.in_features != dw.out_channels or p2.out_features != dw.out_channels:
        return "pwconv1/pwconv2 are not Linear layers C -> 4C -> C"
    if not callable(getattr(m, "act", None)):
        return "no activation"
    grn = getattr(m, "grn", None)
    if grn is not None and (getattr(grn, "weight", None) is None or grn.weight.numel() != p1.out_features):
        return "grn has no [1, 1, 1, 4C] weight"
    if not (flags["dwconv"] or flags["layer_norm"] or (grn is not None and flags["grn"])):
        return "dwconv, layer_norm and grn kernels all disabled"
    return FusedConvNextLayer(m, dwconv=flags["dwconv"], layer_norm=flags["layer_norm"], grn=flags["grn"])


def _first(m: nn.Module, candidates: tuple[tuple[str, ...], ...]) -> tuple | None:
    """The first tuple of attribute paths that all resolve on ``m`` (as modules), resolved."""
    for paths in candidates:
        found = tuple(_get(m, p) for p in paths)
        if all(f is not None for f in found):
            return found
    return None


def _returns_tuple(forward: Callable) -> bool:
    """HF 4.x layers return ``(hidden, ...)``; transformers 5.x layers are annotated ``-> torch.Tensor``."""
    ret = inspect.signature(forward).return_annotation
    return not (ret is torch.Tensor or ret in ("torch.Tensor", "Tensor"))


def _attentions_recorded() -> bool:
    """transformers 5.x records attentions with forward hooks on the attention modules, which the fused path
    does not call: True while such a capture is active (the call then runs eager)."""
    from transformers.utils.output_capturing import _active_collector

    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def _attention_recorder(m: nn.Module) -> Callable[[], bool] | None:
    if not type(m).__module__.startswith("transformers."):
        return None
    try:
        from transformers.utils.output_capturing import _active_collector  # noqa: F401 - transformers 5.x only
    except ImportError:
        return None
    return _attentions_recorded


def _transformer_layer(m: nn.Module, flags: dict) -> FusedForward | str:
    from .fused.transformer import FusedTransformerLayer, TransformerSpec

    found = _qkv(m)
    if isinstance(found, str):
        return found
    cpath, container, (q, k, v), out = found
    if not (q.in_features == k.in_features == v.in_features and q.out_features == k.out_features == v.out_features):
        return "q/k/v shapes differ"
    if sum(lin.bias is None for lin in (q, k, v)) not in (0, 3):
        return "some of q/k/v have a bias and some do not"
    if getattr(container, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type={container.position_embedding_type!r} (relative positions) not supported"
    if getattr(m, "is_decoder", False) or getattr(m, "crossattention", None) is not None:
        return "decoder / cross-attention layer"
    heads = getattr(container, "num_attention_heads", None) or getattr(container, "num_heads", None)
    if not heads or q.out_features % heads:
        return "number of heads unknown"
    head_dim = q.out_features // heads
    scale = getattr(container, "scaling", None) or getattr(container, "scale", None) or head_dim**-0.5
    post = _get(m, "attention.output.LayerNorm")
    if post is not None:  # BERT / XLM-R: post-norm
        norms = (post, _get(m, "output.LayerNorm"))
    else:
        norms = _first(m, (("norm1", "norm2"), ("layernorm_before", "layernorm_after"), ("layer_norm1", "layer_norm2")))
    if norms is None or not all(_layer_norm(n) for n in norms):
        return "LayerNorms not found"
    ffn = _ffn(m)
    if isinstance(ffn, str):
        return ffn
    fc_in, fc_out, act = ffn
    if not (flags["attention"] or flags["layer_norm"] or (act is None and flags["swiglu"])):
        return "attention, layer_norm and swiglu kernels all disabled"
    params = tuple(inspect.signature(m.forward if not is_fused(m) else type(m).forward).parameters)
    params = tuple(p for p in params if p not in ("self", "args", "kwargs"))
    spec = TransformerSpec(
        norm_first=post is None,
        ln1=norms[0],
        ln2=norms[1],
        qkv=(q, k, v),
        out=out,
        num_heads=heads,
        scale=float(scale),
        fc_in=fc_in,
        fc_out=fc_out,
        act=act,
        ls1=_get(m, "layer_scale1"),
        ls2=_get(m, "layer_scale2"),
        masks=post is not None,  # the text tower carries padding masks; vision towers never do
        param_names=params,
        returns_tuple=_returns_tuple(type(m).forward),
        attention_recorded=_attention_recorder(m),
    )
    return FusedTransformerLayer(
        m, spec, attention=flags["attention"], layer_norm=flags["layer_norm"], swiglu=flags["swiglu"]
    )


def _qkv(m: nn.Module) -> tuple | str:
    """(container path, container, (q, k, v), output projection) of a layer's self-attention.

    Layouts: ``attention.attention.{query,key,value}`` + ``attention.output.dense`` (HF 4.x DINOv2 / ViT),
    ``attention.self.{query,key,value}`` + ``attention.output.dense`` (BERT / XLM-R), ``self_attn.{q,k,v}_proj``
    + ``self_attn.out_proj`` (CLIP), ``attention.{q,k,v}_proj`` + ``attention.o_proj`` (transformers 5.x DINOv2).
    """
    for cpath in ("attention.attention", "attention.self", "self_attn", "attention"):
        container = _get(m, cpath)
        if container is None:
            continue
        for names in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
            qkv = tuple(_get(container, n) for n in names)
            if not all(_linear(t) for t in qkv):
                continue
            outs = [_get(m, "attention.output.dense"), _get(container, "o_proj"), _get(container, "out_proj")]
            out = next((o for o in outs if _linear(o)), None)
            if out is None:
                return "no attention output projection"
            return cpath, container, qkv, out
    return "no q/k/v Linear layers found"


def _ffn(m: nn.Module) -> tuple | str:
    """(fc_in tuple, fc_out, activation or None for SwiGLU) of a layer's feed-forward part."""
    mlp = _get(m, "mlp")
    if mlp is not None and _linear(_get(mlp, "fc1")) and _linear(_get(mlp, "fc2")):
        act = _get(mlp, "activation") or _get(mlp, "activation_fn")
        return ((mlp.fc1,), mlp.fc2, act) if callable(act) else "MLP has no activation"
    if mlp is not None and _linear(_get(mlp, "weights_in")) and _linear(_get(mlp, "weights_out")):
        if mlp.weights_in.out_features != 2 * mlp.weights_out.in_features:
            return "SwiGLU weights_in is not [2F, E]"
        return (mlp.weights_in,), mlp.weights_out, None
    if mlp is not None and all(_linear(_get(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")):
        act = _get(mlp, "act_fn")
        if not (isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation")):
            return "gated MLP activation is not SiLU"
        return (mlp.gate_proj, mlp.up_proj), mlp.down_proj, None
    inter, dense = _get(m, "intermediate.dense"), _get(m, "output.dense")
    if _linear(inter) and _linear(dense) and callable(_get(m, "intermediate.intermediate_act_fn")):
        return (inter,), dense, m.intermediate.intermediate_act_fn
    return "feed-forward part not recognised"


def _channels_first_norm(m: nn.Module, flags: dict) -> FusedForward | str:
    from .fused.convnext import FusedChannelsFirstLayerNorm, FusedLayerNorm

    if not flags["layer_norm"]:
        return "layer_norm kernel disabled"
    fmt = getattr(m, "data_format", None)
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or getattr(m, "bias", None) is None:
        return "no [C] weight and bias"
    if fmt == "channels_first":
        return FusedChannelsFirstLayerNorm(m)
    if fmt == "channels_last" and _layer_norm(m):
        return FusedLayerNorm(m)
    return f"unknown data_format {fmt!r}"


def _plain_layer_norm(m: nn.Module, flags: dict) -> FusedForward | str:
    from .fused.convnext import FusedLayerNorm

    if not flags["layer_norm"]:
        return "layer_norm kernel disabled"
    if not _layer_norm(m):
        return "not a 1-dim LayerNorm with weight and bias"
    return FusedLayerNorm(m)


def _adapter(m: nn.Module) -> Callable[[nn.Module, dict], FusedForward | str] | None:
    name = type(m).__name__
    if name in _CONVNEXT_LAYERS:
        return _convnext_layer
    if name in _TRANSFORMER_LAYERS:
        return _transformer_layer
    if name in _CONVNEXT_NORMS:
        return _channels_first_norm
    if type(m) is nn.LayerNorm:
        return _plain_layer_norm
    return None


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Pre-order walk that does not descend into blocks the patcher handles (their inner norms stay eager, so the
    eager fallback of a fused block is exactly the original)."""
    yield prefix, module
    if _adapter(module) is not None:
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
    cuda_graphs: bool = False,
) -> PatchReport:
    """Fuse ``model`` in place with fastvit's kernels; one flag per kernel. Returns what was replaced and skipped.

    Patching twice re-patches with the new flags. Standalone LayerNorms (stems, final norms) are fused too when
    ``layer_norm`` is on; the norms inside fused blocks are part of the blocks. ``cuda_graphs=True`` also wraps
    the model's forward in a CUDA-graph runner (:func:`fastvit.fused.graphs.enable_cuda_graphs`; it runs the
    model normally on CPU or when capture is impossible).
    """
    from .fused.graphs import CUDAGraphForward

    flags = dict(attention=attention, layer_norm=layer_norm, dwconv=dwconv, grn=grn, swiglu=swiglu)
    runner = model.__dict__.get("forward")
    if isinstance(runner, CUDAGraphForward):  # its graphs replay the old blocks and read the buffers uninstall frees
        runner.reset()
    report = PatchReport()
    for path, m in _walk(model):
        adapter = _adapter(m)
        if adapter is None:
            continue
        uninstall(m)
        fused = adapter(m, flags)
        if isinstance(fused, str):
            if adapter is not _plain_layer_norm or flags["layer_norm"]:
                report.skipped.append((path, type(m).__name__, fused))
            continue
        install(m, fused)
        report.blocks[type(m).__name__] += 1
        report.kernels.update(fused.kernels)
    if cuda_graphs:
        from .fused.graphs import enable_cuda_graphs

        enable_cuda_graphs(model)
        report.cuda_graphs = True
    return report


def unpatch(model: nn.Module) -> int:
    """Restore every fused block of ``model`` (and a CUDA-graph runner) to the original forward; returns how many
    blocks were restored."""
    from .fused.graphs import disable_cuda_graphs

    disable_cuda_graphs(model)
    return sum(uninstall(m) for m in model.modules())


def patched_blocks(model: nn.Module) -> list[str]:
    """Paths of the fused blocks in ``model``."""
    return [name for name, m in model.named_modules() if is_fused(m)]


_TRANSFORMERS_STATE: dict = {}


def patch_transformers(**flags: bool) -> None:
    """Make HF transformers models of the five families come out fused when created from now on
    (``from_pretrained``, ``AutoModel...``, pipelines, direct construction). Flags as :func:`patch`.

    Wraps ``PreTrainedModel.post_init`` (run at the end of every HF model's ``__init__``): the model is patched
    right after construction; weights loaded afterwards are picked up lazily by the fused blocks.
    """
    from transformers import PreTrainedModel

    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise TypeError(f"unknown patch flags {sorted(unknown)}; expected some of {FLAGS}")
    original = _TRANSFORMERS_STATE.get("post_init", PreTrainedModel.post_init)

    def post_init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if type(self).__name__.startswith(_FAMILY_PREFIXES):
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
