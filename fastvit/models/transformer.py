"""Shared transformer building blocks for DINOv2, ViT-Hybrid (ViT encoder), AltCLIP vision (CLIP) and AltCLIP text
(XLM-RoBERTa), with HF transformers 4.50's attribute names, so state-dict keys match HF for every flavour.

Each family file subclasses these under HF's class names (``class Dinov2SelfAttention(VisionSelfAttention)``), since
the patcher matches on class names; the math lives here once. Nothing here imports transformers or the kernels.

Conventions
-----------
* ``attention_mask``: an additive float mask broadcastable to ``[B, heads, S_q, S_k]`` (HF's "extended" mask: 0 to
  keep, ``torch.finfo(dtype).min`` to drop, e.g. ``[B, 1, 1, S]`` for padding). ``head_mask``: multiplicative on the
  attention probabilities, per layer ``[1, heads, 1, 1]`` (what :func:`get_head_mask` returns for each layer).
  ``output_attentions=True`` returns the probabilities ``[B, heads, S_q, S_k]``.
* :func:`multi_head_attention` is the one attention core: SDPA when neither probabilities nor a head mask are asked
  for, the explicit softmax path otherwise. Every attention module derives from :class:`MultiHeadAttention` and calls
  it through ``self.attend(...)``. The patcher does not touch these modules: it shadows a whole layer's ``forward``
  (``fastvit.fused.transformer.FusedTransformerLayer``), which reads the layer's weights by attribute name.
* Forward signatures follow HF per flavour, and parents call children the way HF's parents do (the HF positional
  prefix, then keywords), so a fused module written against HF's signature drops in for ours as well.

How to build each flavour (``c`` = the family config; ``eps = c.layer_norm_eps``)
----------------------------------------------------------------------------------
DINOv2 (see dinov2.py): ``norm1, attention{attention{query,key,value}, output{dense}}, layer_scale1{lambda1}, norm2,
mlp{fc1,fc2} | mlp{weights_in,weights_out}, layer_scale2``::

    class Dinov2SelfAttention(VisionSelfAttention): ...        # VisionSelfAttention(hidden, heads, qkv_bias=c.qkv_bias)
    class Dinov2SelfOutput(DenseOutput): ...                   # DenseOutput(hidden, hidden)  (no residual, no norm)
    class Dinov2Attention(VisionAttentionBlock): ...           # VisionAttentionBlock(self_attn, output, "attention")
    class Dinov2Layer(PreNormLayer):                           # names: norm1 / attention / norm2 / mlp (defaults)
        layer_scale_names = ("layer_scale1", "layer_scale2")   # LayerScale(hidden, c.layerscale_value) modules

ViT-Hybrid's ViT layer: ``layernorm_before, attention{attention{query,key,value}, output{dense}}, layernorm_after,
intermediate{dense}, output{dense}``::

    class ViTHybridSelfAttention(VisionSelfAttention): ...     # (hidden, heads, qkv_bias=c.qkv_bias)
    class ViTHybridSelfOutput(DenseOutput): ...                # DenseOutput(hidden, hidden)
    class ViTHybridAttention(VisionAttentionBlock): ...        # (ViTHybridSelfAttention(..), ViTHybridSelfOutput(..))
    class ViTHybridIntermediate(Intermediate): ...             # Intermediate(hidden, c.intermediate_size, c.hidden_act)
    class ViTHybridOutput(DenseOutput): ...                    # DenseOutput(c.intermediate_size, hidden, residual=True)
    class ViTHybridLayer(PreNormLayer):
        norm1_name, norm2_name, mlp_name = "layernorm_before", "layernorm_after", None   # None: intermediate + output
        def __init__(self, c): super().__init__(); self.attention = ...; self.intermediate = ...; self.output = ...;
            self.layernorm_before = nn.LayerNorm(hidden, eps=eps); self.layernorm_after = nn.LayerNorm(hidden, eps=eps)
    class ViTHybridEncoder(ViTEncoder): ...                    # ViTEncoder([ViTHybridLayer(c) for _ in range(L)])

CLIP vision layer (AltCLIP vision tower): ``layer_norm1, self_attn{q_proj,k_proj,v_proj,out_proj}, layer_norm2,
mlp{fc1,fc2}``; quick_gelu comes from ``c.hidden_act``::

    class AltCLIPAttention(ProjSelfAttention): ...             # ProjSelfAttention(hidden, heads)
    class AltCLIPMLP(MLP): ...                                 # MLP(hidden, c.intermediate_size, c.hidden_act)
    class AltCLIPEncoderLayer(CLIPPreNormLayer): ...           # names preset: layer_norm1/self_attn/layer_norm2/mlp
    # encoder: self.layers = ModuleList; loop with run_layers(self.layers, h, lambda layer, h, i: layer(h, mask,
    #          causal_mask, output_attentions=oa), output_attentions=oa, output_hidden_states=ohs)

XLM-R text layer (AltRoberta, post-norm): ``attention{self{query,key,value}, output{dense,LayerNorm}},
intermediate{dense}, output{dense,LayerNorm}``::

    class AltRobertaSelfAttention(SelfAttention): ...  # SelfAttention(hidden, heads)  (qkv bias on)
    class AltRobertaSelfOutput(DenseOutput): ...       # DenseOutput(hidden, hidden, residual=True, layer_norm_eps=eps)
    class AltRobertaAttention(AttentionBlock): ...     # AttentionBlock(self_attn, output, self_name="self")
    class AltRobertaIntermediate(Intermediate): ...    # Intermediate(hidden, c.intermediate_size, c.hidden_act)
    class AltRobertaOutput(DenseOutput): ...           # DenseOutput(inter, hidden, residual=True, layer_norm_eps=eps)
    class AltRobertaLayer(PostNormLayer): ...          # sets self.attention / self.intermediate / self.output
    # encoder loop: run_layers(self.layer, h, lambda layer, h, i: layer(h, ext_mask, head_mask[i],
    #               output_attentions=oa), ...); ext_mask = extended_attention_mask(attention_mask, dtype)

Also here: :func:`get_activation` (HF ``ACT2FN`` names, from ``common``), :class:`DropPath` (identity at inference),
:class:`PatchEmbeddings` (``projection`` conv + input check), :func:`interpolate_pos_encoding` (HF's bicubic
position-embedding resize: DINOv2 passes ``float32=True``; CLIP/ViT keep the parameter dtype; ViT-Hybrid should pass
the grid of the backbone's feature map, ``(feat_h // p, feat_w // p)``), :func:`get_head_mask` (per-layer
``[1, heads, 1, 1]``), :func:`extended_attention_mask` (``[B, S]`` 0/1 -> additive ``[B, 1, 1, S]``).
Dropout as HF (``hidden_dropout_prob`` after the output denses and the embeddings, attention dropout on the
probabilities), in training mode only, drawing the same random numbers in the same order as HF. Each recipe above
was checked against the HF 4.50 layer (identical state-dict keys; outputs and probabilities within 5e-7 in fp32,
with padding and head masks).
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .common import DropPath, check_pixel_values, drop_path, get_activation
from .outputs import BaseModelOutput

# ------------------------------------------------------------------------------------------------------ attention


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    *,
    scale: float | None = None,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax(Q K^T * scale + attention_mask) V`` over ``num_heads`` heads, with HF's head mask and dropout.

    Args:
        query: ``[B, S_q, H*D]``; key, value: ``[B, S_k, H*D]`` (heads are split and merged here).
        num_heads: ``H``.
        scale: defaults to ``D ** -0.5``.
        attention_mask: additive, broadcastable to ``[B, H, S_q, S_k]``.
        head_mask: multiplies the probabilities, broadcastable to ``[B, H, S_q, S_k]`` (HF: ``[1, H, 1, 1]``).
        output_attentions: also return the probabilities.
        dropout_p: dropout on the probabilities (callers pass 0 in eval), before the head mask, as HF; SDPA's
            dropout draws the same random mask as ``F.dropout`` on the probabilities, so the RNG stream is HF's.

    Returns:
        context ``[B, S_q, H*D]`` and the probabilities ``[B, H, S_q, S_k]`` (None unless ``output_attentions``).
    """
    batch, q_len, width = query.shape
    head_dim = width // num_heads
    scale = head_dim**-0.5 if scale is None else scale
    q = query.view(batch, q_len, num_heads, head_dim).transpose(1, 2)  # [B, H, S_q, D]
    k = key.view(batch, key.shape[1], num_heads, head_dim).transpose(1, 2)  # [B, H, S_k, D] (no -1: B may be 0)
    v = value.view(batch, value.shape[1], num_heads, head_dim).transpose(1, 2)
    if head_mask is None and not output_attentions:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p, scale=scale)
        probs = None
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, S_q, S_k]
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout_p:
            probs = F.dropout(probs, dropout_p, training=True)
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, v)  # [B, H, S_q, D]
    context = context.transpose(1, 2).reshape(batch, q_len, width)
    return context, (probs if output_attentions else None)


