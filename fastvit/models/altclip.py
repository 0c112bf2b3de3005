"""AltCLIP: a CLIP ViT image tower and an XLM-RoBERTa text tower (with a linear ``transformation`` to the teacher's
width), eager, with HF transformers 4.50's module tree, class names and state-dict keys (``models/altclip``).

Paper: Chen et al., "AltCLIP: Altering the Language Encoder in CLIP for Extended Language Capabilities"
(https://arxiv.org/abs/2211.06679). Checkpoint: ``BAAI/AltCLIP``.

Tokenization is not part of fastvit: pass ``input_ids`` / ``attention_mask`` (e.g. from HF's ``XLMRobertaTokenizer``).
The layers are the shared blocks of ``transformer.py``: CLIP pre-norm layers (quick_gelu MLP) for the image tower,
post-norm XLM-R layers with the extended (additive) attention mask for the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from . import build_model
from .common import HFConfig, PreTrainedModel, architectures, check_pixel_values, output_flags
from .intermediates import IntermediatePlan, IntermediatesMixin
from .outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndProjection,
    CLIPOutput,
    ModelOutput,
)
from .transformer import (
    MLP,
    AttentionBlock,
    CLIPPreNormLayer,
    CLSPooler,
    DenseOutput,
    Intermediate,
    PostNormLayer,
    ProjSelfAttention,
    SelfAttention,
    extended_attention_mask,
    get_head_mask,
    interpolate_pos_encoding,
    run_layers,
)

# ----------------------------------------------------------------------------------------------------------- configs


@dataclass
class AltCLIPTextConfig(HFConfig):
    """HF ``AltCLIPTextConfig`` fields and 4.50 defaults (XLM-R large + ``project_dim``)."""

    model_type: ClassVar[str] = "altclip_text_model"
    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    initializer_factor: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    project_dim: int = 768
    is_decoder: bool = False
    add_cross_attention: bool = False

    def __post_init__(self) -> None:
        if self.position_embedding_type != "absolute":
            raise NotImplementedError(
                f"AltCLIP text position_embedding_type {self.position_embedding_type!r}: only 'absolute' is supported"
            )
        if self.is_decoder or self.add_cross_attention:
            raise NotImplementedError("AltCLIP text model: decoder / cross-attention configs are not supported")


@dataclass
class AltCLIPVisionConfig(HFConfig):
    """HF ``AltCLIPVisionConfig`` fields and 4.50 defaults (CLIP ViT-B/32)."""

    model_type: ClassVar[str] = "altclip_vision_model"
    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0


@dataclass
class AltCLIPConfig(HFConfig):
    """HF ``AltCLIPConfig``: ``text_config``, ``vision_config`` (dicts are converted), projection and logit scale."""

    model_type: ClassVar[str] = "altclip"
    text_config: AltCLIPTextConfig | dict[str, Any] | None = None
    vision_config: AltCLIPVisionConfig | dict[str, Any] | None = None
    projection_dim: int = 768
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.text_config, AltCLIPTextConfig):
            self.text_config = AltCLIPTextConfig.from_dict(self.text_config or {})
        if not isinstance(self.vision_config, AltCLIPVisionConfig):
            self.vision_config = AltCLIPVisionConfig.from_dict(self.vision_config or {})

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AltCLIPConfig:
        """As HF: ``text_config_dict`` / ``vision_config_dict`` (older config.json files), when present, take
        precedence over ``text_config`` / ``vision_config`` (HF overwrites every field with them and their defaults)."""
        config = dict(config)
        for tower in ("text", "vision"):
            legacy = config.pop(f"{tower}_config_dict", None)
            if legacy is not None:
                config[f"{tower}_config"] = legacy
        return super().from_dict(config)


# ------------------------------------------------------------------------------------------------- vision tower


class AltCLIPVisionEmbeddings(nn.Module):
    """``class_embedding`` + ``patch_embedding`` conv (no bias) tokens + learned ``position_embedding``."""

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + N, D]`` for an image of ``height x width`` (HF's bicubic resize)."""
        position_embedding = self.position_embedding.weight.unsqueeze(0)  # [1, 1 + n*n, D]
        if embeddings.shape[1] - 1 == self.num_patches and height == width:
            return position_embedding
        return interpolate_pos_encoding(position_embedding, (height // self.patch_size, width // self.patch_size))

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        check_pixel_values(pixel_values, self.config.num_channels)
        batch_size, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size}*{self.image_size}); "
                "pass interpolate_pos_encoding=True for other sizes"
            )
        patch_embeds = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, D, h, w]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)  # [B, h*w, D]
        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)  # [B, 1 + h*w, D]
        if interpolate_pos_encoding:
            return embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        return embeddings + self.position_embedding.weight.unsqueeze(0)


