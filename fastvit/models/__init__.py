"""Eager reference models, one family per file, module trees and state-dict keys identical to HF transformers.

Every family module exports:
  * ``MODEL_TYPES``: the HF ``model_type`` values it builds (``config.json["model_type"]``);
  * ``ARCHITECTURES``: HF architecture class name -> task (``"ConvNextForImageClassification": "classification"``);
  * ``DEFAULT_TASK``: the task used when config.json names no known architecture;
  * ``build(config: dict, task: str) -> nn.Module``: the model for an HF config dict (unknown keys ignored,
    missing keys take HF 4.50's defaults). Each model class has ``base_model_prefix`` (as HF) and ``config``.
This module only maps ``model_type`` to the family; it never imports the kernels.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

# HF model_type -> family module
_FAMILIES = {
    "convnext": "convnext",
    "convnextv2": "convnext",
    "dinov2": "dinov2",
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


def build_model(config: dict, task: str | None = None) -> nn.Module:
    """Build the eager model for an HF config dict and a task (inferred from ``architectures`` when None)."""
    fam = family(config.get("model_type", ""))
    task = task or infer_task(config)
    supported = sorted(set(fam.ARCHITECTURES.values()))
    if task not in supported:
        raise ValueError(f"task {task!r} is not available for {config['model_type']}; choose one of {supported}")
    return fam.build(config, task)
