"""Pieces every eager family shares: HF-style config dataclasses, the model base class, activations, stochastic
depth, backbone stages.

Nothing here imports transformers or the kernels.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

C = TypeVar("C", bound="HFConfig")
M = TypeVar("M", bound="PreTrainedModel")


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
        check_field_types(cls, kwargs)
        return cls(**kwargs)


class ConfigFieldError(ValueError):
    """A config.json field whose value has the wrong type (names the field; the loader adds the file)."""


def _type_ok(value: Any, hint: Any) -> bool:
    """Does a JSON value fit a config field's annotation (int, float, bool, str, list[X], dict, X | None, Any)?"""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        return len(args) != 1 or all(_type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # anything else: not checked here


def check_field_types(cls: type, values: dict[str, Any]) -> None:
    """Raise :class:`ConfigFieldError` naming the field for a value of the wrong type (``"hidden_size": "64"``),
    before it reaches torch as an obscure error."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _type_ok(value, hint):
            shown = str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", hint)
            raise ConfigFieldError(
                f"config field {name!r} must be {shown}, got {type(value).__name__} {value!r} ({cls.__name__})"
            )


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


def output_flags(
    config: HFConfig, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
) -> tuple[bool, bool, bool]:
    """HF's None-means-config output flags: ``(output_attentions, output_hidden_states, return_dict)``."""
    return (
        bool(config.output_attentions if output_attentions is None else output_attentions),
        bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
        bool(config.use_return_dict if return_dict is None else return_dict),
    )


class PreTrainedModel(nn.Module):
    """Base of every eager model class (HF's ``PreTrainedModel`` names are thin subclasses setting its attributes).

    Class attributes (as HF): ``config_class`` (the config dataclass), ``base_model_prefix`` (the attribute a head
    model keeps its base model under; the loader's key-prefix rule), ``main_input_name``. The loader's allowances
    for a checkpoint of another architecture (``fastvit.load``): ``_init_if_missing``, key regexes it may
    default-initialize (with a warning) as HF does, and ``_drop_if_unexpected``, key regexes it may drop.

    Hooks: :meth:`config_from` (an HF config dict -> this class's config object; override for sub-configs),
    :meth:`build_from` (the model for a config dict; the task -> class choice and its check are
    :func:`fastvit.models.model_class`), :meth:`init_weights` (random init for ``pretrained=False``) and
    :meth:`_flags` (the resolved output flags of a call).
    """

    config_class: ClassVar[type[HFConfig]] = HFConfig
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "pixel_values"
    _init_if_missing: ClassVar[tuple[str, ...]] = ()
    _drop_if_unexpected: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def config_from(cls, config: dict[str, Any]) -> HFConfig:
        """This class's config from an HF config.json dict (unknown keys ignored, missing keys HF's defaults)."""
        return cls.config_class.from_dict(config)

    @classmethod
    def build_from(cls: type[M], config: dict[str, Any]) -> M:
        """The model (parameters on the current default device, uninitialized values) for an HF config dict."""
        return cls(cls.config_from(config))

    def init_weights(self) -> None:
        """HF's random init: normal(0, initializer_range) for Linear/Conv2d weights, zero biases, LayerNorm 1/0."""
        self.apply(lambda m: init_hf_weights(m, self.config.initializer_range))

    def _flags(
        self,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple[bool, bool, bool]:
        """:func:`output_flags` of this model's config."""
        return output_flags(self.config, output_attentions, output_hidden_states, return_dict)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write an HF checkpoint directory (config.json, safetensors, preprocessor_config.json) that
        ``fastvit.load`` and HF transformers read back: :func:`fastvit.saving.save_pretrained`."""
        from ..saving import save_pretrained

        return save_pretrained(self, directory, **kwargs)


def architectures(models: dict[str, dict[str, type[PreTrainedModel]]]) -> dict[str, str]:
    """HF architecture class name -> task, from a family's ``MODELS`` table (model_type -> task -> class)."""
    return {cls.__name__: task for by_task in models.values() for task, cls in by_task.items()}


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
    "PreTrainedModel",
    "output_flags",
    "architectures",
    "align_out_features",
    "get_activation",
    "drop_path",
    "DropPath",
    "check_pixel_values",
    "init_hf_weights",
]
