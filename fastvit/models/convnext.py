"""ConvNeXt and ConvNeXt V2, eager, with HF transformers 4.50's module tree, class names and state-dict keys.

Papers: "A ConvNet for the 2020s" (Liu et al., 2022) and "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders" (Woo et al., 2023). Checkpoints: facebook/convnext-* and facebook/convnextv2-* on the HF hub.

V2 is V1 with one flag (as timm's ``use_grn``): a GRN after the MLP activation instead of the layer scale. The V2
classes (``ConvNextV2Layer``, ``ConvNextV2Model``, ...) are one-line subclasses that set the flag, the part classes
and ``base_model_prefix = "convnextv2"``, so that class names and keys match HF exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from . import build_model
from .common import BackboneConfig, DropPath, PreTrainedModel, architectures, check_pixel_values, get_activation
from .intermediates import IntermediatePlan, IntermediatesMixin
from .outputs import BackboneOutput, BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput

# ----------------------------------------------------------------------------------------------------------- configs


@dataclass
class ConvNextConfig(BackboneConfig):
    """HF ``ConvNextConfig`` fields and 4.50 defaults (convnext-tiny-224). ``use_grn`` is fastvit's V2 flag."""

    model_type: ClassVar[str] = "convnext"
    num_channels: int = 3
    patch_size: int = 4
    num_stages: int = 4
    hidden_sizes: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    depths: list[int] = field(default_factory=lambda: [3, 3, 9, 3])
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    image_size: int = 224
    use_grn: bool = False

    def __post_init__(self) -> None:
        if len(self.hidden_sizes) < self.num_stages or len(self.depths) < self.num_stages:
            raise ValueError(
                f"num_stages={self.num_stages} needs that many hidden_sizes and depths, "
                f"got hidden_sizes={self.hidden_sizes} depths={self.depths}"
            )
        self._align_backbone(len(self.depths))


@dataclass
class ConvNextV2Config(ConvNextConfig):
    """HF ``ConvNextV2Config``: no layer scale, GRN in every block."""

    model_type: ClassVar[str] = "convnextv2"
    layer_scale_init_value: float = 0.0
    use_grn: bool = True


# ----------------------------------------------------------------------------------------------------------- blocks


class ConvNextLayerNorm(nn.Module):
    """LayerNorm over channels: ``channels_last`` for ``[B, H, W, C]``, ``channels_first`` for ``[B, C, H, W]``."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise NotImplementedError(f"Unsupported data format: {data_format}")
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # x: [B, C, H, W]; statistics in (at least) fp32 as HF. float64 stays float64: HF's .float() rounds it to fp32
        # in a sum whose order depends on the memory format, so no fused path could equal it beyond ~1e-7
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = ((x - u) / torch.sqrt(s + self.eps)).to(dtype)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, data_format={self.data_format}"


class ConvNextV2LayerNorm(ConvNextLayerNorm):
    pass


class ConvNextV2GRN(nn.Module):
    """Global Response Normalization over ``[B, H, W, C]``; weight and bias are ``[1, 1, 1, C]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(hidden_states, p=2, dim=(1, 2), keepdim=True)  # [B, 1, 1, C]
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (hidden_states * nx) + self.bias + hidden_states


class ConvNextDropPath(DropPath):
    pass


class ConvNextV2DropPath(DropPath):
    pass


class ConvNextEmbeddings(nn.Module):
    """Patchify stem: ``[B, C_in, H, W] -> [B, C0, H/p, W/p]`` conv, then channels-first LayerNorm."""

    norm_cls: ClassVar[type[nn.Module]] = ConvNextLayerNorm

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_sizes[0], kernel_size=config.patch_size, stride=config.patch_size
        )
        self.layernorm = self.norm_cls(config.hidden_sizes[0], eps=1e-6, data_format="channels_first")
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values, self.num_channels)
        return self.layernorm(self.patch_embeddings(pixel_values))


