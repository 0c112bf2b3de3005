"""One fused transformer layer for every family (DINOv2, ViT-Hybrid, AltCLIP vision, XLM-R text), fed by a spec.

The spec (:class:`TransformerSpec`) says which module holds which weight; :meth:`FusedTransformerLayer.from_module`
builds it from a layer's structure (the attribute layouts of HF 4.x / 5.x DINOv2 and ViT, BERT / XLM-R and CLIP,
see :func:`find_qkv` and :func:`find_ffn`), so a new family of the same shape is one patcher table row. The math
lives here once:

    pre-norm  (DINOv2, ViT, CLIP):  x = x + ls1 * O(attn(QKV(LN1(x))));   x = x + ls2 * FFN(LN2(x))
    post-norm (XLM-R text):         x = LN1(x + O(attn(QKV(x))));         x = LN2(x + FFN(x))

QKV is ONE matmul against the concatenated q|k|v weight (:class:`~fastvit.fused.base.FusedLinear`); q, k, v are
strided views of its output fed to the ``attention`` kernel, which writes [B, S, H, D] so the output projection
reads it without a transpose copy. FFN is fc1 -> act -> fc2, or SwiGLU (packed ``weights_in`` or split
gate/up weights concatenated like QKV) -> ``swiglu`` kernel -> fc_out. Layer scale and residual are in-place
updates of fresh tensors. No host syncs, no data-dependent Python: the fused path is CUDA-graph capturable.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _ops as K
from .base import FusedForward, FusedLinear, _compiling, is_fused
from .matching import first, get, is_layer_norm, is_linear, kernel_activation

_HARMLESS = {"output_hidden_states", "return_dict", "use_cache"}  # call arguments the fused path may ignore


@dataclass
class TransformerSpec:
    """Where one family's layer keeps its weights. Linear/LayerNorm entries are the model's own modules."""

    norm_first: bool  # pre-norm (ViT style) or post-norm (BERT/XLM-R style)
    ln1: nn.Module  # pre: before attention; post: after the attention residual
    ln2: nn.Module  # pre: before the FFN; post: after the FFN residual
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    out: nn.Linear
    num_heads: int
    scale: float
    fc_in: tuple[nn.Linear, ...]  # (fc1,) or (weights_in,) packed SwiGLU, or (gate, up) split SwiGLU
    fc_out: nn.Linear
    act: Callable | None  # None = SwiGLU
    ls1: nn.Module | None = None  # layer scale modules with a ``lambda1`` parameter (DINOv2)
    ls2: nn.Module | None = None
    masks: bool = False  # may the call carry an attention (key padding) mask; else any mask -> eager
    param_names: tuple[str, ...] = ("hidden_states",)  # the original forward's parameters (without self)
    returns_tuple: bool = True  # HF 4.x layers return (hidden,); 5.x layers return the tensor
    attention_recorded: Callable[[], bool] | None = None  # transformers 5.x: are attentions being captured


def key_padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None | bool:
    """The [B, S] row of an attention mask that is the same for every query BY CONSTRUCTION (no value is read),
    or False (the mask is then used whole: :func:`full_mask`). A bool row is a keep-mask (True = attend,
    transformers 5.x sdpa); a float row is an additive bias, every value honoured (HF 4.x ``(1 - m) * min``, or
    any bias): the ``attention`` kernel takes both (``key_padding_mask`` / ``key_bias``).

    Same for every query by construction: [B, 1, 1, S], or [B, 1, S, S] whose query dim is a broadcast (stride 0,
    as ``expand`` makes it). A materialised [B, 1, S, S] mask (transformers 5.x builds its padding masks so) is
    compared with its first row, outside ``torch.compile`` and CUDA-graph capture only (a host sync; once per mask
    tensor, see :func:`_rows_equal`): rows that differ mask different keys per query, and such a mask is never
    reduced to its first row.
    """
    if mask is None:
        return None
    if mask.dim() != 4 or mask.shape[1] != 1 or not (mask.dtype == torch.bool or mask.is_floating_point()):
        return False
    if mask.shape[2] != 1 and mask.stride(2) != 0 and not _rows_equal(mask):
        return False
    return mask[:, 0, 0, :]  # [B, S]


_ROWS_CHECKED: list = [None, -1, False]  # (weakref to the last mask checked, its version, the answer)


def _rows_equal(mask: torch.Tensor) -> bool:
    """Are all query rows of a [B, 1, S, S] mask equal (read in full)? False where a host sync is not allowed.
    Every layer of a model gets the same mask tensor: the answer is kept for that tensor object (a weak
    reference, so a new tensor at the same address is checked again) until it is written to."""
    if _compiling() or (mask.is_cuda and torch.cuda.is_current_stream_capturing()):
        return False
    ref, version, answer = _ROWS_CHECKED
    current = -1 if mask.is_inference() else mask._version
    if ref is not None and ref() is mask and version == current and current >= 0:
        return answer
    answer = bool(torch.equal(mask, mask[:, :, :1, :].expand_as(mask)))
    _ROWS_CHECKED[:] = [weakref.ref(mask), current, answer]
    return answer


def full_mask(mask: torch.Tensor, batch: int, seq: int) -> torch.Tensor | None:
    """``mask`` as SDPA's ``attn_mask`` (bool keep-mask or additive float, broadcastable to [B, H, S, S]), read
    whole, or None if it does not have such a shape (the call then runs eager, which raises its own error)."""
    if mask.dim() == 3:
        mask = mask[:, None]  # [B, S, S] -> [B, 1, S, S]
    if mask.dim() != 4 or mask.shape[-1] != seq or mask.shape[0] not in (1, batch) or mask.shape[2] not in (1, seq):
        return None
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        return None
    return mask


# ------------------------------------------------------------------------------------------- structure matching


def find_qkv(m: nn.Module) -> tuple | str:
    """(container path, container, (q, k, v), output projection) of a layer's self-attention, or why not found.

    Layouts: ``attention.attention.{query,key,value}`` + ``attention.output.dense`` (HF 4.x DINOv2 / ViT),
    ``attention.self.{query,key,value}`` + ``attention.output.dense`` (BERT / XLM-R), ``self_attn.{q,k,v}_proj``
    + ``self_attn.out_proj`` (CLIP), ``attention.{q,k,v}_proj`` + ``attention.o_proj`` (transformers 5.x DINOv2).
    """
    for cpath in ("attention.attention", "attention.self", "self_attn", "attention"):
        container = get(m, cpath)
        if container is None:
            continue
        for names in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
            qkv = tuple(get(container, n) for n in names)
            if not all(is_linear(t) for t in qkv):
                continue
            outs = [get(m, "attention.output.dense"), get(container, "o_proj"), get(container, "out_proj")]
            out = next((o for o in outs if is_linear(o)), None)
            if out is None:
                return "no attention output projection"
            return cpath, container, qkv, out
    return "no q/k/v Linear layers found"


def find_ffn(m: nn.Module) -> tuple | str:
    """(fc_in tuple, fc_out, activation or None for SwiGLU) of a layer's feed-forward part, or why not found."""
    mlp = get(m, "mlp")
    if mlp is not None and is_linear(get(mlp, "fc1")) and is_linear(get(mlp, "fc2")):
        act = get(mlp, "activation") or get(mlp, "activation_fn")
        return ((mlp.fc1,), mlp.fc2, act) if callable(act) else "MLP has no activation"
    if mlp is not None and is_linear(get(mlp, "weights_in")) and is_linear(get(mlp, "weights_out")):
        if mlp.weights_in.out_features != 2 * mlp.weights_out.in_features:
            return "SwiGLU weights_in is not [2F, E]"
        return (mlp.weights_in,), mlp.weights_out, None
    if mlp is not None and all(is_linear(get(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")):
        act = get(mlp, "act_fn")
        if not (isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation")):
            return "gated MLP activation is not SiLU"
        return (mlp.gate_proj, mlp.up_proj), mlp.down_proj, None
    inter, dense = get(m, "intermediate.dense"), get(m, "output.dense")
    if is_linear(inter) and is_linear(dense) and callable(get(m, "intermediate.intermediate_act_fn")):
        return (inter,), dense, m.intermediate.intermediate_act_fn
    return "feed-forward part not recognised"


def returns_tuple(forward: Callable) -> bool:
    """HF 4.x layers return ``(hidden, ...)``; transformers 5.x layers are annotated ``-> torch.Tensor``."""
    ret = inspect.signature(forward).return_annotation
    return not (ret is torch.Tensor or ret in ("torch.Tensor", "Tensor"))


def _attentions_recorded() -> bool:
    """transformers 5.x records attentions with forward hooks on the attention modules, which the fused path
    does not call: True while such a capture is active (the call then runs eager)."""
    from transformers.utils.output_capturing import _active_collector

    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def attention_recorder(m: nn.Module) -> Callable[[], bool] | None:
    """For a transformers 5.x layer: a check "are attentions being captured now"; None otherwise."""
    if not type(m).__module__.startswith("transformers."):
        return None
    try:
        from transformers.utils.output_capturing import _active_collector  # noqa: F401 - transformers 5.x only
    except ImportError:
        return None
    return _attentions_recorded


class FusedTransformerLayer(FusedForward):
    """The fused forward of a transformer layer described by ``spec``.

    Args:
        module: the layer. spec: its :class:`TransformerSpec`.
        attention, layer_norm, swiglu: use these kernels (else the torch equivalents).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: TransformerSpec,
        *,
        attention: bool = True,
        layer_norm: bool = True,
        swiglu: bool = True,
        fused_linear: bool = True,
    ) -> None:
        super().__init__(module)
        self.spec = spec
        self.use_attn, self.use_ln, self.use_fl = attention, layer_norm, fused_linear
        self.is_swiglu = spec.act is None
        self.use_swiglu = swiglu and self.is_swiglu
        self.act = None if self.is_swiglu else kernel_activation(spec.act)  # fc1's epilogue (None: its own op)
        self.qkv = FusedLinear(self, "qkv", spec.qkv)
        self.fc_in = FusedLinear(self, "fc_in", spec.fc_in) if len(spec.fc_in) > 1 else None
        for name, used in (("layer_norm", layer_norm), ("attention", attention), ("swiglu", self.use_swiglu)):
            if used:
                self.kernels[name] = 2 if name == "layer_norm" else 1
        if fused_linear:
            self.kernels["fused_linear"] = 4  # q|k|v, out-proj (+ls1 +residual), fc1 (+act) or gate|up, fc2 (+ls2 +res)
        elif layer_norm:  # no epilogue GEMMs: each residual add goes into the LayerNorm after it
            norms = 1 if spec.norm_first else 2
            self.kernels["add_layer_norm"] = norms
            self.kernels["layer_norm"] = 2 - norms
            if not self.kernels["layer_norm"]:
                del self.kernels["layer_norm"]

    @classmethod
    def from_module(cls, m: nn.Module, flags: dict[str, bool]) -> FusedTransformerLayer | str:
        """The fused forward of a transformer layer (pre- or post-norm), or why its structure does not fit."""
        found = find_qkv(m)
        if isinstance(found, str):
            return found
        _, container, (q, k, v), out = found
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
        post = get(m, "attention.output.LayerNorm")
        if post is not None:  # BERT / XLM-R: post-norm
            norms = (post, get(m, "output.LayerNorm"))
        else:
            candidates = (("norm1", "norm2"), ("layernorm_before", "layernorm_after"), ("layer_norm1", "layer_norm2"))
            norms = first(m, candidates)
        if norms is None or not all(is_layer_norm(n) for n in norms):
            return "LayerNorms not found"
        ffn = find_ffn(m)
        if isinstance(ffn, str):
            return ffn
        fc_in, fc_out, act = ffn
        fl = flags["fused_linear"]
        if not (flags["attention"] or flags["layer_norm"] or fl or (act is None and flags["swiglu"])):
            return "attention, layer_norm, fused_linear and swiglu kernels all disabled"
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
            ls1=get(m, "layer_scale1"),
            ls2=get(m, "layer_scale2"),
            masks=post is not None,  # the text tower carries padding masks; vision towers never do
            param_names=params,
            returns_tuple=returns_tuple(type(m).forward),
            attention_recorded=attention_recorder(m),
        )
        return cls(
            m,
            spec,
            attention=flags["attention"],
            layer_norm=flags["layer_norm"],
            swiglu=flags["swiglu"],
            fused_linear=fl,
        )

    # -- call parsing: which calls the fused path serves -------------------------------------------------------
    def _parse(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None | bool]:
        """(hidden_states, key padding mask) or (None, _) when the call must run eager."""
        spec = self.spec
        bound = dict(zip(spec.param_names, args, strict=False))  # trailing parameters may be omitted
        bound.update(kwargs)
        hidden = bound.pop(spec.param_names[0], None)
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            return None, None
        mask = bound.pop("attention_mask", None)
        for name, value in bound.items():
            if value is not None and value is not False and name not in _HARMLESS:
                return None, None  # head_mask, output_attentions, encoder states, caches, causal masks ...
        if mask is not None:
            if not spec.masks or not isinstance(mask, torch.Tensor):
                return None, None
            padding = key_padding_mask(mask)
            mask = padding if padding is not False else full_mask(mask, hidden.shape[0], hidden.shape[1])
            if mask is None:
                return None, None
        if spec.attention_recorded is not None and not _compiling() and spec.attention_recorded():
            return None, None
        return hidden, mask

    def __call__(self, *args, **kwargs):
        if not self.fused_path_ok() or self.must_run_eager(args, kwargs):
            return self.eager(*args, **kwargs)
        hidden, mask = self._parse(args, kwargs)
        if hidden is None or any(fl.get() is None for fl in self.fused_linears()):
            return self.eager(*args, **kwargs)  # the call, or the weights right now (a load in progress), do not fit
        out = self.fused(hidden, mask)
        return (out,) if self.spec.returns_tuple else out

    # -- the fused math ----------------------------------------------------------------------------------------
    def _ln(self, ln: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_ln:
            return K.layer_norm(x, ln.weight, ln.bias, ln.eps)
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def _attention(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        spec = self.spec
        B, S, E = h.shape
        w, b = self.qkv.weight, self.qkv.bias  # checked by __call__ (FusedLinear.get) for this call
        qkv = self._linear(h, w, b)  # [B, S, 3E]
        heads = spec.num_heads
        D = w.shape[0] // (3 * heads)  # not -1: B may be 0
        q, k, v = qkv.view(B, S, 3, heads, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, S, D] views
        if mask is not None and mask.dim() == 4:  # a full mask, read whole (see full_mask): SDPA honours it
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=spec.scale).transpose(1, 2)
        else:  # no mask, a [B, S] keep-mask (bool) or additive key bias (float): the kernel reads either whole
            bias = mask if mask is not None and mask.is_floating_point() else None
            keep = mask if bias is None else None
            attend = K.attention if self.use_attn else K.attention_ref
            o = attend(q, k, v, key_padding_mask=keep, key_bias=bias, scale=spec.scale, out_layout="bshd")
        return o.reshape(B, S, heads * D)  # [B, S, E]: the output projection is the caller's epilogue GEMM

    def _linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        act: bool = False,
        scale: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``residual + scale * act(x W^T + b)`` (``act``: fc1's activation): one ``fused_linear`` GEMM, or
        ``F.linear`` + in-place torch ops (fused_linear off, or an activation the kernel does not have)."""
        if self.use_fl and not (act and self.act is None):
            activation = self.act if act else "none"
            return K.fused_linear(x, weight, bias, activation=activation, scale=scale, residual=residual)
        y = F.linear(x, weight, bias)
        if act:
            y = self.spec.act(y)
        if scale is not None:
            y = y.mul_(scale)
        return y if residual is None else y.add_(residual)

    def _ffn_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """fc1 + act, or gate|up -> SwiGLU: the [B, S, F] input of fc2."""
        spec = self.spec
        if self.fc_in is not None:
            h = self._linear(h, self.fc_in.weight, self.fc_in.bias)  # [B, S, 2F] = gate | up (checked by __call__)
        else:
            h = self._linear(h, spec.fc_in[0].weight, spec.fc_in[0].bias, act=not self.is_swiglu)
        if self.is_swiglu:
            h = K.swiglu(h) if self.use_swiglu else K.swiglu_ref(h)  # [B, S, F]
        return h

    def _residual_norm(
        self, x: torch.Tensor, o: torch.Tensor, lin: nn.Linear, scale: torch.Tensor | None, ln: nn.Module
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(s, LN(s))`` with ``s = x + scale * lin(o)``: the residual in lin's epilogue GEMM, or (GEMMs not fused)
        in one ``add_layer_norm`` pass with the LayerNorm (post-norm layers need only ``LN(s)``: s is None)."""
        if self.use_fl or not self.use_ln:
            s = self._linear(o, lin.weight, lin.bias, scale=scale, residual=x)
            return s, self._ln(ln, s)
        a = F.linear(o, lin.weight, lin.bias)
        if not self.spec.norm_first:
            return None, K.add_layer_norm(x, a, ln.weight, ln.bias, ln.eps, store_sum=False)
        return K.add_layer_norm(x, a, ln.weight, ln.bias, ln.eps, gamma=scale)

    def fused(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.spec
        ls1 = None if spec.ls1 is None else spec.ls1.lambda1
        ls2 = None if spec.ls2 is None else spec.ls2.lambda1
        out, fc_out = spec.out, spec.fc_out
        if spec.norm_first:  # x + ls1 * O(attn(LN1 x)); then x + ls2 * fc2(ffn(LN2 x))
            x, h = self._residual_norm(x, self._attention(self._ln(spec.ln1, x), mask), out, ls1, spec.ln2)
            return self._linear(self._ffn_hidden(h), fc_out.weight, fc_out.bias, scale=ls2, residual=x)
        _, x = self._residual_norm(x, self._attention(x, mask), out, None, spec.ln1)
        _, x = self._residual_norm(x, self._ffn_hidden(x), fc_out, None, spec.ln2)
        return x