class AltCLIPAttention(ProjSelfAttention):
    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__(config.hidden_size, config.num_attention_heads, dropout=config.attention_dropout)
        self.config = config
        self.dropout = config.attention_dropout


class AltCLIPMLP(MLP):
    activation_name = "activation_fn"

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.config = config


class AltCLIPEncoderLayer(CLIPPreNormLayer):
    """Pre-norm CLIP block: ``layer_norm1`` -> ``self_attn`` -> residual -> ``layer_norm2`` -> ``mlp`` -> residual."""

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.self_attn = AltCLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = AltCLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)


class AltCLIPEncoder(nn.Module):
    """``layers`` of :class:`AltCLIPEncoderLayer`."""

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([AltCLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        c = self.config
        output_attentions = bool(c.output_attentions if output_attentions is None else output_attentions)
        output_hidden_states = bool(c.output_hidden_states if output_hidden_states is None else output_hidden_states)

        def call(layer: nn.Module, h: torch.Tensor, i: int) -> tuple:
            return layer(h, attention_mask, causal_attention_mask, output_attentions=output_attentions)

        return run_layers(
            self.layers,
            inputs_embeds,
            call,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=c.use_return_dict if return_dict is None else bool(return_dict),
        )


class AltCLIPVisionTransformer(nn.Module):
    """Embeddings -> ``pre_layrnorm`` -> encoder; pooled = ``post_layernorm(CLS)``."""

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = AltCLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = AltCLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = False,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        check_pixel_values(pixel_values, self.config.num_channels)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        hidden_states = self.pre_layrnorm(hidden_states)  # [B, 1 + N, D]
        enc = self.encoder(
            inputs_embeds=hidden_states,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        last_hidden_state = enc.last_hidden_state
        pooled_output = self.post_layernorm(last_hidden_state[:, 0, :])  # [B, D]
        out = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
        )
        return out if return_dict else out.to_tuple()


# --------------------------------------------------------------------------------------------------- text tower


def create_position_ids_from_input_ids(
    input_ids: torch.Tensor, padding_idx: int, past_key_values_length: int = 0
) -> torch.Tensor:
    """RoBERTa positions: ``padding_idx + 1, padding_idx + 2, ...`` over non-pad tokens, ``padding_idx`` on pads."""
    mask = input_ids.ne(padding_idx).int()  # [B, S]
    incremental = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental.long() + padding_idx


class AltRobertaEmbeddings(nn.Module):
    """Word + token-type + absolute position embeddings (positions from the input ids), then ``LayerNorm``."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = config.position_embedding_type
        self.padding_idx = config.pad_token_id
        self.max_position_embeddings = config.max_position_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values_length: int = 0,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # [B, S, E]
        batch, seq = inputs_embeds.shape[:2]
        if position_ids is None:
            if input_ids is not None:
                position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx, past_key_values_length)
            else:
                start = self.padding_idx + 1
                position_ids = torch.arange(start, start + seq, device=inputs_embeds.device).expand(batch, seq)
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch, seq), dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class AltRobertaSelfAttention(SelfAttention):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(config.hidden_size, config.num_attention_heads, dropout=config.attention_probs_dropout_prob)
        self.position_embedding_type = config.position_embedding_type
        self.is_decoder = config.is_decoder


class AltRobertaSelfOutput(DenseOutput):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(
            config.hidden_size,
            config.hidden_size,
            residual=True,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
        )


class AltRobertaAttention(AttentionBlock):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(AltRobertaSelfAttention(config), AltRobertaSelfOutput(config), self_name="self")


class AltRobertaIntermediate(Intermediate):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)


class AltRobertaOutput(DenseOutput):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(
            config.intermediate_size,
            config.hidden_size,
            residual=True,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
        )


class AltRobertaLayer(PostNormLayer):
    """Post-norm XLM-R block: ``LN(x + attn(x))`` then ``LN(h + dense(act(dense(h))))``."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.attention = AltRobertaAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        self.intermediate = AltRobertaIntermediate(config)
        self.output = AltRobertaOutput(config)


class AltRobertaEncoder(nn.Module):
    """``layer`` of :class:`AltRobertaLayer`."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([AltRobertaLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple:
        if encoder_hidden_states is not None or past_key_values is not None:
            raise NotImplementedError("fastvit's text encoder is encoder-only: no cross-attention or KV cache")

        def call(layer: nn.Module, h: torch.Tensor, i: int) -> tuple:
            layer_head_mask = head_mask[i] if head_mask is not None else None
            return layer(h, attention_mask, layer_head_mask, output_attentions=output_attentions)

        return run_layers(
            self.layer,
            hidden_states,
            call,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


class AltRobertaPooler(CLSPooler):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(config.hidden_size)


def _check_text_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, config) -> tuple[int, int]:
    """Validate ``input_ids`` ``[B, S]`` (or ``inputs_embeds`` ``[B, S, E]``); returns ``(B, S)``."""
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
    if input_ids is not None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got shape {list(input_ids.shape)}")
        if input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        shape = tuple(input_ids.shape)
    elif inputs_embeds is not None:
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq_len, {config.hidden_size}], got {list(inputs_embeds.shape)}"
            )
        shape = tuple(inputs_embeds.shape[:2])
    else:
        raise ValueError("You have to specify either input_ids or inputs_embeds")
    longest = config.max_position_embeddings - config.pad_token_id - 1
    if shape[1] > longest:
        raise ValueError(f"sequence length {shape[1]} exceeds the {longest} positions of the text model")
    return shape


# ---------------------------------------------------------------------------------------------------------- models


class AltCLIPPreTrainedModel(IntermediatesMixin, PreTrainedModel):
    """HF's class attributes for AltCLIP, its random init, which tower of a full ``altclip`` config a model reads
    (the rest: :class:`~.common.PreTrainedModel`), and the vision tower's layers for ``forward_intermediates``."""

    config_class = AltCLIPConfig
    base_model_prefix = "altclip"
    main_input_name = "input_ids"
    tower: ClassVar[str | None] = None  # "vision" / "text": the sub-config of a full AltCLIP config this model reads

    @classmethod
    def config_from(cls, config: dict[str, Any]) -> HFConfig:
        """A full ``altclip`` config (its ``tower`` sub-config for a one-tower model), or a saved tower's config
        (``altclip_vision_model`` / ``altclip_text_model``), which only that tower's model reads."""
        model_type = config.get("model_type", "altclip")
        if model_type == "altclip":
            full = AltCLIPConfig.from_dict(config)
            return full if cls.tower is None else getattr(full, f"{cls.tower}_config")
        if model_type != cls.config_class.model_type:
            holds = "vision" if model_type == AltCLIPVisionConfig.model_type else "text"
            raise ValueError(
                f"a {model_type} config.json holds only the {holds} tower: use task={holds!r}, not a {cls.__name__}"
            )
        return cls.config_class.from_dict(config)

    def _intermediate_plan(self, interpolate_pos_encoding: bool = False) -> IntermediatePlan:
        """The vision tower's layers (AltCLIPModel, AltCLIPVisionModel); ``norm``: ``post_layernorm``."""
        tower = self._modules.get("vision_model")
        if tower is None:
            raise ValueError(f"{type(self).__name__} has no vision tower to take intermediate layers from")
        patch = tower.embeddings.patch_size

        def embed(pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
            hidden = tower.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
            return tower.pre_layrnorm(hidden), grid  # [B, 1 + N, D]: the encoder's input (HF's hidden_states[0])

        return IntermediatePlan(
            embed=embed,
            blocks=tower.encoder.layers,
            run=lambda layer, hidden: layer(hidden, None, None)[0],
            final=lambda hidden: hidden,  # CLIP's last_hidden_state is the encoder output (not normed)
            norm=lambda i, hidden: tower.post_layernorm(hidden),
            num_prefix_tokens=1,
        )

    def init_weights(self) -> None:
        """A simple random init (normal(0, 0.02) weights, zero biases, LayerNorm 1/0) for ``pretrained=False``."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, AltCLIPVisionEmbeddings):
                nn.init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
        if isinstance(self, AltCLIPModel):
            nn.init.constant_(self.logit_scale, self.config.logit_scale_init_value)


class AltRobertaModel(AltCLIPPreTrainedModel):
    """XLM-R encoder: embeddings, post-norm layers under the extended attention mask, optional CLS pooler."""

    config_class = AltCLIPTextConfig

    def __init__(self, config: AltCLIPTextConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = AltRobertaEmbeddings(config)
        self.encoder = AltRobertaEncoder(config)
        self.pooler = AltRobertaPooler(config) if add_pooling_layer else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        batch, seq = _check_text_inputs(input_ids, inputs_embeds, self.config)
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        dtype = self.embeddings.word_embeddings.weight.dtype
        if attention_mask is None:
            attention_mask = torch.ones((batch, seq), device=device)
        elif attention_mask.shape[-1] != seq or attention_mask.shape[0] != batch:
            raise ValueError(
                f"attention_mask shape {list(attention_mask.shape)} does not fit input shape {[batch, seq]}"
            )
        ext_mask = extended_attention_mask(attention_mask, dtype)  # [B, 1, 1, S] additive
        head_mask = get_head_mask(head_mask, self.config.num_hidden_layers, dtype)
        embedding_output = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        enc = self.encoder(
            embedding_output,
            attention_mask=ext_mask,
            head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = enc.last_hidden_state  # [B, S, E]
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
        )
        return out if return_dict else out.to_tuple()


class AltCLIPTextModel(AltCLIPPreTrainedModel):
    """Text features: ``transformation(pre_LN(roberta(x)))``; ``last_hidden_state`` ``[B, S, project_dim]``,
    ``pooler_output`` its first token ``[B, project_dim]``."""

    config_class = AltCLIPTextConfig
    tower = "text"

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__(config)
        self.roberta = AltRobertaModel(config, add_pooling_layer=False)
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)
        self.pre_LN = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.roberta.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPoolingAndProjection | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.roberta(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        projection_state = self.transformation(self.pre_LN(outputs.last_hidden_state))  # [B, S, project_dim]
        out = BaseModelOutputWithPoolingAndProjection(
            last_hidden_state=projection_state,
            pooler_output=projection_state[:, 0],
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return out if return_dict else out.to_tuple()


class AltCLIPVisionModel(AltCLIPPreTrainedModel):
    """The image tower alone (``vision_model``): ``last_hidden_state`` ``[B, 1 + N, D]``, ``pooler_output``."""

    config_class = AltCLIPVisionConfig
    main_input_name = "pixel_values"
    tower = "vision"
    # an AltCLIPModel checkpoint loaded as the vision tower: the text tower and projections are not used
    _drop_if_unexpected = (r"^text_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$")

    def __init__(self, config: AltCLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = AltCLIPVisionTransformer(config)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        return self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=return_dict,
        )


class AltCLIPModel(AltCLIPPreTrainedModel):
    """Both towers, ``visual_projection`` / ``text_projection`` (no bias) and ``logit_scale``."""

    config_class = AltCLIPConfig

    def __init__(self, config: AltCLIPConfig) -> None:
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.project_dim
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = AltCLIPTextModel(text_config)
        self.vision_model = AltCLIPVisionTransformer(vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """``text_projection(pooled text features)``: ``[B, projection_dim]`` (not normalized)."""
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return self.text_projection(text_outputs.pooler_output)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """``visual_projection(post_layernorm(CLS))``: ``[B, projection_dim]`` (not normalized)."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        return self.visual_projection(vision_outputs.pooler_output)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> CLIPOutput | tuple:
        if return_loss:
            raise NotImplementedError("fastvit is inference only: return_loss=True is not supported")
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        image_embeds = self.visual_projection(vision_outputs.pooler_output)  # [B_img, P]
        text_embeds = self.text_projection(text_outputs.pooler_output)  # [B_txt, P]
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()  # [B_txt, B_img]
        out = CLIPOutput(
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        if return_dict:
            return out
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in out.to_tuple())


# ------------------------------------------------------------------------------------------------------ protocol

_TASKS: dict[str, type[AltCLIPPreTrainedModel]] = {
    "features": AltCLIPModel,
    "vision": AltCLIPVisionModel,
    "text": AltCLIPTextModel,
}
# a saved tower's config names its tower's task; the other tasks are refused by config_from, naming the tower
MODELS = {model_type: _TASKS for model_type in ("altclip", "altclip_vision_model", "altclip_text_model")}
ARCHITECTURES = architectures(MODELS)
DEFAULT_TASK = "features"
build = build_model


__all__ = [
    "AltCLIPTextConfig",
    "AltCLIPVisionConfig",
    "AltCLIPConfig",
    "AltCLIPVisionEmbeddings",
    "AltCLIPAttention",
    "AltCLIPMLP",
    "AltCLIPEncoderLayer",
    "AltCLIPEncoder",
    "AltCLIPVisionTransformer",
    "create_position_ids_from_input_ids",
    "AltRobertaEmbeddings",
    "AltRobertaSelfAttention",
    "AltRobertaSelfOutput",
    "AltRobertaAttention",
    "AltRobertaIntermediate",
    "AltRobertaOutput",
    "AltRobertaLayer",
    "AltRobertaEncoder",
    "AltRobertaPooler",
    "AltCLIPPreTrainedModel",
    "AltRobertaModel",
    "AltCLIPTextModel",
    "AltCLIPVisionModel",
    "AltCLIPModel",
    "MODELS",
    "ARCHITECTURES",
    "DEFAULT_TASK",
    "build",
]
