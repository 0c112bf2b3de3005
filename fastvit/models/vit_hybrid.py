"""ViT-Hybrid: a ViT encoder on the feature map of a BiT (ResNet v2) backbone, eager, with HF transformers 4.50's
module tree, class names and state-dict keys (``models/deprecated/vit_hybrid``).

Paper: Dosovitskiy et al., "An Image is Worth 16x16 Words" (the hybrid variant, section 3.1). Checkpoint:
``google/vit-hybrid-base-bit-384``. The BiT backbone lives in ``bit.py``; the transformer layers are the shared
pre-norm blocks of ``transformer.py`` under HF's class names.

Position embeddings for other image sizes (``interpolate_pos_encoding=True``) are resized to the grid of the
backbone's feature map (HF 4.50 divides the image size by ``patch_size`` instead, ignoring the backbone's stride of 16,
which gives a grid that does not match the tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from . import build_model
from .bit import BitBackbone, BitConfig
from .common import HFConfig, PreTrainedModel, architectures, check_pixel_values, init_hf_weights
from .intermediates import IntermediatePlan, IntermediatesMixin, vit_plan
from .outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from .transformer import (
    CLSPooler,
    DenseOutput,
    Intermediate,
    PreNormLayer,
    VisionAttentionBlock,
    VisionSelfAttention,
    ViTEncoder,
    get_head_mask,
    interpolate_pos_encoding,
    to_2tuple,
)

# HF 4.50's ViTHybridConfig default backbone (google/vit-hybrid-base-bit-384's BiT-R50 stem, three stages)
_DEFAULT_BACKBONE = {
    "global_padding": "same",
    "layer_type": "bottleneck",
    "depths": [3, 4, 9],
    "out_features": ["stage3"],
    "embedding_dynamic_padding": True,
}


@dataclass
class ViTHybridConfig(HFConfig):
    """HF ``ViTHybridConfig`` fields and 4.50 defaults; ``backbone_config`` is a :class:`BitConfig` (a dict is
    converted; None gives HF's default BiT-R50 stem)."""

    model_type: ClassVar[str] = "vit-hybrid"
    backbone_config: BitConfig | dict[str, Any] | None = None
    backbone: str | None = None
    use_pretrained_backbone: bool = False
    use_timm_backbone: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 224  # HF takes an int or (height, width)
    patch_size: int | list[int] = 1
    num_channels: int = 3
    backbone_featmap_shape: list[int] = field(default_factory=lambda: [1, 1024, 24, 24])
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.use_pretrained_backbone or self.use_timm_backbone or self.backbone is not None:
            raise ValueError(
                "ViT-Hybrid: only an inline BiT backbone_config is supported (no `backbone` checkpoint name, timm or "
                "separately pretrained backbone)"
            )
        if self.backbone_config is None:
            self.backbone_config = dict(_DEFAULT_BACKBONE)
        if isinstance(self.backbone_config, dict):
            model_type = self.backbone_config.get("model_type", "bit")
            if model_type != "bit":
                raise ValueError(f"ViT-Hybrid backbone model_type {model_type!r} is not supported (only 'bit')")
            self.backbone_config = BitConfig.from_dict(self.backbone_config)


# ----------------------------------------------------------------------------------------------------- embeddings


class ViTHybridPatchEmbeddings(nn.Module):
    """``[B, C, H, W]`` -> BiT feature map ``[B, C', h, w]`` -> ``projection`` conv -> tokens ``[B, h*w/p^2, D]``."""

    def __init__(self, config: ViTHybridConfig, feature_size: int | None = None) -> None:
        super().__init__()
        image_size, patch_size = to_2tuple(config.image_size), to_2tuple(config.patch_size)
        self.backbone = BitBackbone(config.backbone_config)
        if feature_size is None:
            feature_size = config.backbone_featmap_shape[-2:]
            feature_dim = config.backbone_featmap_shape[1]
        else:
            feature_size = to_2tuple(feature_size)
            feature_dim = self.backbone.channels[-1]
        self.grid_size = (feature_size[0] // patch_size[0], feature_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(feature_dim, config.hidden_size, kernel_size=patch_size, stride=patch_size)

    def embed(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens ``[B, rows*cols, D]`` and their grid ``(rows, cols)`` (from the backbone's feature map)."""
        check_pixel_values(pixel_values, self.num_channels)
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height, width) != tuple(self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]}); "
                "pass interpolate_pos_encoding=True for other sizes"
            )
        features = self.backbone(pixel_values).feature_maps[-1]  # [B, C', h, w]
        projected = self.projection(features)  # [B, D, rows, cols]
        return projected.flatten(2).transpose(1, 2), tuple(projected.shape[-2:])

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        return self.embed(pixel_values, interpolate_pos_encoding)[0]