class MultiHeadAttention(nn.Module):
    """Base of every attention module: head bookkeeping (HF's attribute names) and :meth:`attend`, the one attention
    call of the eager path. ``dropout: on the attention probabilities, in training mode only."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout_prob = dropout
        if hidden_size % num_heads != 0:
            raise ValueError(f"The hidden size {hidden_size} is not a multiple of the number of heads {num_heads}.")
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden_size // num_heads
        self.all_head_size = hidden_size
        self.scaling = self.attention_head_size**-0.5

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`multi_head_attention` with this module's heads and scale; ``[B, S, H*D]`` in and out."""
        return multi_head_attention(
            query,
            key,
            value,
            self.num_attention_heads,
            scale=self.scaling,
            attention_mask=attention_mask,
            head_mask=head_mask,
            output_attentions=output_attentions,
            dropout_p=self.dropout_prob if self.training else 0.0,
        )


class SelfAttention(MultiHeadAttention):
    """``query``/``key``/``value`` projections + attention: HF's BERT/XLM-R ``*SelfAttention`` (signature order
    ``hidden_states, attention_mask, head_mask``; pass ``output_attentions`` by keyword)."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(hidden_size, num_heads, dropout)
        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        # hidden_states: [B, S, E] -> (context [B, S, E],) or (context, probs [B, H, S, S])
        context, probs = self.attend(
            self.query(hidden_states),
            self.key(hidden_states),
            self.value(hidden_states),
            attention_mask,
            head_mask,
            output_attentions,
        )
        return (context, probs) if output_attentions else (context,)


class VisionSelfAttention(SelfAttention):
    """:class:`SelfAttention` with HF ViT/DINOv2's signature ``(hidden_states, head_mask, output_attentions)``."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        return super().forward(hidden_states, attention_mask, head_mask, output_attentions)


