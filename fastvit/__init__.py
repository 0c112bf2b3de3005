"""fastvit: Triton-kernel accelerated inference for ConvNeXt, ConvNeXt V2, DINOv2, ViT-Hybrid and AltCLIP.

import fastvit
model = fastvit.load("convnext-tiny", fused=True)   # plain nn.Module, eval mode
report = fastvit.patch(hf_model)                     # fuse an HF transformers model in place
"""

from __future__ import annotations

import importlib
import sys
import types

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
    # images -> pixel values -> embeddings / labels; saving (issue 17)
    "ImageProcessor": "preprocess",
    "processor_for": "preprocess",
    "load_image": "preprocess",
    "embed": "embedding",
    "Embedder": "embedding",
    "read_embeddings": "embedding",
    "predict": "prediction",
    "save_pretrained": "saving",
    # device-memory traffic, FLOPs and roofline of one forward (issue 13)
    "profile": "profile",
    "Profile": "profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``fastvit.profile`` the function when its submodule ``fastvit.profile`` is imported (importing a
    submodule sets it as a package attribute); the module itself: ``sys.modules["fastvit.profile"]``."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
