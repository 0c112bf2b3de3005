"""fastvit_kernels: Triton kernels for vision-model inference, each with a torch reference and fallback.

Importing this package is cheap and has no side effects: the op modules (and triton) load on first use.

    from fastvit_kernels import layer_norm_2d
    y = layer_norm_2d(x, weight, bias, eps=1e-6)
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> module (one op per file)
_EXPORTS = {
    "layer_norm": "layer_norm",
    "layer_norm_ref": "layer_norm",
    "layer_norm_2d": "layer_norm_2d",
    "layer_norm_2d_ref": "layer_norm_2d",
    "grn": "grn",
    "grn_ref": "grn",
    "swiglu": "swiglu",
    "swiglu_ref": "swiglu",
    "dwconv2d": "dwconv",
    "dwconv2d_ref": "dwconv",
    "dwconv2d_layer_norm": "dwconv",
    "dwconv2d_layer_norm_ref": "dwconv",
    "attention": "attention",
    "attention_ref": "attention",
    "fused_linear": "fused_linear",
    "fused_linear_ref": "fused_linear",
    "fused_linear_choices": "fused_linear",
    "grn_prologue": "fused_linear",
    "add_layer_norm": "add_layer_norm",
    "add_layer_norm_ref": "add_layer_norm",
    "backend": "_dispatch",
    "get_backend": "_dispatch",
    "use_triton": "_dispatch",
    "triton_reason": "_dispatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvit_kernels' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps ``fastvit_kernels.<op>`` the function when the same-named submodule is imported: importing a
    submodule sets it as a package attribute, which would otherwise shadow the function (``layer_norm``, ``grn``,
    ``swiglu``, ``attention``). Get the modules themselves with ``importlib.import_module``."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