class ProjSelfAttention(MultiHeadAttention):
    """``q_proj``/``k_proj``/``v_proj``/``out_proj`` attention: HF's ``CLIPAttention``. Returns ``(output, probs)``
    always, probs None unless ``output_attentions`` (as HF)."""

    def __init__(self, hidden_size: int, num_heads: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(hidden_size, num_heads, dropout)
        self.embed_dim = hidden_size
        self.num_heads = num_heads
        self.head_dim = self.attention_head_size
        self.scale = self.scaling
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # hidden_states: [B, S, E]; both masks additive [B, 1, S, S]
        mask = attention_mask
        if causal_attention_mask is not None:
            mask = causal_attention_mask if mask is None else mask + causal_attention_mask
        context, probs = self.attend(
            self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states), mask, None,
            output_attentions,
        )  # fmt: skip
        return self.out_proj(context), probs


class DenseOutput(nn.Module):
    """``dense`` -> ``dropout`` (+ residual) (+ post-norm ``LayerNorm``): HF's ``*SelfOutput`` and ``*Output`` blocks.

    ViT/DINOv2 self-output: no residual, no norm (the layer adds the residual); ViT ``Output``: ``residual=True``;
    BERT/XLM-R: ``residual=True, layer_norm_eps=eps`` -> ``LayerNorm(dense(x) + input_tensor)``. ``dropout``: HF's
    ``hidden_dropout_prob`` (training mode only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        residual: bool = False,
        layer_norm_eps: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)
        self.residual = residual or layer_norm_eps is not None
        self.LayerNorm = nn.LayerNorm(out_features, eps=layer_norm_eps) if layer_norm_eps is not None else None

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        if self.residual:
            hidden_states = hidden_states + input_tensor
        if self.LayerNorm is not None:
            hidden_states = self.LayerNorm(hidden_states)
        return hidden_states


class AttentionBlock(nn.Module):
    """Self-attention (under ``self_name``: ``"attention"`` for ViT/DINOv2, ``"self"`` for BERT/XLM-R) followed by its
    ``output`` block: HF's ``*Attention``. Signature order ``hidden_states, attention_mask, head_mask``."""

    def __init__(self, self_attention: nn.Module, output: nn.Module, self_name: str = "attention") -> None:
        super().__init__()
        self.self_name = self_name
        self.add_module(self_name, self_attention)
        self.output = output
        self.pruned_heads: set[int] = set()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        inner = self._modules[self.self_name]
        if attention_mask is None:  # HF ViT signatures have no attention_mask
            self_outputs = inner(hidden_states, head_mask=head_mask, output_attentions=output_attentions)
        else:
            self_outputs = inner(hidden_states, attention_mask, head_mask, output_attentions=output_attentions)
        return (self.output(self_outputs[0], hidden_states),) + tuple(self_outputs[1:])