class ConvNextLayer(nn.Module):
    """Block: 7x7 dwconv -> LN (channels last) -> Linear 4x -> act [-> GRN] -> Linear [-> layer scale] + residual."""

    norm_cls: ClassVar[type[nn.Module]] = ConvNextLayerNorm
    drop_path_cls: ClassVar[type[nn.Module]] = ConvNextDropPath
    use_grn: ClassVar[bool] = False

    def __init__(self, config: ConvNextConfig, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.layernorm = self.norm_cls(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = get_activation(config.hidden_act)
        if self.use_grn:
            self.grn = ConvNextV2GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if not self.use_grn:
            init = config.layer_scale_init_value
            self.layer_scale_parameter = nn.Parameter(init * torch.ones(dim)) if init > 0 else None
        self.drop_path = self.drop_path_cls(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(hidden_states).permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        x = self.act(self.pwconv1(self.layernorm(x)))  # [B, H, W, 4C]
        if self.use_grn:
            x = self.grn(x)
        x = self.pwconv2(x)  # [B, H, W, C]
        if not self.use_grn and self.layer_scale_parameter is not None:
            x = self.layer_scale_parameter * x
        return hidden_states + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNextV2Layer(ConvNextLayer):
    norm_cls = ConvNextV2LayerNorm
    drop_path_cls = ConvNextV2DropPath
    use_grn = True


class ConvNextStage(nn.Module):
    """Optional downsampling (LN + 2x2 stride-2 conv) then ``depth`` blocks."""

    norm_cls: ClassVar[type[nn.Module]] = ConvNextLayerNorm
    layer_cls: ClassVar[type[nn.Module]] = ConvNextLayer

    def __init__(
        self,
        config: ConvNextConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        stride: int = 2,
        depth: int = 2,
        drop_path_rates: list[float] | None = None,
    ) -> None:
        super().__init__()
        if in_channels != out_channels or stride > 1:
            self.downsampling_layer = nn.Sequential(
                self.norm_cls(in_channels, eps=1e-6, data_format="channels_first"),
                nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride),
            )
        else:
            self.downsampling_layer = nn.Identity()
        rates = drop_path_rates or [0.0] * depth
        self.layers = nn.Sequential(*[self.layer_cls(config, dim=out_channels, drop_path=r) for r in rates[:depth]])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsampling_layer(hidden_states))


class ConvNextV2Stage(ConvNextStage):
    norm_cls = ConvNextV2LayerNorm
    layer_cls = ConvNextV2Layer


class ConvNextEncoder(nn.Module):
    stage_cls: ClassVar[type[nn.Module]] = ConvNextStage

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__()
        # linear stochastic-depth schedule over all blocks, computed in Python (works under the meta device)
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.stages = nn.ModuleList()
        prev, start = config.hidden_sizes[0], 0
        for i in range(config.num_stages):
            depth = config.depths[i]
            self.stages.append(
                self.stage_cls(
                    config,
                    in_channels=prev,
                    out_channels=config.hidden_sizes[i],
                    stride=2 if i > 0 else 1,
                    depth=depth,
                    drop_path_rates=rates[start : start + depth],
                )
            )
            prev, start = config.hidden_sizes[i], start + depth

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> BaseModelOutput | tuple:
        all_hidden = (hidden_states,) if output_hidden_states else None
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden)


class ConvNextV2Embeddings(ConvNextEmbeddings):
    norm_cls = ConvNextV2LayerNorm


class ConvNextV2Encoder(ConvNextEncoder):
    stage_cls = ConvNextV2Stage


# ----------------------------------------------------------------------------------------------------------- models


class ConvNextPreTrainedModel(IntermediatesMixin, PreTrainedModel):
    """HF's class attributes for ConvNeXt (the rest, HF's init included: :class:`~.common.PreTrainedModel`), and
    the stages for ``forward_intermediates``."""

    config_class = ConvNextConfig
    base_model_prefix = "convnext"

    def _intermediate_plan(self) -> IntermediatePlan:
        """The stages of this model (or of a classifier's base model); ``norm``: a backbone's stage norms."""
        tower = self if "encoder" in self._modules else getattr(self, self.base_model_prefix)
        norms = tower._modules.get("hidden_states_norms")  # a backbone's, for its out_features

        def norm(i: int, hidden: torch.Tensor) -> torch.Tensor:
            stage = f"stage{i + 1}"
            return norms[stage](hidden) if stage in norms else hidden

        return IntermediatePlan(
            embed=lambda pixel_values: (tower.embeddings(pixel_values), None),
            blocks=tower.encoder.stages,
            run=lambda stage, hidden: stage(hidden),
            final=lambda hidden: hidden,  # HF's last_hidden_state: the last stage's map
            norm=norm if norms is not None else None,
            tokens=False,
        )


