"""BiT (Big Transfer, ResNet v2 with weight-standardized convolutions and GroupNorm), as HF transformers 4.50's
``models/bit/modeling_bit.py``: the CNN backbone of ViT-Hybrid (``google/vit-hybrid-base-bit-384``).

Paper: Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", https://arxiv.org/abs/1912.11370.
Module tree and state-dict keys are HF's (``bit.embedder.convolution.weight``, ``bit.encoder.stages.0.layers.0.conv1
.weight``, ...). Only the backbone is a fastvit task (through ViT-Hybrid); ``BitModel`` is its body. Inference only:
stochastic depth (drop path) is an identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import BackboneConfig, DropPath, check_pixel_values, get_activation
from .outputs import BackboneOutput, BaseModelOutputWithPooling
from .transformer import to_2tuple

__all__ = [
    "BitConfig",
    "WeightStandardizedConv2d",
    "BitGroupNormActivation",
    "DynamicPad2d",
    "BitMaxPool2d",
    "BitEmbeddings",
    "BitPreActivationBottleneckLayer",
    "BitBottleneckLayer",
    "BitDownsampleConv",
    "BitStage",
    "BitEncoder",
    "BitModel",
    "BitBackbone",
    "BitDropPath",
]


@dataclass
class BitConfig(BackboneConfig):
    """HF ``BitConfig`` fields and 4.50 defaults (``google/bit-50``)."""

    model_type: ClassVar[str] = "bit"
    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "preactivation"
    hidden_act: str = "relu"
    global_padding: str | None = None
    num_groups: int = 32
    drop_path_rate: float = 0.0
    embedding_dynamic_padding: bool = False
    output_stride: int = 32
    width_factor: int = 1

    def __post_init__(self) -> None:
        if self.layer_type not in ("preactivation", "bottleneck"):
            raise ValueError(f"layer_type={self.layer_type!r} is not one of preactivation, bottleneck")
        if self.global_padding is not None:
            if self.global_padding.upper() not in ("SAME", "VALID"):
                raise ValueError(f"padding strategy {self.global_padding!r} not supported (SAME, VALID or None)")
            self.global_padding = self.global_padding.upper()
        self._align_backbone(len(self.depths))


def get_padding_value(padding: str | None, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, bool]:
    """Static padding for a conv/pool, or (0, True) when TF "SAME" padding must be computed per input size."""
    if padding is None:
        return ((stride - 1) + dilation * (kernel_size - 1)) // 2, False
    padding = padding.lower()
    if padding == "same":
        if stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            return ((stride - 1) + dilation * (kernel_size - 1)) // 2, False
        return 0, True
    if padding == "valid":
        return 0, False
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2, False


class DynamicPad2d(nn.Module):
    """TF "SAME" padding computed from the input size: ``pad = max((ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)``,
    split with the extra pixel on the bottom/right."""

    def __init__(self, kernel_size, stride, dilation, value: float = 0.0):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation)
        self.value = value

    @staticmethod
    def compute_padding(x: int, kernel_size: int, stride: int, dilation: int) -> int:
        return max((math.ceil(x / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W]
        height, width = x.shape[-2:]
        pad_h = self.compute_padding(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = self.compute_padding(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=self.value)
        return x


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized per output channel (zero mean, unit biased variance, ``eps``) at every
    call, with TF-compatible "SAME" padding (https://arxiv.org/abs/1903.10520)."""

    def __init__(
        self,
        in_channel: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: str | None = "SAME",
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-6,
    ):
        padding, is_dynamic = get_padding_value(padding, kernel_size, stride=stride, dilation=dilation)
        super().__init__(
            in_channel,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.pad = DynamicPad2d(kernel_size, stride, dilation) if is_dynamic else None
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The weight standardized exactly as HF does it (batch_norm over each output channel's fan-in)."""
        w = self.weight.reshape(1, self.out_channels, -1)
        return F.batch_norm(w, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class BitGroupNormActivation(nn.GroupNorm):
    """GroupNorm (``config.num_groups`` groups) followed by the configured activation (or none)."""

    def __init__(
        self,
        config: BitConfig,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        apply_activation: bool = True,
    ):
        super().__init__(config.num_groups, num_channels, eps=eps, affine=affine)
        self.activation = get_activation(config.hidden_act) if apply_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class BitMaxPool2d(nn.MaxPool2d):
    """Max pooling with optional TF-like "SAME" dynamic padding (zero-valued, as HF)."""

    def __init__(
        self,
        kernel_size: int,
        stride: int | None = None,
        dilation: int = 1,
        ceil_mode: bool = False,
        padding=(0, 0),
        padding_value: float = 0,
        use_dynamic_padding: bool = True,
    ):
        kernel_size, stride, dilation = to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation)
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.pad = DynamicPad2d(kernel_size, stride, dilation, padding_value) if use_dynamic_padding else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class BitEmbeddings(nn.Module):
    """Stem: 7x7/2 weight-standardized conv, (pad), (GroupNorm+act for non-preactivation), 3x3/2 max pool."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.convolution = WeightStandardizedConv2d(
            config.num_channels,
            config.embedding_size,
            kernel_size=7,
            stride=2,
            eps=1e-8,
            padding=config.global_padding,
        )
        self.pooler = BitMaxPool2d(kernel_size=3, stride=2, use_dynamic_padding=config.embedding_dynamic_padding)
        if config.global_padding is not None and config.global_padding.upper() == "SAME":
            self.pad = nn.Identity()
        else:
            self.pad = nn.ConstantPad2d(padding=(1, 1, 1, 1), value=0.0)
        if config.layer_type != "preactivation":
            self.norm = BitGroupNormActivation(config, num_channels=config.embedding_size)
        else:
            self.norm = nn.Identity()
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values, self.num_channels)
        x = self.convolution(pixel_values)
        x = self.pad(x)
        x = self.norm(x)
        return self.pooler(x)


class BitDropPath(DropPath):
    """Stochastic depth (identity at inference)."""


def make_div(value: float, divisor: int = 8) -> int:
    min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class BitDownsampleConv(nn.Module):
    """Shortcut projection: 1x1 (strided) weight-standardized conv, GroupNorm without activation unless preact."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int = 1, preact: bool = True):
        super().__init__()
        self.conv = WeightStandardizedConv2d(
            in_channels, out_channels, 1, stride=stride, eps=1e-8, padding=config.global_padding
        )
        self.norm = (
            nn.Identity()
            if preact
            else BitGroupNormActivation(config, num_channels=out_channels, apply_activation=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class BitPreActivationBottleneckLayer(nn.Module):
    """Pre-activation (v2) bottleneck: norm1 -> conv1 (1x1) -> norm2 -> conv2 (3x3, strided) -> norm3 -> conv3 (1x1).
    As HF, conv2 takes no dilation."""

    def __init__(
        self,
        config: BitConfig,
        in_channels: int,
        out_channels: int | None = None,
        bottle_ratio: float = 0.25,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        drop_path_rate: float = 0.0,
        is_first_layer: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        mid_channels = make_div(out_channels * bottle_ratio)
        pad = config.global_padding
        self.downsample = (
            BitDownsampleConv(config, in_channels, out_channels, stride=stride, preact=True) if is_first_layer else None
        )
        self.norm1 = BitGroupNormActivation(config, in_channels)
        self.conv1 = WeightStandardizedConv2d(in_channels, mid_channels, 1, eps=1e-8, padding=pad)
        self.norm2 = BitGroupNormActivation(config, num_channels=mid_channels)
        self.conv2 = WeightStandardizedConv2d(
            mid_channels, mid_channels, 3, stride=stride, groups=groups, eps=1e-8, padding=pad
        )
        self.norm3 = BitGroupNormActivation(config, mid_channels)
        self.conv3 = WeightStandardizedConv2d(mid_channels, out_channels, 1, eps=1e-8, padding=pad)
        self.drop_path = BitDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.norm1(x)
        shortcut = self.downsample(preact) if self.downsample is not None else x
        x = self.conv1(preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return self.drop_path(x) + shortcut


class BitBottleneckLayer(nn.Module):
    """Non-pre-activation bottleneck (ResNet v1.5): conv/norm x3, residual add, activation. Used by ViT-Hybrid."""

    def __init__(
        self,
        config: BitConfig,
        in_channels: int,
        out_channels: int | None = None,
        bottle_ratio: float = 0.25,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        drop_path_rate: float = 0.0,
        is_first_layer: bool = False,
    ):
        super().__init__()
        first_dilation = first_dilation or dilation
        out_channels = out_channels or in_channels
        mid_chs = make_div(out_channels * bottle_ratio)
        pad = config.global_padding
        self.downsample = (
            BitDownsampleConv(config, in_channels, out_channels, stride=stride, preact=False)
            if is_first_layer
            else None
        )
        self.conv1 = WeightStandardizedConv2d(in_channels, mid_chs, 1, eps=1e-8, padding=pad)
        self.norm1 = BitGroupNormActivation(config, num_channels=mid_chs)
        self.conv2 = WeightStandardizedConv2d(
            mid_chs, mid_chs, 3, stride=stride, dilation=first_dilation, groups=groups, eps=1e-8, padding=pad
        )
        self.norm2 = BitGroupNormActivation(config, num_channels=mid_chs)
        self.conv3 = WeightStandardizedConv2d(mid_chs, out_channels, 1, eps=1e-8, padding=pad)
        self.norm3 = BitGroupNormActivation(config, num_channels=out_channels, apply_activation=False)
        self.drop_path = BitDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.activation = get_activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.activation(self.drop_path(x) + shortcut)


class BitStage(nn.Module):
    """A ResNet v2 stage: ``depth`` bottleneck layers, the first one strided with a projection shortcut."""

    def __init__(
        self,
        config: BitConfig,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: int,
        depth: int,
        bottle_ratio: float = 0.25,
        layer_dropout: list[float] | None = None,
    ):
        super().__init__()
        first_dilation = 1 if dilation in (1, 2) else 2
        layer_cls = BitBottleneckLayer if config.layer_type == "bottleneck" else BitPreActivationBottleneckLayer
        prev_chs = in_channels
        self.layers = nn.Sequential()
        for idx in range(depth):
            layer = layer_cls(
                config,
                prev_chs,
                out_channels,
                stride=stride if idx == 0 else 1,
                dilation=dilation,
                bottle_ratio=bottle_ratio,
                first_dilation=first_dilation,
                is_first_layer=idx == 0,
                drop_path_rate=layer_dropout[idx] if layer_dropout else 0.0,
            )
            self.layers.add_module(str(idx), layer)
            prev_chs = out_channels
            first_dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BitEncoder(nn.Module):
    """The stages; stride 1 for the first, 2 after, turned into dilation once ``output_stride`` is reached."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.stages = nn.ModuleList([])
        prev_chs = config.embedding_size
        current_stride, dilation = 4, 1
        rates = np.linspace(0, config.drop_path_rate, sum(config.depths)).astype(np.float32).tolist()
        starts = np.cumsum([0] + list(config.depths)).tolist()
        dropouts = [rates[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
        for idx, (depth, hidden_size, layer_dropout) in enumerate(
            zip(config.depths, config.hidden_sizes, dropouts, strict=False)
        ):
            out_channels = make_div(hidden_size * config.width_factor)
            stride = 1 if idx == 0 else 2
            if current_stride >= config.output_stride:
                dilation *= stride
                stride = 1
            self.stages.add_module(
                str(idx),
                BitStage(config, prev_chs, out_channels, stride, dilation, depth, layer_dropout=layer_dropout),
            )
            prev_chs = out_channels
            current_stride *= stride

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """Returns the last stage output and, if asked, (stem output, stage1, ..., stageN)."""
        hidden_states = (x,) if output_hidden_states else None
        for stage in self.stages:
            x = stage(x)
            if output_hidden_states:
                hidden_states = hidden_states + (x,)
        return x, hidden_states


class BitModel(nn.Module):
    """Stem, stages, final norm (pre-activation only) and global average pool."""

    base_model_prefix = "bit"

    def __init__(self, config: BitConfig):
        super().__init__()
        self.config = config
        self.embedder = BitEmbeddings(config)
        self.encoder = BitEncoder(config)
        self.norm = (
            BitGroupNormActivation(config, num_channels=config.hidden_sizes[-1])
            if config.layer_type == "preactivation"
            else nn.Identity()
        )
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool | None = None
    ) -> BaseModelOutputWithPooling | tuple:
        last, hidden_states = self.encoder(self.embedder(pixel_values), output_hidden_states=bool(output_hidden_states))
        last = self.norm(last)
        pooled = self.pooler(last)
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states)
        return out if return_dict is None or return_dict else out.to_tuple()


class BitBackbone(nn.Module):
    """Feature maps of ``config.out_features`` (stage outputs before the final norm, as HF)."""

    base_model_prefix = "bit"

    def __init__(self, config: BitConfig):
        super().__init__()
        self.config = config
        self.bit = BitModel(config)
        self.stage_names = config.stage_names
        self.out_features = config.out_features
        self.num_features = [config.embedding_size] + list(config.hidden_sizes)

    @property
    def channels(self) -> list[int]:
        return [self.num_features[self.stage_names.index(name)] for name in self.out_features]

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool | None = None
    ) -> BackboneOutput | tuple:
        _, hidden_states = self.bit.encoder(self.bit.embedder(pixel_values), output_hidden_states=True)
        feature_maps = tuple(
            h for name, h in zip(self.stage_names, hidden_states, strict=True) if name in self.out_features
        )
        out = BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None)
        return out if return_dict is None or return_dict else out.to_tuple()