class VisionAttentionBlock(AttentionBlock):
    """:class:`AttentionBlock` with HF ViT/DINOv2's signature ``(hidden_states, head_mask, output_attentions)``."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        return super().forward(hidden_states, None, head_mask, output_attentions)


# ------------------------------------------------------------------------------------------------ feed-forward


class MLP(nn.Module):
    """``fc1 -> activation -> fc2``: HF's ``Dinov2MLP`` and ``CLIPMLP`` (``act_name`` keeps the HF string).
    ``activation_name`` is the activation's attribute: ``"activation"`` (DINOv2), ``"activation_fn"`` (CLIP)."""

    activation_name: ClassVar[str] = "activation"

    def __init__(self, in_features: int, hidden_features: int, act: str = "gelu", out_features: int | None = None):
        super().__init__()
        self.act_name = act
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.add_module(self.activation_name, get_activation(act))
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.fc2(self._modules[self.activation_name](self.fc1(hidden_state)))


class Intermediate(nn.Module):
    """``dense -> intermediate_act_fn``: HF's BERT/ViT ``*Intermediate``."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu") -> None:
        super().__init__()
        self.act_name = act
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = get_activation(act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SwiGLUFFN(nn.Module):
    """``weights_out(silu(x1) * x2)`` with ``x1, x2 = weights_in(x).chunk(2)``: HF's ``Dinov2SwiGLUFFN``.
    ``hidden_features`` is the already-rounded width of each half."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.weights_in = nn.Linear(in_features, 2 * hidden_features)
        self.weights_out = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.weights_in(hidden_state).chunk(2, dim=-1)  # [B, S, hidden] each
        return self.weights_out(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel scale ``x * lambda1``: HF's ``Dinov2LayerScale``."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return hidden_state * self.lambda1


class CLSPooler(nn.Module):
    """``tanh(dense(hidden_states[:, 0]))``: HF's BERT/XLM-R/ViT ``*Pooler``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # [B, S, E] -> [B, E]


# ------------------------------------------------------------------------------------------------------ layers


class PreNormLayer(nn.Module):
    """Pre-norm layer ``h = h + ls1(attn(norm1(h))); h = h + ls2(ffn(norm2(h)))`` (ViT, DINOv2, CLIP).

    Subclasses create the parts under HF's names and set the class attributes naming them. ``mlp_name = None`` means
    BERT/ViT style ``output(intermediate(x), residual)`` (the ``output`` block adds the residual). A ``drop_path``
    child, when present, applies in training only. ``forward`` has HF ViT/DINOv2's signature.
    """

    norm1_name: ClassVar[str] = "norm1"
    attention_name: ClassVar[str] = "attention"
    norm2_name: ClassVar[str] = "norm2"
    mlp_name: ClassVar[str | None] = "mlp"
    layer_scale_names: ClassVar[tuple[str, str] | None] = None

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        return self._modules["drop_path"](x) if self.training and "drop_path" in self._modules else x

    def residual_block(self, hidden_states: torch.Tensor, output_attentions: bool, **attention_kwargs):
        """Run the layer; ``attention_kwargs`` go to the attention module by keyword. Returns HF's output tuple."""
        attention = self._modules[self.attention_name]
        normed = self._modules[self.norm1_name](hidden_states)
        attn_outputs = attention(normed, output_attentions=output_attentions, **attention_kwargs)
        attn = attn_outputs[0]
        if self.layer_scale_names is not None:
            attn = self._modules[self.layer_scale_names[0]](attn)
        hidden_states = self._drop_path(attn) + hidden_states
        normed = self._modules[self.norm2_name](hidden_states)
        if self.mlp_name is None:
            hidden_states = self.output(self.intermediate(normed), hidden_states)
        else:
            ffn = self._modules[self.mlp_name](normed)
            if self.layer_scale_names is not None:
                ffn = self._modules[self.layer_scale_names[1]](ffn)
            hidden_states = self._drop_path(ffn) + hidden_states
        return (hidden_states, attn_outputs[1]) if output_attentions else (hidden_states,)

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        return self.residual_block(hidden_states, output_attentions, head_mask=head_mask)


class CLIPPreNormLayer(PreNormLayer):
    """HF's ``CLIPEncoderLayer``: ``layer_norm1``, ``self_attn`` (:class:`ProjSelfAttention`), ``layer_norm2``,
    ``mlp``; signature ``(hidden_states, attention_mask, causal_attention_mask, output_attentions)``."""

    norm1_name = "layer_norm1"
    attention_name = "self_attn"
    norm2_name = "layer_norm2"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        return self.residual_block(
            hidden_states,
            output_attentions,
            attention_mask=attention_mask,
            causal_attention_mask=causal_attention_mask,
        )


class PostNormLayer(nn.Module):
    """Post-norm BERT/XLM-R layer: ``attention`` (an :class:`AttentionBlock` whose ``output`` has the LayerNorm),
    ``intermediate``, ``output`` (``DenseOutput(residual=True, layer_norm_eps=eps)``). Encoder-only: the decoder
    arguments of HF's signature must be None."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_value: tuple | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        if encoder_hidden_states is not None or past_key_value is not None:
            raise NotImplementedError("fastvit's text encoder is encoder-only: no cross-attention or KV cache")
        attn_outputs = self.attention(hidden_states, attention_mask, head_mask, output_attentions=output_attentions)
        attn = attn_outputs[0]
        layer_output = self.output(self.intermediate(attn), attn)
        return (layer_output,) + tuple(attn_outputs[1:])


# ----------------------------------------------------------------------------------------------------- encoders


def run_layers(
    layers: Sequence[nn.Module],
    hidden_states: torch.Tensor,
    call: Callable[[nn.Module, torch.Tensor, int], tuple],
    *,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    return_dict: bool = True,
) -> BaseModelOutput | tuple:
    """HF's encoder loop: ``call(layer, hidden_states, index)`` returns the layer's output tuple; collects hidden
    states (input of every layer plus the last output) and attention probabilities as HF."""
    all_hidden = () if output_hidden_states else None
    all_attn = () if output_attentions else None
    for i, layer in enumerate(layers):
        if output_hidden_states:
            all_hidden = all_hidden + (hidden_states,)
        outputs = call(layer, hidden_states, i)
        hidden_states = outputs[0]
        if output_attentions:
            all_attn = all_attn + (outputs[1],)
    if output_hidden_states:
        all_hidden = all_hidden + (hidden_states,)
    if not return_dict:
        return tuple(v for v in (hidden_states, all_hidden, all_attn) if v is not None)
    return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attn)


class ViTEncoder(nn.Module):
    """``layer`` ModuleList of :class:`PreNormLayer`: HF's ``ViTEncoder``/``Dinov2Encoder``. ``head_mask`` is indexed
    per layer (as :func:`get_head_mask` returns it) or None."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple:
        def call(layer: nn.Module, h: torch.Tensor, i: int) -> tuple:
            return layer(h, head_mask[i] if head_mask is not None else None, output_attentions)

        return run_layers(
            self.layer,
            hidden_states,
            call,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


# --------------------------------------------------------------------------------------------------- embeddings


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    return tuple(x) if isinstance(x, collections.abc.Iterable) else (x, x)


class PatchEmbeddings(nn.Module):
    """``[B, C, H, W] -> [B, (H/p)*(W/p), hidden]`` with a strided ``projection`` conv: HF's ``ViTPatchEmbeddings``
    and ``Dinov2PatchEmbeddings``. Wrong rank or channel count raises ``ValueError``."""

    def __init__(
        self, image_size: int | Sequence[int], patch_size: int | Sequence[int], num_channels: int, hidden_size: int
    ) -> None:
        super().__init__()
        self.image_size = to_2tuple(image_size)
        self.patch_size = to_2tuple(patch_size)
        self.num_channels = num_channels
        self.num_patches = (self.image_size[1] // self.patch_size[1]) * (self.image_size[0] // self.patch_size[0])
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values, self.num_channels)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)  # [B, h*w, hidden]


def interpolate_pos_encoding(
    position_embeddings: torch.Tensor, grid: tuple[int, int], *, float32: bool = False, antialias: bool = False
) -> torch.Tensor:
    """HF's bicubic resize of ViT position embeddings (``align_corners=False``, output ``size=grid``).

    Args:
        position_embeddings: ``[1, 1 + n*n, D]``, CLS position first, then a square ``n x n`` grid.
        grid: target ``(rows, cols)`` of patches.
        float32: interpolate in fp32 and cast back (DINOv2 does; ViT/CLIP interpolate in the parameter dtype).
        antialias: torch's antialiased bicubic (HF's DINOv2 with registers; a different kernel even when upsampling).

    Returns:
        ``[1, 1 + rows*cols, D]``.
    """
    dim = position_embeddings.shape[-1]
    class_pos = position_embeddings[:, :1]
    patch_pos = position_embeddings[:, 1:]
    side = int(patch_pos.shape[1] ** 0.5)
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1, D, n, n]
    dtype = patch_pos.dtype
    if float32:
        patch_pos = patch_pos.to(torch.float32)
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias)
    patch_pos = patch_pos.to(dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)  # [1, rows*cols, D]
    return torch.cat((class_pos, patch_pos), dim=1)


