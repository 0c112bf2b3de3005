"""DINOv2 with registers, eager, with HF transformers' module tree, class names and state-dict keys.

Paper: "Vision Transformers Need Registers" (Darcet et al., 2023). Checkpoints:
facebook/dinov2-with-registers-{small,base,large,giant} and the ``-imagenet1k-1-layer`` classifiers on the HF hub.

DINOv2 plus ``num_register_tokens`` learned tokens inserted after CLS (after the position embeddings were added; the
registers get none): the sequence is ``[CLS, registers, patches]``. Every block is DINOv2's (``dinov2.py``), here
under HF's ``Dinov2WithRegisters*`` class names; what differs:
  * position embeddings are interpolated with torch's *antialiased* bicubic (HF's ``antialias=True``);
  * the backbone's feature maps and the classifier's patch mean skip CLS and the registers. The classifier is the
    DINOv2 repository's linear head (the ``-imagenet1k-1-layer`` heads were trained so), as in HF >= 4.52
    (PR #37836); HF 4.50 averages the registers in with the patches (transformers#37817).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from . import build_model, dinov2
from .common import architectures
from .dinov2 import Dinov2Config

# ----------------------------------------------------------------------------------------------------------- config


@dataclass
class Dinov2WithRegistersConfig(Dinov2Config):
    """HF ``Dinov2WithRegistersConfig`` fields and 4.50 defaults (which differ from DINOv2's in ``patch_size``)."""

    model_type: ClassVar[str] = "dinov2_with_registers"
    patch_size: int = 16
    num_register_tokens: int = 4
    use_mask_token: bool = field(default=True, init=False)  # HF always builds the mask token here

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


# ----------------------------------------------------------------------------------------------------------- blocks


class Dinov2WithRegistersPatchEmbeddings(dinov2.Dinov2PatchEmbeddings):
    pass


class Dinov2WithRegistersEmbeddings(dinov2.Dinov2Embeddings):
    """DINOv2's embeddings (antialiased interpolation), then ``register_tokens`` inserted after CLS."""

    patch_embeddings_cls = Dinov2WithRegistersPatchEmbeddings
    interpolate_antialias = True

    def __init__(self, config: Dinov2WithRegistersConfig) -> None:
        super().__init__(config)
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
        # HF's parameter (state-dict) order: cls_token, mask_token, register_tokens, position_embeddings
        self._parameters["position_embeddings"] = self._parameters.pop("position_embeddings")

    def add_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        registers = self.register_tokens.expand(embeddings.shape[0], -1, -1)  # [B, R, D]
        return torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)  # [B, 1 + R + N, D]


class Dinov2WithRegistersSelfAttention(dinov2.Dinov2SelfAttention):
    pass


class Dinov2WithRegistersSelfOutput(dinov2.Dinov2SelfOutput):
    pass


class Dinov2WithRegistersAttention(dinov2.Dinov2Attention):
    self_attention_cls = Dinov2WithRegistersSelfAttention
    output_cls = Dinov2WithRegistersSelfOutput


class Dinov2WithRegistersLayerScale(dinov2.Dinov2LayerScale):
    pass


class Dinov2WithRegistersDropPath(dinov2.Dinov2DropPath):
    pass


class Dinov2WithRegistersMLP(dinov2.Dinov2MLP):
    pass


class Dinov2WithRegistersSwiGLUFFN(dinov2.Dinov2SwiGLUFFN):
    pass


class Dinov2WithRegistersLayer(dinov2.Dinov2Layer):
    attention_cls = Dinov2WithRegistersAttention
    layer_scale_cls = Dinov2WithRegistersLayerScale
    drop_path_cls = Dinov2WithRegistersDropPath
    mlp_cls = Dinov2WithRegistersMLP
    swiglu_cls = Dinov2WithRegistersSwiGLUFFN


class Dinov2WithRegistersEncoder(dinov2.Dinov2Encoder):
    layer_cls = Dinov2WithRegistersLayer


# ----------------------------------------------------------------------------------------------------------- models


class Dinov2WithRegistersPreTrainedModel(dinov2.Dinov2PreTrainedModel):
    """DINOv2's base under HF's names; the register tokens start at zero (HF's init leaves them so)."""

    config_class = Dinov2WithRegistersConfig
    base_model_prefix = "dinov2_with_registers"

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.modules():
            if isinstance(m, Dinov2WithRegistersEmbeddings):
                nn.init.zeros_(m.register_tokens)


class Dinov2WithRegistersModel(Dinov2WithRegistersPreTrainedModel, dinov2.Dinov2Model):
    """Features: ``last_hidden_state`` ``[B, 1 + R + N, D]`` (CLS, registers, patches), ``pooler_output`` its CLS."""

    embeddings_cls = Dinov2WithRegistersEmbeddings
    encoder_cls = Dinov2WithRegistersEncoder


class Dinov2WithRegistersForImageClassification(
    Dinov2WithRegistersPreTrainedModel, dinov2.Dinov2ForImageClassification
):
    """Linear classifier on ``[CLS, mean of the patch tokens]`` (registers excluded, see the module docstring)."""

    model_cls = Dinov2WithRegistersModel


class Dinov2WithRegistersBackbone(Dinov2WithRegistersPreTrainedModel, dinov2.Dinov2Backbone):
    """Feature maps ``[B, D, H/p, W/p]`` of the ``out_features`` stages, without CLS and registers."""

    embeddings_cls = Dinov2WithRegistersEmbeddings
    encoder_cls = Dinov2WithRegistersEncoder

    def __init__(self, config: Dinov2WithRegistersConfig) -> None:
        super().__init__(config)
        self.num_register_tokens = config.num_register_tokens


# --------------------------------------------------------------------------------------------------------- protocol

MODELS: dict[str, dict[str, type[Dinov2WithRegistersPreTrainedModel]]] = {
    "dinov2_with_registers": {
        "features": Dinov2WithRegistersModel,
        "classification": Dinov2WithRegistersForImageClassification,
        "backbone": Dinov2WithRegistersBackbone,
    },
}
ARCHITECTURES = architectures(MODELS)
DEFAULT_TASK = "features"
build = build_model
