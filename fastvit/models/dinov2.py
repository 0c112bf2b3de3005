"""DINOv2, eager, with HF transformers 4.50's module tree, class names and state-dict keys.

Paper: "DINOv2: Learning Robust Visual Features without Supervision" (Oquab et al., 2023). Checkpoints:
facebook/dinov2-{small,base,large,giant} and the ``-imagenet1k-1-layer`` classifiers on the HF hub.

A pre-norm ViT with layer scale, a SwiGLU FFN in giant (``use_swiglu_ffn``), a mask token for masked patches and
bicubic position-embedding interpolation to any image size. The blocks are the shared ones of ``transformer.py``
under HF's class names; the classifier reads ``[CLS, mean of patch tokens]`` as HF does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from . import build_model
from .common import BackboneConfig, DropPath, PreTrainedModel, architectures, check_pixel_values, init_hf_weights
from .intermediates import IntermediatePlan, IntermediatesMixin, vit_plan
from .outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from .transformer import (
    MLP,
    DenseOutput,
    LayerScale,
    PatchEmbeddings,
    PreNormLayer,
    SwiGLUFFN,
    VisionAttentionBlock,
    VisionSelfAttention,
    ViTEncoder,
    get_head_mask,
    interpolate_pos_encoding,
)

# ----------------------------------------------------------------------------------------------------------- config


@dataclass
class Dinov2Config(BackboneConfig):
    """HF ``Dinov2Config`` fields and 4.50 defaults (dinov2-base)."""

    model_type: ClassVar[str] = "dinov2"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_swiglu_ffn: bool = False
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    use_mask_token: bool = True

    def __post_init__(self) -> None:
        self._align_backbone(self.num_hidden_layers)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in the sequence: CLS (registers add theirs)."""
        return 1


def swiglu_hidden_features(hidden_size: int, mlp_ratio: float) -> int:
    """HF's SwiGLU width: 2/3 of ``hidden_size * mlp_ratio``, rounded up to a multiple of 8."""
    hidden = int(hidden_size * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


# ----------------------------------------------------------------------------------------------------------- blocks


class Dinov2PatchEmbeddings(PatchEmbeddings):
    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config.image_size, config.patch_size, config.num_channels, config.hidden_size)


class Dinov2Embeddings(nn.Module):
    """CLS token, mask token (``bool_masked_pos``), patch embeddings and (interpolated) position embeddings."""

    patch_embeddings_cls: ClassVar[type[nn.Module]] = Dinov2PatchEmbeddings
    interpolate_antialias: ClassVar[bool] = False

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        if config.use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, config.hidden_size))
        self.patch_embeddings = self.patch_embeddings_cls(config)
        num_patches = self.patch_embeddings.num_patches
        self.position_embeddings = nn.Parameter(torch.randn(1, num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.patch_size = config.patch_size
        self.use_mask_token = config.use_mask_token
        self.config = config

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``height x width`` image, bicubic in fp32 exactly as HF 4.50 (which keeps the
        stored ones only for a square image with the configured number of patches)."""
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
            return self.position_embeddings
        patch_h, patch_w = self.patch_embeddings.patch_size
        grid = (height // patch_h, width // patch_w)
        return interpolate_pos_encoding(
            self.position_embeddings, grid, float32=True, antialias=self.interpolate_antialias
        )

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        check_pixel_values(pixel_values, self.patch_embeddings.num_channels)
        batch_size, _, height, width = pixel_values.shape
        target_dtype = self.patch_embeddings.projection.weight.dtype
        embeddings = self.patch_embeddings(pixel_values.to(dtype=target_dtype))  # [B, N, D]
        if bool_masked_pos is not None and self.use_mask_token:
            mask_token = self.mask_token.to(embeddings.dtype).unsqueeze(0)  # [1, 1, D]
            embeddings = torch.where(bool_masked_pos.unsqueeze(-1), mask_token, embeddings)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)  # [B, 1 + N, D]
        embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        return self.dropout(self.add_tokens(embeddings))

    def add_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Tokens without a position embedding, inserted before the dropout: none (registers add theirs)."""
        return embeddings


class Dinov2SelfAttention(VisionSelfAttention):
    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(
            config.hidden_size,
            config.num_attention_heads,
            qkv_bias=config.qkv_bias,
            dropout=config.attention_probs_dropout_prob,
        )


class Dinov2SelfOutput(DenseOutput):
    """``dense`` (+ dropout) only: the residual is added in ``Dinov2Layer`` (pre-norm)."""

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config.hidden_size, config.hidden_size, dropout=config.hidden_dropout_prob)


class Dinov2Attention(VisionAttentionBlock):
    self_attention_cls: ClassVar[type[nn.Module]] = Dinov2SelfAttention
    output_cls: ClassVar[type[nn.Module]] = Dinov2SelfOutput

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(self.self_attention_cls(config), self.output_cls(config), self_name="attention")


class Dinov2LayerScale(LayerScale):
    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config.hidden_size, config.layerscale_value)


