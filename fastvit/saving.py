"""``save_pretrained``: write a model as an HF checkpoint directory that ``fastvit.load`` and HF transformers 4.50's
``AutoModel*.from_pretrained`` both read, with identical outputs.

    fastvit.save_pretrained(model, "out/")      # config.json, model.safetensors (sharded above max_shard_size),
                                                # preprocessor_config.json (+ the checkpoint's tokenizer files)

config.json: every field of the model's config (nested configs as dicts with their ``model_type``), the fields of
the config.json it was loaded from that fastvit does not model (kept as read), ``model_type``, ``architectures`` (the
class saved), ``id2label``/``label2id`` as HF writes them and ``torch_dtype``. Weights: the state dict as HF names it
(fused models save their original parameters; derived buffers are not persistent), safetensors with
``{"format": "pt"}`` metadata, shards ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .preprocess import processor_for

__all__ = ["save_pretrained", "config_dict", "DEFAULT_MAX_SHARD_SIZE"]

DEFAULT_MAX_SHARD_SIZE = "5GB"  # HF 4.50's default
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size must be bytes or like '5GB' / '500MB', got {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _config_fields(config: Any) -> dict[str, Any]:
    """A config dataclass (fastvit) or an HF ``PretrainedConfig`` as a JSON-ready dict, nested configs included."""
    if hasattr(config, "to_dict") and not dataclasses.is_dataclass(config):  # HF PretrainedConfig
        return config.to_dict()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = _config_fields(value)
        out[f.name] = value
    model_type = getattr(type(config), "model_type", None)
    if model_type:
        out["model_type"] = model_type
    labels = out.pop("id2label", None)
    if labels:
        out["id2label"] = {str(k): v for k, v in sorted(labels.items())}
        out["label2id"] = {v: int(k) for k, v in sorted(labels.items())}
    return out


def _merge(source: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``ours`` over ``source``, recursively for nested dicts (source keys fastvit does not model are kept)."""
    out = dict(source)
    for k, v in ours.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The config.json content for ``model`` (see the module docstring)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config: not a fastvit / HF model")
    ours = _config_fields(config)
    source = getattr(model, "fastvit_source", None)
    out = _merge(dict(source.config) if source is not None else {}, ours)
    for legacy in ("text_config_dict", "vision_config_dict"):  # superseded by the nested configs written above
        out.pop(legacy, None)
    if "id2label" not in ours:
        out.pop("id2label", None)
        out.pop("label2id", None)
    out["architectures"] = [type(model).__name__]
    param = next(iter(model.parameters()), None)
    out["torch_dtype"] = str(param.dtype if param is not None else torch.float32).removeprefix("torch.")
    from . import __version__

    out["fastvit_version"] = __version__
    return out


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in state-dict order; a tensor larger than ``max_bytes`` gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        n = tensor.numel() * tensor.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += n
    return shards


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    processor: Any = None,
) -> Path:
    """Write ``model`` as an HF checkpoint directory (config.json, safetensors, preprocessor_config.json).

    Args:
        model: a fastvit model (fused or eager) or an HF transformers model of the five families.
        directory: created if needed; existing checkpoint files in it are replaced.
        max_shard_size: bytes or a string like ``"5GB"``; above it the weights are sharded with an index file.
        processor: the ``ImageProcessor`` to write (default ``fastvit.processor_for(model)``).
    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    max_bytes = _parse_size(max_shard_size)
    if max_bytes < 1:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    seen: dict[int, str] = {}
    for k, v in list(state.items()):  # safetensors refuses shared storage: tied tensors, and views of one storage
        key = v.untyped_storage().data_ptr()  # (a fused model's q/k/v rows), get their own copy
        if v.numel() and key in seen:
            state[k] = v.clone()
        seen[key] = k
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    shards = _shards(state, max_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "config.json").write_text(json.dumps(config_dict(model), indent=2, sort_keys=True) + "\n")
    (processor or processor_for(model)).save_pretrained(out)
    source = getattr(model, "fastvit_source", None)
    for name in TOKENIZER_FILES:
        src = source.file(name) if source is not None else None
        if src is not None and src.resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)
    return out
