"""Structure checks the fused blocks' ``from_module`` builders share: find a submodule by attribute path, is it a
Linear, is it a last-dim LayerNorm. Blocks are recognised by the attributes holding their weights, never by file
path, so the same builder serves fastvit's eager models and HF transformers' (4.x and 5.x layouts)."""

from __future__ import annotations

import torch
from torch import nn


def get(obj: nn.Module, path: str):
    """The attribute at dotted ``path`` below ``obj``, or None if any step is missing (or None)."""
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def first(m: nn.Module, candidates: tuple[tuple[str, ...], ...]) -> tuple | None:
    """The first tuple of attribute paths that all resolve on ``m`` (as modules), resolved."""
    for paths in candidates:
        found = tuple(get(m, p) for p in paths)
        if all(f is not None for f in found):
            return found
    return None


def is_linear(obj) -> bool:
    return isinstance(obj, nn.Linear)


def is_layer_norm(obj) -> bool:
    """A last-dim LayerNorm with weight and bias over one dim (nn.LayerNorm or ConvNeXt's channels_last one)."""
    if obj is None or getattr(obj, "data_format", "channels_last") != "channels_last":
        return False
    w, b = getattr(obj, "weight", None), getattr(obj, "bias", None)
    shape = getattr(obj, "normalized_shape", None)
    ok = isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dim() == 1 and b.shape == w.shape
    return ok and shape is not None and len(tuple(shape)) == 1 and hasattr(obj, "eps")


_GELU_TANH = ("NewGELUActivation", "NewGELU", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation")


def kernel_activation(act) -> str | None:
    """The ``fused_linear`` epilogue name of an activation module or function (``gelu``, ``gelu_tanh``,
    ``quick_gelu``, ``silu``), or None if the kernel has no exact equivalent (it then runs as its own op)."""
    name = type(act).__name__
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    if name == "GELUActivation":  # HF ACT2FN["gelu"]: F.gelu, or the same erf formula in Python
        return "gelu"
    if name in _GELU_TANH:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), however it is written
        return "gelu_tanh"
    if name in ("QuickGELUActivation", "QuickGELU"):
        return "quick_gelu"
    if isinstance(act, nn.SiLU) or name == "SiLUActivation":
        return "silu"
    return {torch.nn.functional.gelu: "gelu", torch.nn.functional.silu: "silu"}.get(act)