class ViTHybridEmbeddings(nn.Module):
    """CLS token + patch tokens + position embeddings (resized to the token grid when asked)."""

    def __init__(self, config: ViTHybridConfig, use_mask_token: bool = False) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.patch_embeddings = ViTHybridPatchEmbeddings(config)
        num_patches = self.patch_embeddings.num_patches
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.patch_size = config.patch_size
        self.config = config

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings ``[1, 1 + rows*cols, D]`` for a token grid ``(rows, cols)`` (bicubic, as HF ViT)."""
        if tuple(grid) == tuple(self.patch_embeddings.grid_size):
            return self.position_embeddings
        return interpolate_pos_encoding(self.position_embeddings, grid)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        return self.embed(pixel_values, bool_masked_pos, interpolate_pos_encoding)[0]

    def embed(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The embeddings ``[B, 1 + N, D]`` and the grid ``(rows, cols)`` of their patch tokens."""
        batch_size = pixel_values.shape[0]
        embeddings, grid = self.patch_embeddings.embed(pixel_values, interpolate_pos_encoding)  # [B, N, D]
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with use_mask_token=True")
            mask = bool_masked_pos.unsqueeze(-1).type_as(embeddings)
            embeddings = embeddings * (1.0 - mask) + self.mask_token.expand_as(embeddings) * mask
        embeddings = torch.cat((self.cls_token.expand(batch_size, -1, -1), embeddings), dim=1)  # [B, 1 + N, D]
        if interpolate_pos_encoding:
            return self.dropout(embeddings + self.interpolate_pos_encoding(embeddings, grid)), grid
        return self.dropout(embeddings + self.position_embeddings), grid


# --------------------------------------------------------------------------------------------------------- encoder


class ViTHybridSelfAttention(VisionSelfAttention):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(
            config.hidden_size,
            config.num_attention_heads,
            qkv_bias=config.qkv_bias,
            dropout=config.attention_probs_dropout_prob,
        )


class ViTHybridSelfOutput(DenseOutput):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(config.hidden_size, config.hidden_size, dropout=config.hidden_dropout_prob)


class ViTHybridAttention(VisionAttentionBlock):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(ViTHybridSelfAttention(config), ViTHybridSelfOutput(config))


class ViTHybridIntermediate(Intermediate):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)


class ViTHybridOutput(DenseOutput):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(
            config.intermediate_size, config.hidden_size, residual=True, dropout=config.hidden_dropout_prob
        )


class ViTHybridLayer(PreNormLayer):
    """Pre-norm ViT block: ``layernorm_before`` -> attention -> residual -> ``layernorm_after`` -> MLP -> residual."""

    norm1_name, norm2_name, mlp_name = "layernorm_before", "layernorm_after", None

    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__()
        self.attention = ViTHybridAttention(config)
        self.intermediate = ViTHybridIntermediate(config)
        self.output = ViTHybridOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class ViTHybridEncoder(ViTEncoder):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__([ViTHybridLayer(config) for _ in range(config.num_hidden_layers)])
        self.config = config


class ViTHybridPooler(CLSPooler):
    """``tanh(dense(CLS))``."""

    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(config.hidden_size)


# ---------------------------------------------------------------------------------------------------------- models


