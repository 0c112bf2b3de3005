"""Named models: one entry per public HF checkpoint of the five families, with its repo id and config.json content.

    fastvit.list_models("convnextv2-*")          # names, sorted
    fastvit.get_model_info("convnext-tiny")       # short names alias the default variant (convnext-tiny-224)

Names are the HF repo names without the organisation (``facebook/convnext-tiny-224`` -> ``convnext-tiny-224``);
``dinov2-*``, ``vit-hybrid-base-bit-384`` and ``altclip`` likewise. A repo id is accepted wherever a name is.

Provenance of the configs (no network where this was written, so no hub config.json was read):
  * ConvNeXt (15), ConvNeXt V2 (18), DINOv2 (8), DINOv2 with registers (8) and ViT-Hybrid (1) entries were checked,
    name by name and value by value (depths, hidden sizes, widths/heads/layers, SwiGLU, register tokens, image size,
    patch size, label count, BiT backbone settings), against the HF transformers conversion scripts that produced
    the published checkpoints (``convert_convnext_to_pytorch.py``, ``convert_convnextv2_to_pytorch.py``,
    ``convert_dinov2_to_hf.py``, ``convert_dinov2_with_registers_to_hf.py``,
    ``convert_vit_hybrid_timm_to_pytorch.py``): ``provenance=CONVERSION_SCRIPT``. The eight
    ``facebook/dinov2-with-registers-*`` repos are the ones that script pushes (its ``model_name_to_hf_name``);
  * AltCLIP is HF 4.50's ``AltCLIPConfig`` defaults, which HF documents as "a similar configuration to that of
    BAAI/AltCLIP": ``provenance=HF_DEFAULTS``.
When real weights are loaded, the checkpoint's own config.json is used, never these. ``id2label`` is omitted
(``num_labels`` only).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from dataclasses import dataclass, replace

VERIFIED = "verified against the published config.json"
CONVERSION_SCRIPT = "checked against the HF conversion script that produced the published checkpoint"
HF_DEFAULTS = "HF 4.50 config-class defaults, documented by HF as this checkpoint's configuration"
INFERRED = "inferred: HF 4.50 config defaults + known architecture (not checked against the hub)"

DEFAULT_MODEL = "convnext-tiny"


@dataclass(frozen=True)
class ModelInfo:
    """One pretrained checkpoint: fastvit name, HF repo id, HF config.json content, task of its architecture."""

    name: str
    repo_id: str
    config: dict
    task: str
    description: str = ""
    provenance: str = INFERRED


_MODELS: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}


def _add(
    repo_id: str,
    config: dict,
    task: str,
    description: str,
    alias: str | None = None,
    provenance: str = CONVERSION_SCRIPT,
) -> None:
    name = repo_id.split("/", 1)[1].lower()
    _MODELS[name] = ModelInfo(name, repo_id, config, task, description, provenance)
    if alias:
        _ALIASES[alias] = name


# ---------------------------------------------------------------------------------------------------------- ConvNeXt
_CONVNEXT_SIZES = {  # name: (depths, hidden_sizes)
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048]),
}
_CONVNEXTV2_SIZES = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "huge": ([3, 3, 27, 3], [352, 704, 1408, 2816]),
}


def _convnext(size: str, image_size: int, num_labels: int, v2: bool = False) -> dict:
    depths, hidden = (_CONVNEXTV2_SIZES if v2 else _CONVNEXT_SIZES)[size]
    cfg = {
        "model_type": "convnextv2" if v2 else "convnext",
        "architectures": ["ConvNextV2ForImageClassification" if v2 else "ConvNextForImageClassification"],
        "num_channels": 3,
        "patch_size": 4,
        "num_stages": 4,
        "depths": depths,
        "hidden_sizes": hidden,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "drop_path_rate": 0.0,
        "image_size": image_size,
        "num_labels": num_labels,
    }
    if not v2:
        cfg["layer_scale_init_value"] = 1e-6
    return cfg


# facebook/convnext-*: 1k at 224 (T/S/B/L), 1k at 384 (B/L), 22k classifiers (B/L/XL), 22k->1k at 224/384 (B/L/XL)
for _size in ("tiny", "small", "base", "large"):
    _add(
        f"facebook/convnext-{_size}-224",
        _convnext(_size, 224, 1000),
        "classification",
        f"ConvNeXt-{_size[0].upper()} ImageNet-1k, 224",
        alias=f"convnext-{_size}",
    )
for _size in ("base", "large"):
    _add(f"facebook/convnext-{_size}-384", _convnext(_size, 384, 1000), "classification", "ImageNet-1k, 384")
for _size in ("base", "large", "xlarge"):
    _add(
        f"facebook/convnext-{_size}-224-22k",
        _convnext(_size, 224, 21841),
        "classification",
        "ImageNet-22k classifier (21841 classes), 224",
    )
    _add(
        f"facebook/convnext-{_size}-224-22k-1k",
        _convnext(_size, 224, 1000),
        "classification",
        "ImageNet-22k pretrained, 1k fine-tuned, 224",
        alias="convnext-xlarge" if _size == "xlarge" else None,
    )
    _add(
        f"facebook/convnext-{_size}-384-22k-1k",
        _convnext(_size, 384, 1000),
        "classification",
        "ImageNet-22k pretrained, 1k fine-tuned, 384",
    )

# facebook/convnextv2-*: FCMAE pretrained; 1k fine-tuned at 224 (all), 22k->1k at 224/384 (N/T/B/L, H at 384/512)
for _size in _CONVNEXTV2_SIZES:
    _add(
        f"facebook/convnextv2-{_size}-1k-224",
        _convnext(_size, 224, 1000, v2=True),
        "classification",
        f"ConvNeXt V2-{_size} ImageNet-1k fine-tuned, 224",
        alias=f"convnextv2-{_size}",
    )
for _size in ("nano", "tiny", "base", "large"):
    _add(
        f"facebook/convnextv2-{_size}-22k-224",
        _convnext(_size, 224, 1000, v2=True),
        "classification",
        "ImageNet-22k then 1k fine-tuned, 224",
    )
for _size in ("nano", "tiny", "base", "large", "huge"):
    _add(
        f"facebook/convnextv2-{_size}-22k-384",
        _convnext(_size, 384, 1000, v2=True),
        "classification",
        "ImageNet-22k then 1k fine-tuned, 384",
    )
_add(
    "facebook/convnextv2-huge-22k-512",
    _convnext("huge", 512, 1000, v2=True),
    "classification",
    "ImageNet-22k then 1k fine-tuned, 512",
)

# ----------------------------------------------------------------------------------------------------------- DINOv2
_DINOV2_SIZES = {  # name: (hidden_size, num_hidden_layers, num_attention_heads, use_swiglu_ffn)
    "small": (384, 12, 6, False),
    "base": (768, 12, 12, False),
    "large": (1024, 24, 16, False),
    "giant": (1536, 40, 24, True),
}


def _dinov2(size: str, classifier: bool) -> dict:
    hidden, layers, heads, swiglu = _DINOV2_SIZES[size]
    cfg = {
        "model_type": "dinov2",
        "architectures": ["Dinov2ForImageClassification" if classifier else "Dinov2Model"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": 518,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": swiglu,
    }
    if classifier:
        cfg["num_labels"] = 1000
    return cfg


for _size in _DINOV2_SIZES:
    _add(f"facebook/dinov2-{_size}", _dinov2(_size, False), "features", f"DINOv2 ViT-{_size} (patch 14) features")
    _add(
        f"facebook/dinov2-{_size}-imagenet1k-1-layer",
        _dinov2(_size, True),
        "classification",
        "DINOv2 + linear ImageNet-1k head on CLS and mean patch token",
    )


# --------------------------------------------------------------------------------------------- DINOv2 with registers
# convert_dinov2_with_registers_to_hf.py: Dinov2WithRegistersConfig(image_size=518, patch_size=14) with its default
# num_register_tokens=4, sizes as DINOv2's; the -imagenet1k-1-layer heads are the DINOv2 repo's reg4 linear heads.
def _dinov2_with_registers(size: str, classifier: bool) -> dict:
    cfg = _dinov2(size, classifier)
    arch = "Dinov2WithRegistersForImageClassification" if classifier else "Dinov2WithRegistersModel"
    cfg.update(model_type="dinov2_with_registers", architectures=[arch], num_register_tokens=4)
    return cfg


for _size in _DINOV2_SIZES:
    _add(
        f"facebook/dinov2-with-registers-{_size}",
        _dinov2_with_registers(_size, False),
        "features",
        f"DINOv2 ViT-{_size} (patch 14) with 4 register tokens, features",
    )
    _add(
        f"facebook/dinov2-with-registers-{_size}-imagenet1k-1-layer",
        _dinov2_with_registers(_size, True),
        "classification",
        "DINOv2 with registers + linear ImageNet-1k head on CLS and mean patch token",
    )

# ------------------------------------------------------------------------------------------------------- ViT-Hybrid
_add(
    "google/vit-hybrid-base-bit-384",
    {
        "model_type": "vit-hybrid",
        "architectures": ["ViTHybridForImageClassification"],
        "backbone_config": {
            "model_type": "bit",
            "num_channels": 3,
            "embedding_size": 64,
            "hidden_sizes": [256, 512, 1024, 2048],
            "depths": [3, 4, 9],
            "layer_type": "bottleneck",
            "hidden_act": "relu",
            "global_padding": "SAME",
            "num_groups": 32,
            "drop_path_rate": 0.0,
            "embedding_dynamic_padding": True,
            "output_stride": 32,
            "width_factor": 1,
            "out_features": ["stage3"],
            "out_indices": [3],
        },
        "backbone_featmap_shape": [1, 1024, 24, 24],
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "image_size": 384,
        "patch_size": 1,
        "num_channels": 3,
        "qkv_bias": True,
        "num_labels": 1000,
    },
    "classification",
    "ViT-B/16 on a BiT-R50 (3-stage) stem, ImageNet-21k pretrained, 1k fine-tuned, 384",
    alias="vit-hybrid",
)

# ---------------------------------------------------------------------------------------------------------- AltCLIP
_add(
    "BAAI/AltCLIP",
    {
        "model_type": "altclip",
        "architectures": ["AltCLIPModel"],
        "projection_dim": 768,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "altclip_text_model",
            "vocab_size": 250002,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 514,
            "type_vocab_size": 1,
            "initializer_range": 0.02,
            "initializer_factor": 0.02,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "position_embedding_type": "absolute",
            "project_dim": 768,
        },
        "vision_config": {
            "model_type": "altclip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "projection_dim": 768,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_channels": 3,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
        },
    },
    "features",
    "AltCLIP: CLIP ViT-L/14 vision tower + XLM-R large text tower (multilingual)",
    provenance=HF_DEFAULTS,
)


# -------------------------------------------------------------------------------------------------------------- API


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered checkpoints (one per HF repo), filtered by an fnmatch ``pattern``.

    Short aliases (``convnext-tiny``) are accepted by ``get_model_info``/``load`` but not listed; see ``aliases()``.
    """
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]


def aliases() -> dict[str, str]:
    """Short name -> the checkpoint name it stands for."""
    return dict(_ALIASES)


def resolve_name(name: str) -> str | None:
    """The registered name for a name, alias or HF repo id (case-insensitive), or None."""
    key = name.strip().lower()
    if key in _MODELS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    for info in _MODELS.values():
        if info.repo_id.lower() == key:
            return info.name
    return None


def get_model_info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of a registered name, alias or repo id (config is a copy); unknown -> ValueError + hints."""
    resolved = resolve_name(name)
    if resolved is None:
        candidates = sorted(_MODELS) + sorted(_ALIASES)
        close = difflib.get_close_matches(name.strip().lower(), candidates, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model name {name!r}.{hint} See fastvit.list_models() for the {len(_MODELS)} registered names, "
            "or pass a local directory with config.json and weights."
        )
    info = _MODELS[resolved]
    return replace(info, config=copy.deepcopy(info.config))


__all__ = ["ModelInfo", "DEFAULT_MODEL", "list_models", "get_model_info", "aliases", "resolve_name"]