class ConvNextModel(ConvNextPreTrainedModel):
    """Features: ``last_hidden_state`` ``[B, C, H/32, W/32]`` and ``pooler_output`` (LN of the mean) ``[B, C]``."""

    embeddings_cls: ClassVar[type[nn.Module]] = ConvNextEmbeddings
    encoder_cls: ClassVar[type[nn.Module]] = ConvNextEncoder

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__(config)
        self.embeddings = self.embeddings_cls(config)
        self.encoder = self.encoder_cls(config)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        _, output_hidden_states, return_dict = self._flags(None, output_hidden_states, return_dict)
        check_pixel_values(pixel_values, self.config.num_channels)
        enc = self.encoder(self.embeddings(pixel_values), output_hidden_states=output_hidden_states, return_dict=True)
        last = enc.last_hidden_state  # [B, C, h, w]
        pooled = self.layernorm(last.mean([-2, -1]))  # [B, C]
        if not return_dict:
            return (last, pooled) + ((enc.hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=enc.hidden_states)


class ConvNextForImageClassification(ConvNextPreTrainedModel):
    """``ConvNextModel`` (under ``base_model_prefix``) + a linear classifier on the pooled features."""

    model_cls: ClassVar[type[nn.Module]] = ConvNextModel

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.model_cls(config))
        width = config.hidden_sizes[-1]
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        if labels is not None:
            raise NotImplementedError("fastvit is inference only: computing a loss from labels is not supported")
        _, output_hidden_states, return_dict = self._flags(None, output_hidden_states, return_dict)
        base = getattr(self, self.base_model_prefix)
        out = base(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(out.pooler_output)  # [B, num_labels]
        if not return_dict:
            return (logits,) + ((out.hidden_states,) if output_hidden_states else ())
        return ImageClassifierOutput(logits=logits, hidden_states=out.hidden_states)


class ConvNextBackbone(ConvNextPreTrainedModel):
    """Feature maps of the stages in ``config.out_features``, each through a channels-first LayerNorm."""

    embeddings_cls: ClassVar[type[nn.Module]] = ConvNextEmbeddings
    encoder_cls: ClassVar[type[nn.Module]] = ConvNextEncoder
    norm_cls: ClassVar[type[nn.Module]] = ConvNextLayerNorm
    # HF initializes these when loading a ConvNextModel/-ForImageClassification checkpoint as a backbone, or one
    # saved with other out_features (whose stage norms it drops)
    _init_if_missing = (r"^hidden_states_norms\.",)
    _drop_if_unexpected = (r"^layernorm\.", r"^hidden_states_norms\.")

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__(config)
        self.stage_names = list(config.stage_names)
        self.out_features, self.out_indices = list(config.out_features), list(config.out_indices)
        self.embeddings = self.embeddings_cls(config)
        self.encoder = self.encoder_cls(config)
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: self.norm_cls(ch, data_format="channels_first")
                for stage, ch in zip(self.out_features, self.channels, strict=True)
            }
        )

    @property
    def channels(self) -> list[int]:
        return [self.num_features[self.stage_names.index(s)] for s in self.out_features]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        _, output_hidden_states, return_dict = self._flags(None, output_hidden_states, return_dict)
        check_pixel_values(pixel_values, self.config.num_channels)
        hidden = self.encoder(self.embeddings(pixel_values), output_hidden_states=True).hidden_states
        feature_maps = tuple(  # HF's layout (contiguous NCHW) also where the fused blocks keep channels_last
            self.hidden_states_norms[stage](h).contiguous()
            for stage, h in zip(self.stage_names, hidden, strict=False)
            if stage in self.out_features
        )
        if not return_dict:
            return (feature_maps,) + ((hidden,) if output_hidden_states else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden if output_hidden_states else None)


class ConvNextV2Model(ConvNextModel):
    config_class = ConvNextV2Config
    base_model_prefix = "convnextv2"
    embeddings_cls = ConvNextV2Embeddings
    encoder_cls = ConvNextV2Encoder


class ConvNextV2ForImageClassification(ConvNextForImageClassification):
    config_class = ConvNextV2Config
    base_model_prefix = "convnextv2"
    model_cls = ConvNextV2Model


class ConvNextV2Backbone(ConvNextBackbone):
    config_class = ConvNextV2Config
    base_model_prefix = "convnextv2"
    embeddings_cls = ConvNextV2Embeddings
    encoder_cls = ConvNextV2Encoder
    norm_cls = ConvNextV2LayerNorm


# --------------------------------------------------------------------------------------------------------- protocol

MODELS: dict[str, dict[str, type[ConvNextPreTrainedModel]]] = {
    "convnext": {
        "features": ConvNextModel,
        "classification": ConvNextForImageClassification,
        "backbone": ConvNextBackbone,
    },
    "convnextv2": {
        "features": ConvNextV2Model,
        "classification": ConvNextV2ForImageClassification,
        "backbone": ConvNextV2Backbone,
    },
}
ARCHITECTURES = architectures(MODELS)
DEFAULT_TASK = "features"
build = build_model
