"""One fused transformer layer for every family (DINOv2, ViT-Hybrid, AltCLIP vision, XLM-R text), fed by a spec.

The spec (:class:`TransformerSpec`, built by the patcher's per-family adapters) says which module holds which
weight; the math lives here once:

    pre-norm  (DINOv2, ViT, CLIP):  x = x + ls1 * O(attn(QKV(LN1(x))));   x = x + ls2 * FFN(LN2(x))
    post-norm (XLM-R text):         x = LN1(x + O(attn(QKV(x))));         x = LN2(x + FFN(x))

QKV is ONE matmul against the concatenated q|k|v weight (:class:`~fastvit.fused.base.FusedLinear`); q, k, v are
strided views of its output fed to the ``attention`` kernel, which writes [B, S, H, D] so the output projection
reads it without a transpose copy. FFN is fc1 -> act -> fc2, or SwiGLU (packed ``weights_in`` or split
gate/up weights concatenated like QKV) -> ``swiglu`` kernel -> fc_out. Layer scale and residual are in-place
updates of fresh tensors. No host syncs, no data-dependent Python: the fused path is CUDA-graph capturable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _ops as K
from .base import FusedForward, FusedLinear, _compiling

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
    """The [B, S] keep-mask (True = attend) of an HF attention mask as a layer receives it, or False if the mask
    is not a pure key-padding mask (the call then runs eager).

    Accepted: None; 4D [B, 1, 1|S, S] additive (0 = keep, large negative = padded, HF 4.x ``(1 - m) * min``)
    or bool (True = keep, transformers 5.x sdpa). A [B, 1, S, S] mask is read on its first query row: HF builds
    encoder padding masks by broadcasting [B, 1, 1, S], so all rows are equal.
    """
    if mask is None:
        return None
    if mask.dim() != 4 or mask.shape[1] != 1:
        return False
    row = mask[:, 0, 0, :]  # [B, S]
    return row if row.dtype == torch.bool else row == 0


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
    ) -> None:
        super().__init__(module)
        self.spec = spec
        self.use_attn, self.use_ln = attention, layer_norm
        self.is_swiglu = spec.act is None
        self.use_swiglu = swiglu and self.is_swiglu
        self.qkv = FusedLinear(self, "qkv", spec.qkv)
        self.fc_in = FusedLinear(self, "fc_in", spec.fc_in) if len(spec.fc_in) > 1 else None
        for name, used in (("layer_norm", layer_norm), ("attention", attention), ("swiglu", self.use_swiglu)):
            if used:
                self.kernels[name] = 2 if name == "layer_norm" else 1

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
            mask = key_padding_mask(mask)
            if mask is False:
                return None, None
        if spec.attention_recorded is not None and not _compiling() and spec.attention_recorded():
            return None, None
        return hidden, mask

    def __call__(self, *args, **kwargs):
        if self.must_run_eager(args, kwargs):
            return self.eager(*args, **kwargs)
        hidden, mask = self._parse(args, kwargs)
        if hidden is None:
            return self.eager(*args, **kwargs)
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
        w, b = self.qkv.get()
        qkv = F.linear(h, w, b)  # [B, S, 3E]
        heads = spec.num_heads
        q, k, v = qkv.view(B, S, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, S, D] views
        if self.use_attn:
            o = K.attention(q, k, v, key_padding_mask=mask, scale=spec.scale, out_layout="bshd")  # [B, S, H, D]
        else:
            o = K.attention_ref(q, k, v, key_padding_mask=mask, scale=spec.scale, out_layout="bshd")
        return F.linear(o.reshape(B, S, -1), spec.out.weight, spec.out.bias)  # [B, S, E]

    def _ffn(self, h: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.fc_in is not None:
            w, b = self.fc_in.get()
            h = F.linear(h, w, b)  # [B, S, 2F] = gate | up
        else:
            h = F.linear(h, spec.fc_in[0].weight, spec.fc_in[0].bias)
        if not self.is_swiglu:
            h = spec.act(h)
        else:
            h = K.swiglu(h) if self.use_swiglu else K.swiglu_ref(h)  # [B, S, F]
        return F.linear(h, spec.fc_out.weight, spec.fc_out.bias)

    def fused(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.spec
        if spec.norm_first:
            a = self._attention(self._ln(spec.ln1, x), mask)
            if spec.ls1 is not None:
                a = a.mul_(spec.ls1.lambda1)
            x = a.add_(x)
            f = self._ffn(self._ln(spec.ln2, x))
            if spec.ls2 is not None:
                f = f.mul_(spec.ls2.lambda1)
            return f.add_(x)
        x = self._ln(spec.ln1, self._attention(x, mask).add_(x))
        return self._ln(spec.ln2, self._ffn(x).add_(x))
