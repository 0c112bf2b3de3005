"""Pieces every eager family shares: HF-style config dataclasses, activations, stochastic depth, backbone stages.

Nothing here imports transformers or the kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import nn

C = TypeVar("C", bound="HFConfig")


@dataclass
class HFConfig:
    """The ``PretrainedConfig`` fields that the models read (defaults as HF 4.50). Families subclass it.

    ``num_labels`` follows HF: ``len(id2label)`` when config.json has ``id2label``, else ``num_labels``, else 2.
    """

    num_labels: int = 2
    id2label: dict[int, str] | None = None
    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @classmethod
    def from_dict(cls: type[C], config: dict[str, Any]) -> C:
        """Build from a config.json dict; unknown keys are ignored, missing keys take the dataclass defaults."""
        names = {f.name for f in fields(cls) if f.init}
        kwargs = {k: v for k, v in config.items() if k in names}
        if isinstance(config.get("id2label"), dict):
            kwargs["id2label"] = {int(k): v for k, v in config["id2label"].items()}
            kwargs["num_labels"] = len(kwargs["id2label"])
        return cls(**kwargs)


@dataclass
class BackboneConfig(HFConfig):
    """Config mix-in for backbones: ``out_features``/``out_indices`` aligned over ``stage_names`` exactly as HF."""

    out_features: list[str] | None = None
    out_indices: list[int] | None = None
    stage_names: list[str] = field(default_factory=list, init=False)

    def _align_backbone(self, num_stages: int) -> None:
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)]
        self.out_features, self.out_indices = align_out_features(self.out_features, self.out_indices, self.stage_names)


def align_out_features(
    out_features: list[str] | None, out_indices: list[int] | None, stage_names: list[str]
) -> tuple[list[str], list[int]]:
    """HF's ``get_aligned_output_features_output_indices``: default to the last stage, validate, align both lists."""
    n = len(stage_names)
    if out_features is not None:
        out_features = list(out_features)
        bad = [f for f in out_features if f not in stage_names]
        if bad:
            raise ValueError(f"out_features must be a subset of stage_names {stage_names}, got {out_features}")
        if out_features != [s for s in stage_names if s in out_features] or len(set(out_features)) != len(out_features):
            raise ValueError(f"out_features must be unique and in the order of stage_names, got {out_features}")
    if out_indices is not None:
        out_indices = list(out_indices)
        positive = [i % n if i < 0 else i for i in out_indices]
        if any(i >= n for i in positive) or positive != sorted(set(positive)):
            raise ValueError(f"out_indices must be unique, ordered indices into {stage_names}, got {out_indices}")
    if out_features is None and out_indices is None:
        return [stage_names[-1]], [n - 1]
    if out_features is None:
        return [stage_names[i] for i in out_indices], out_indices
    if out_indices is None:
        return out_features, [stage_names.index(f) for f in out_features]
    if out_features != [stage_names[i] for i in out_indices]:
        raise ValueError(f"out_features {out_features} and out_indices {out_indices} name different stages")
    return out_features, out_indices


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class NewGELU(nn.Module):
    """HF's ``gelu_new``: the tanh approximation written out (as in GPT-2/BERT ports)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_new": NewGELU,
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


def get_activation(name: str) -> nn.Module:
    """The activation module for an HF ``hidden_act`` string (the subset of ``ACT2FN`` these families use)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample; the identity at inference."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class DropPath(nn.Module):
    """Stochastic depth as a module (HF's ``<Family>DropPath``); families subclass it for the HF class name."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob or 0.0, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def check_pixel_values(pixel_values: torch.Tensor | None, num_channels: int) -> None:
    """Raise ``ValueError`` unless ``pixel_values`` is ``[B, num_channels, H, W]``."""
    if pixel_values is None:
        raise ValueError("You have to specify pixel_values")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must have shape [batch, {num_channels}, height, width] (num_channels={num_channels} from "
            f"the config); got shape {list(pixel_values.shape)}"
        )


def init_hf_weights(module: nn.Module, std: float) -> None:
    """HF's ``_init_weights`` for Linear/Conv (normal(0, std), zero bias) and LayerNorm (ones, zeros)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


__all__ = [
    "HFConfig",
    "BackboneConfig",
    "align_out_features",
    "get_activation",
    "drop_path",
    "DropPath",
    "check_pixel_values",
    "init_hf_weights",
]
