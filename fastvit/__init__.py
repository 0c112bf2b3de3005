"""fastvit: Triton-kernel accelerated inference for ConvNeXt, ConvNeXt V2, DINOv2, ViT-Hybrid and AltCLIP.

import fastvit
model = fastvit.load("convnext-tiny", fused=True)   # plain nn.Module, eval mode
report = fastvit.patch(hf_model)                     # fuse an HF transformers model in place
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule; loaded on first use so `import fastvit` stays cheap
_EXPORTS = {
    "load": "loading",
    "list_models": "registry",
    "get_model_info": "registry",
    "patch": "patching",
    "unpatch": "patching",
    "patch_transformers": "patching",
    "unpatch_transformers": "patching",
    "PatchReport": "patching",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