class Dinov2DropPath(DropPath):
    pass


class Dinov2MLP(MLP):
    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config.hidden_size, int(config.hidden_size * config.mlp_ratio), config.hidden_act)


class Dinov2SwiGLUFFN(SwiGLUFFN):
    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config.hidden_size, swiglu_hidden_features(config.hidden_size, config.mlp_ratio))


class Dinov2Layer(PreNormLayer):
    """``h += layer_scale1(attention(norm1(h))); h += layer_scale2(mlp(norm2(h)))``."""

    layer_scale_names = ("layer_scale1", "layer_scale2")
    attention_cls: ClassVar[type[nn.Module]] = Dinov2Attention
    layer_scale_cls: ClassVar[type[nn.Module]] = Dinov2LayerScale
    drop_path_cls: ClassVar[type[nn.Module]] = Dinov2DropPath
    mlp_cls: ClassVar[type[nn.Module]] = Dinov2MLP
    swiglu_cls: ClassVar[type[nn.Module]] = Dinov2SwiGLUFFN

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = self.attention_cls(config)
        self.layer_scale1 = self.layer_scale_cls(config)
        self.drop_path = self.drop_path_cls(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = self.swiglu_cls(config) if config.use_swiglu_ffn else self.mlp_cls(config)
        self.layer_scale2 = self.layer_scale_cls(config)


class Dinov2Encoder(ViTEncoder):
    layer_cls: ClassVar[type[nn.Module]] = Dinov2Layer

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__([self.layer_cls(config) for _ in range(config.num_hidden_layers)])
        self.config = config


# ----------------------------------------------------------------------------------------------------------- models


class Dinov2PreTrainedModel(IntermediatesMixin, PreTrainedModel):
    """HF's class attributes for DINOv2 and its random init (the rest: :class:`~.common.PreTrainedModel`), its layers
    for ``forward_intermediates`` and the DINOv2 repository's ``get_intermediate_layers``."""

    config_class = Dinov2Config
    base_model_prefix = "dinov2"

    def init_weights(self) -> None:
        """Random init close to HF's (normal instead of truncated normal): Linear/Conv2d, LayerNorm, embeddings."""
        std = self.config.initializer_range
        self.apply(lambda m: init_hf_weights(m, std))
        for m in self.modules():
            if isinstance(m, Dinov2Embeddings):
                nn.init.trunc_normal_(m.position_embeddings, std=std)
                nn.init.trunc_normal_(m.cls_token, std=std)
                if m.use_mask_token:
                    nn.init.zeros_(m.mask_token)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.lambda1, self.config.layerscale_value)

    def _intermediate_plan(self) -> IntermediatePlan:
        """The layers of this model (or of a classifier's base model); ``norm`` and ``final``: the final layernorm."""
        tower = self if "encoder" in self._modules else getattr(self, self.base_model_prefix)
        patch_h, patch_w = tower.embeddings.patch_embeddings.patch_size

        def embed(pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
            grid = (pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w)
            return tower.embeddings(pixel_values), grid  # [B, prefix + N, D]

        return vit_plan(tower, embed, num_prefix_tokens=self.config.num_prefix_tokens)

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """The DINOv2 repository's API (``DinoVisionTransformer.get_intermediate_layers``), with early exit.

        Args:
            x: pixel values ``[B, C, H, W]``.
            n: the last ``n`` layers, or layer indices (0-based; negative from the end).
            reshape: patch tokens as ``[B, D, H/p, W/p]`` maps, else ``[B, N, D]``.
            return_class_token: pair each output with its CLS token ``[B, D]``.
            norm: apply the final layernorm first.

        Returns:
            A tuple, one entry per layer in layer order: patch tokens (CLS and registers dropped), or
            ``(patch tokens, CLS token)``.
        """
        outputs = self.forward_intermediates(
            x,
            n,
            norm=norm,
            output_fmt="NCHW" if reshape else "NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        if return_class_token:
            return tuple((patches, prefix[:, 0]) for patches, prefix in outputs)
        return tuple(patches for patches, _ in outputs)


class Dinov2Model(Dinov2PreTrainedModel):
    """Features: ``last_hidden_state`` ``[B, 1 + N, D]`` (after the final layernorm), ``pooler_output`` its CLS."""

    embeddings_cls: ClassVar[type[nn.Module]] = Dinov2Embeddings
    encoder_cls: ClassVar[type[nn.Module]] = Dinov2Encoder

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config)
        self.embeddings = self.embeddings_cls(config)
        self.encoder = self.encoder_cls(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def get_input_embeddings(self) -> Dinov2PatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        check_pixel_values(pixel_values, self.config.num_channels)
        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        head_mask = get_head_mask(head_mask, self.config.num_hidden_layers, dtype)
        embedding_output = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        encoder_outputs = self.encoder(
            embedding_output,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = self.layernorm(encoder_outputs.last_hidden_state)  # [B, 1 + N, D]
        pooled_output = sequence_output[:, 0, :]  # [B, D]
        if not return_dict:
            rest = tuple(v for v in (encoder_outputs.hidden_states, encoder_outputs.attentions) if v is not None)
            return (sequence_output, pooled_output) + rest
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


class Dinov2ForImageClassification(Dinov2PreTrainedModel):
    """``Dinov2Model`` + a linear classifier on ``[CLS, mean of patch tokens]`` (``2 * hidden_size`` features).
    A base (``Dinov2Model``) checkpoint has no classifier: loading one with ``task="classification"`` is an error
    naming the missing keys, as for every family (README), not a silently random head."""

    model_cls: ClassVar[type[nn.Module]] = Dinov2Model

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.model_cls(config))
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        if labels is not None:
            raise NotImplementedError("fastvit is inference only: computing a loss from labels is not supported")
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = getattr(self, self.base_model_prefix)(
            pixel_values,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = outputs.last_hidden_state  # [B, prefix + N, D]
        patch_tokens = sequence_output[:, self.config.num_prefix_tokens :]  # [B, N, D]
        linear_input = torch.cat([sequence_output[:, 0], patch_tokens.mean(dim=1)], dim=1)  # [B, 2D]
        logits = self.classifier(linear_input)
        if not return_dict:
            return (logits,) + tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
        return ImageClassifierOutput(logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class Dinov2Backbone(Dinov2PreTrainedModel):
    """Feature maps of the ``out_features`` stages (``stem`` = embeddings, ``stageK`` = output of layer K), each
    layer-normed (``apply_layernorm``) and reshaped to ``[B, D, H/p, W/p]`` (``reshape_hidden_states``) as HF."""

    embeddings_cls: ClassVar[type[nn.Module]] = Dinov2Embeddings
    encoder_cls: ClassVar[type[nn.Module]] = Dinov2Encoder

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config)
        self.stage_names = config.stage_names
        self.num_features = [config.hidden_size for _ in range(config.num_hidden_layers + 1)]
        self.embeddings = self.embeddings_cls(config)
        self.encoder = self.encoder_cls(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @property
    def channels(self) -> list[int]:
        return [self.num_features[i] for i in self.out_indices]

    def get_input_embeddings(self) -> Dinov2PatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        check_pixel_values(pixel_values, self.config.num_channels)
        outputs = self.encoder(
            self.embeddings(pixel_values), output_hidden_states=True, output_attentions=output_attentions
        )
        batch_size, _, height, width = pixel_values.shape
        patch_size = self.config.patch_size
        feature_maps = ()
        for stage, hidden_state in zip(self.stage_names, outputs.hidden_states, strict=True):
            if stage not in self.out_features:
                continue
            if self.config.apply_layernorm:
                hidden_state = self.layernorm(hidden_state)
            if self.config.reshape_hidden_states:
                # [B, prefix + N, D] -> [B, D, H/p, W/p], dropping CLS (and registers); rows from height as HF
                grid = (height // patch_size, width // patch_size)
                patches = hidden_state[:, self.config.num_prefix_tokens :]
                hidden_state = patches.reshape(batch_size, *grid, patches.shape[-1])  # no -1: batch may be 0
                hidden_state = hidden_state.permute(0, 3, 1, 2).contiguous()
            feature_maps += (hidden_state,)
        hidden_states = outputs.hidden_states if output_hidden_states else None
        attentions = outputs.attentions if output_attentions else None
        if not return_dict:
            return (feature_maps,) + tuple(v for v in (hidden_states, attentions) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=attentions)


# --------------------------------------------------------------------------------------------------------- protocol

MODELS: dict[str, dict[str, type[Dinov2PreTrainedModel]]] = {
    "dinov2": {"features": Dinov2Model, "classification": Dinov2ForImageClassification, "backbone": Dinov2Backbone},
}
ARCHITECTURES = architectures(MODELS)
DEFAULT_TASK = "features"
build = build_model