class ViTHybridPreTrainedModel(IntermediatesMixin, PreTrainedModel):
    """HF's class attributes for ViT-Hybrid and its random init (the rest: :class:`~.common.PreTrainedModel`), and
    its ViT layers for ``forward_intermediates``."""

    config_class = ViTHybridConfig
    base_model_prefix = "vit"

    def _intermediate_plan(self, interpolate_pos_encoding: bool = False) -> IntermediatePlan:
        """The ViT layers after the BiT stem (``interpolate_pos_encoding`` as in ``forward``)."""
        tower = self if "encoder" in self._modules else getattr(self, self.base_model_prefix)
        dtype = tower.embeddings.patch_embeddings.projection.weight.dtype

        def embed(pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
            check_pixel_values(pixel_values, self.config.num_channels)
            return tower.embeddings.embed(pixel_values.to(dtype), interpolate_pos_encoding=interpolate_pos_encoding)

        return vit_plan(tower, embed, num_prefix_tokens=1)

    def init_weights(self) -> None:
        """Random init in HF's spirit: normal(0, initializer_range) weights, zero biases, LayerNorm/GroupNorm 1/0."""
        std = self.config.initializer_range
        for module in self.modules():
            init_hf_weights(module, std)
            if isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, ViTHybridEmbeddings):
                nn.init.trunc_normal_(module.position_embeddings, std=std)
                nn.init.trunc_normal_(module.cls_token, std=std)


class ViTHybridModel(ViTHybridPreTrainedModel):
    """Features: ``last_hidden_state`` ``[B, 1 + N, D]`` (final LayerNorm), ``pooler_output`` ``tanh(dense(CLS))``."""

    # a ViTHybridForImageClassification checkpoint has no pooler: HF initializes it, so does fastvit.load
    _init_if_missing = (r"^pooler\.dense\.",)

    def __init__(self, config: ViTHybridConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        self.embeddings = ViTHybridEmbeddings(config, use_mask_token=use_mask_token)
        self.encoder = ViTHybridEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTHybridPooler(config) if add_pooling_layer else None

    def get_input_embeddings(self) -> ViTHybridPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        check_pixel_values(pixel_values, self.config.num_channels)
        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        head_mask = get_head_mask(head_mask, self.config.num_hidden_layers, dtype)
        embedding_output = self.embeddings(
            pixel_values.to(dtype),
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=bool(interpolate_pos_encoding),
        )
        enc = self.encoder(
            embedding_output,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = self.layernorm(enc.last_hidden_state)  # [B, 1 + N, D]
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
        )
        return out if return_dict else out.to_tuple()


class ViTHybridForImageClassification(ViTHybridPreTrainedModel):
    """``ViTHybridModel`` (no pooler, under ``vit``) + a linear classifier on the final CLS token."""

    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTHybridModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        if labels is not None:
            raise NotImplementedError("fastvit is inference only: computing a loss from labels is not supported")
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.vit(
            pixel_values,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])  # [B, num_labels]
        out = ImageClassifierOutput(logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


# ------------------------------------------------------------------------------------------------------ protocol

MODELS: dict[str, dict[str, type[ViTHybridPreTrainedModel]]] = {
    "vit-hybrid": {"features": ViTHybridModel, "classification": ViTHybridForImageClassification},
}
ARCHITECTURES = architectures(MODELS)
DEFAULT_TASK = "features"
build = build_model


__all__ = [
    "ViTHybridConfig",
    "ViTHybridPatchEmbeddings",
    "ViTHybridEmbeddings",
    "ViTHybridSelfAttention",
    "ViTHybridSelfOutput",
    "ViTHybridAttention",
    "ViTHybridIntermediate",
    "ViTHybridOutput",
    "ViTHybridLayer",
    "ViTHybridEncoder",
    "ViTHybridPooler",
    "ViTHybridPreTrainedModel",
    "ViTHybridModel",
    "ViTHybridForImageClassification",
    "MODELS",
    "ARCHITECTURES",
    "DEFAULT_TASK",
    "build",
]
