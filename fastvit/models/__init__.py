"""Eager reference models, one family per file, module trees and state-dict keys identical to HF transformers.

Every model class derives from :class:`~fastvit.models.common.PreTrainedModel`. Every family module exports:
  * ``MODELS``: HF ``model_type`` (``config.json["model_type"]``) -> task -> model class;
  * ``ARCHITECTURES``: HF architecture class name -> task (``"ConvNextForImageClassification": "classification"``),
    derived from ``MODELS``;
  * ``DEFAULT_TASK``: the task used when config.json names no known architecture;
  * ``build``: :func:`build_model` under the family's name.
This module maps ``model_type`` to the family and holds the one task check (:func:`model_class`); it never
imports the kernels. Adding a family: a file with its classes and ``MODELS``, and a row in ``_FAMILIES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .common import PreTrainedModel

# HF model_type -> family module
_FAMILIES = {
    "convnext": "convnext",
    "convnextv2": "convnext",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "vit-hybrid": "vit_hybrid",
    "altclip": "altclip",
    "altclip_vision_model": "altclip",  # a saved AltCLIPVisionModel
    "altclip_text_model": "altclip",  # a saved AltCLIPTextModel
}

TASKS = ("features", "classification", "backbone", "vision", "text")


def family(model_type: str) -> ModuleType:
    """The family module that builds HF ``model_type``."""
    if model_type not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; fastvit supports: {known}")
    return importlib.import_module(f".{_FAMILIES[model_type]}", __name__)


def infer_task(config: dict) -> str:
    """The task named by ``config["architectures"]``, else the family's default."""
    fam = family(config.get("model_type", ""))
    for arch in config.get("architectures") or ():
        if arch in fam.ARCHITECTURES:
            return fam.ARCHITECTURES[arch]
    return fam.DEFAULT_TASK


def model_class(config: dict, task: str | None = None) -> type[PreTrainedModel]:
    """The model class for an HF config dict and a task (inferred from ``architectures`` when None): the one
    place a task is checked."""
    model_type = config.get("model_type", "")
    by_task = family(model_type).MODELS[model_type]
    task = task or infer_task(config)
    if task not in by_task:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        raise ValueError(f"task {task!r} is not available for {model_type}; choose one of {sorted(by_task)}")
    return by_task[task]


def build_model(config: dict, task: str | None = None) -> PreTrainedModel:
    """Build the eager model for an HF config dict and a task (inferred from ``architectures`` when None)."""
    return model_class(config, task).build_from(config)