# --------------------------------------------------------------------------------------------------------- masks


def get_head_mask(
    head_mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype
) -> list[torch.Tensor | None] | torch.Tensor:
    """HF's ``get_head_mask``: ``[heads]`` or ``[layers, heads]`` (1 keep, 0 drop) -> per layer ``[1, heads, 1, 1]``
    (a ``[layers, 1, heads, 1, 1]`` tensor), or ``[None] * num_layers``."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    if head_mask.dim() != 5:
        raise ValueError(f"head_mask must be [heads] or [layers, heads], got shape {list(head_mask.shape)}")
    return head_mask.to(dtype=dtype)


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HF's encoder mask: ``[B, S]`` (1 keep, 0 pad) -> additive ``[B, 1, 1, S]`` (0 or ``finfo(dtype).min``);
    a ``[B, S_q, S_k]`` mask becomes ``[B, 1, S_q, S_k]``."""
    if attention_mask.dim() == 3:
        mask = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"attention_mask must be [batch, seq] or [batch, seq, seq], got {list(attention_mask.shape)}")
    mask = mask.to(dtype=dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


__all__ = [
    "multi_head_attention",
    "MultiHeadAttention",
    "SelfAttention",
    "VisionSelfAttention",
    "ProjSelfAttention",
    "DenseOutput",
    "AttentionBlock",
    "VisionAttentionBlock",
    "MLP",
    "Intermediate",
    "SwiGLUFFN",
    "LayerScale",
    "CLSPooler",
    "PreNormLayer",
    "CLIPPreNormLayer",
    "PostNormLayer",
    "run_layers",
    "ViTEncoder",
    "to_2tuple",
    "PatchEmbeddings",
    "interpolate_pos_encoding",
    "get_head_mask",
    "extended_attention_mask",
    "get_activation",
    "DropPath",
    "drop_path",
]
