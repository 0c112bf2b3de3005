"""``fastvit.load``: an eager model from a registry name or an HF checkpoint directory, optionally fused.

One path for every family (gpt-fast style): read config.json -> pick the task -> build the model under
``torch.device("meta")`` (no allocation, no init, no global state; the models have no buffers) -> read the state dict
(safetensors, sharded safetensors, or ``torch.load(weights_only=True)`` for pytorch_model.bin) -> match keys as HF
does -> ``load_state_dict(assign=True)`` -> dtype/device -> eval -> patch with the Triton kernels when ``fused=True``.

Key matching (HF's ``base_model_prefix`` rules, strict otherwise):
  * a checkpoint of a head model (``convnext.*`` + ``classifier.*``) loaded as the base model or a backbone: the
    prefix is stripped and the keys outside it (the head) are dropped, with a warning;
  * a base-model checkpoint loaded into a head model: the prefix is added; the head is then missing, which is an
    error naming the keys (load it with ``task="features"``, or ``pretrained=False``);
  * when the checkpoint's architecture (config.json ``architectures``) differs from the model built, keys the model
    class lists in ``_drop_if_unexpected`` are dropped and parameters it lists in ``_init_if_missing`` (e.g.
    ``ConvNextBackbone.hidden_states_norms``, which HF also initializes) get their default init, with a warning;
  * ``*.embeddings.position_ids`` / ``token_type_ids`` of checkpoints saved before transformers 4.31 (buffers HF
    since made non-persistent) are ignored, as HF does;
  * anything else missing or unexpected, any shape mismatch, and any tensor left on the meta device is an error.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from . import hub, registry
from .models import infer_task, model_class

__all__ = ["load", "CheckpointError", "read_config", "read_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (names the file or the keys)."""


# ---------------------------------------------------------------------------------------------------------- reading


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: not an HF checkpoint directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot parse {path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return config


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: the file is truncated, corrupt or unreadable
        raise CheckpointError(f"cannot read {path} (truncated or corrupt safetensors file?): {e}") from e


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise CheckpointError(
            f"cannot read {path} (truncated or corrupt, or not a plain tensor checkpoint): {e}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def _read_sharded(index: Path, read) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot parse shard index {index}: {e}") from e
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"shard {path} listed in {index} does not exist")
        state.update(read(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index} lists tensors that no shard holds, e.g. {missing[:5]}")
    return state


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, on CPU. Prefers safetensors; reads .bin with ``weights_only=True``."""
    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return _read_safetensors(d / "model.safetensors")
    if (d / "model.safetensors.index.json").is_file():
        return _read_sharded(d / "model.safetensors.index.json", _read_safetensors)
    if (d / "pytorch_model.bin").is_file():
        return _read_bin(d / "pytorch_model.bin")
    if (d / "pytorch_model.bin.index.json").is_file():
        return _read_sharded(d / "pytorch_model.bin.index.json", _read_bin)
    raise CheckpointError(f"no weights in {d}: expected one of {', '.join(hub.WEIGHT_FILES)}")


# --------------------------------------------------------------------------------------------------------- matching


def _fix_legacy_key(key: str) -> str:
    """HF's load-time renames of old LayerNorm names (``LayerNorm.gamma/beta``)."""
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key


def _remap(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply HF's base-prefix rule: identity, strip a leading prefix, or add ``base_model_prefix``.

    Returns the remapped state dict and the keys dropped because they lie outside a stripped prefix.
    """
    target = set(model.state_dict())
    prefix = getattr(type(model), "base_model_prefix", "") or ""
    candidates: list[tuple[str, str]] = [("same", "")]
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        candidates.append(("add", prefix))
    firsts = {k.split(".", 1)[0] for k in state if "." in k}
    candidates += [("strip", p) for p in sorted(firsts, key=lambda p: p != prefix)]

    def mapped(kind: str, p: str) -> dict[str, torch.Tensor]:
        if kind == "same":
            return state
        if kind == "add":
            return {k if k in target else f"{p}.{k}": v for k, v in state.items()}  # head keys may already fit
        return {k[len(p) + 1 :]: v for k, v in state.items() if k.startswith(p + ".")}

    best = max(candidates, key=lambda c: len(target & set(mapped(*c))))  # first candidate wins ties
    out = mapped(*best)
    dropped = sorted(k for k in state if not k.startswith(best[1] + ".")) if best[0] == "strip" else []
    return out, dropped


# Buffers HF made non-persistent (``position_ids`` in transformers 4.31): checkpoints saved before, e.g. CLIP / XLM-R
# towers such as BAAI/AltCLIP's, still hold them. HF ignores such keys on load; so do we (our models compute them).
_LEGACY_BUFFERS = (r"(^|\.)embeddings\.(position_ids|token_type_ids)$",)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, key) for p in patterns)


def _fmt_keys(keys: list[str], n: int = 8) -> str:
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _match_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], config: dict, source: str, outputs_changed: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict to assign and the parameter names to default-initialize; raises CheckpointError otherwise.

    ``outputs_changed``: the backbone outputs were chosen at load time; the model's allowances apply as for a
    checkpoint of another architecture (HF initializes the stage norms of the new outputs, drops the others)."""
    state = {_fix_legacy_key(k): v for k, v in state.items()}
    state, dropped = _remap(model, state)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not _matches(k, _LEGACY_BUFFERS)}
    name = type(model).__name__
    if dropped:
        warnings.warn(
            f"{source}: {len(dropped)} checkpoint tensors belong to another architecture than {name} and were not "
            f"used: {_fmt_keys(dropped, 4)}",
            stacklevel=3,
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    to_init: list[str] = []
    archs = config.get("architectures") or []
    if (archs and name not in archs) or outputs_changed:  # cross-architecture load: the model's HF-like allowances
        drop_ok = [k for k in unexpected if _matches(k, getattr(model, "_drop_if_unexpected", ()))]
        to_init = [k for k in missing if _matches(k, getattr(model, "_init_if_missing", ()))]
        if drop_ok or to_init:
            what = f"a {archs[0]} checkpoint as {name}" if archs and name not in archs else "other backbone outputs"
            warnings.warn(
                f"{source}: loading {what}: "
                + (f"dropped {_fmt_keys(drop_ok, 4)}; " if drop_ok else "")
                + (f"newly initialized {_fmt_keys(to_init, 4)}" if to_init else ""),
                stacklevel=3,
            )
        unexpected = [k for k in unexpected if k not in drop_ok]
        missing = [k for k in missing if k not in to_init]
        for k in drop_ok:
            del state[k]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_keys(missing)}")
        base = getattr(type(model), "base_model_prefix", "")
        if (
            base
            and isinstance(getattr(model, base, None), nn.Module)
            and not any(k.startswith(base + ".") for k in missing)
        ):
            problems[-1] += (
                f" (the checkpoint has no weights for {name}'s head: use task='features', or pretrained=False)"
            )
    if unexpected:
        problems.append(f"unexpected keys: {_fmt_keys(unexpected)}")
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if mismatched:
        problems.append("shape mismatch (config.json does not fit the weights): " + "; ".join(mismatched[:8]))
    if problems:
        raise CheckpointError(f"{source} does not fit {name}: " + " | ".join(problems))
    return state, to_init


# ----------------------------------------------------------------------------------------------------------- build


def _init_missing(model: nn.Module, names: list[str], device: torch.device, dtype: torch.dtype) -> None:
    """Materialize and default-initialize the modules that own ``names`` (they must define ``reset_parameters``)."""
    owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in names})
    for path in owners:
        module = model.get_submodule(path)
        own = [p for p in module.parameters(recurse=False)]
        if any(p.device.type != "meta" for p in own) or not hasattr(module, "reset_parameters"):
            raise CheckpointError(f"cannot initialize {path}: it is partly loaded or has no reset_parameters()")
        module.to_empty(device=device, recurse=False)
        module.reset_parameters()
        module.to(dtype=dtype)


def _check_no_meta(model: nn.Module, source: str) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise CheckpointError(f"{source}: tensors were left without values (meta device): {_fmt_keys(left)}")


def _resolve(name_or_path: str | os.PathLike, pretrained: bool) -> tuple[dict, Path | None, str]:
    """(config, weights directory or None, description) for a directory, registry name, alias or repo id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return read_config(path), (path if pretrained else None), str(path)
    text = str(name_or_path)
    name = registry.resolve_name(text)
    if name is None:
        if path.exists():
            raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
        if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
            raise FileNotFoundError(f"{text!r} is neither an existing directory nor a registered model name")
        registry.get_model_info(text)  # raises ValueError with close-match suggestions
    info = registry.get_model_info(name)
    if not pretrained:
        return info.config, None, info.name
    directory = hub.find_weights(info.repo_id)
    return read_config(directory), directory, f"{info.name} ({directory})"


def _fuse(model: nn.Module, fused: bool, cuda_graphs: bool) -> None:
    from .patching import patch  # imported here: loading knows nothing of kernels, patching does

    patch(model, kernels=fused, cuda_graphs=cuda_graphs)


# ------------------------------------------------------------------------------------------- argument checks

# the strings HF's from_pretrained(torch_dtype=...) accepts for the floating dtypes ("auto": the checkpoint's)
_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


def _check_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """A floating torch.dtype, or "auto"; ValueError listing the valid values otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name == "auto" or name in _DTYPE_NAMES:
            return "auto" if name == "auto" else _DTYPE_NAMES[name]
    elif isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    valid = ", ".join(repr(n) for n in ("auto", *_DTYPE_NAMES))
    raise ValueError(f"dtype={dtype!r} is not a floating-point dtype; use a torch dtype (torch.float16...) or {valid}")


def _auto_dtype(config: dict, state: dict[str, torch.Tensor] | None) -> torch.dtype:
    """dtype="auto" as HF: config.json's ``torch_dtype``, else the first floating tensor's dtype, else float32."""
    name = config.get("torch_dtype")
    if isinstance(name, str) and name.removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[name.removeprefix("torch.")]
    floating = (v.dtype for v in (state or {}).values() if v.is_floating_point())
    return next(floating, torch.float32)


def _check_device(device: str | torch.device | None) -> torch.device:
    """The torch.device, or a clear error before anything is built when it does not exist here."""
    try:
        device = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({e})") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise RuntimeError(
                f"device={str(device)!r}: no CUDA GPU is available to torch {torch.__version__} ({build}); "
                "use device='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={str(device)!r}: MPS is not available to torch {torch.__version__}")
    return device


def _config_file(name_or_path: str | os.PathLike, directory: Path | None, source: str) -> str:
    """Where the config came from, for error messages: the config.json path, or the registry entry."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path / "config.json")
    return str(directory / "config.json") if directory is not None else f"the registry config of {source}"


def _backbone_outputs(
    cls: type, config: dict, task: str | None, out_features: list[str] | None, out_indices: list[int] | None
) -> dict:
    """``config`` with the backbone's outputs chosen at load time, as HF's ``BackboneMixin`` takes them (either
    list, or both naming the same stages; the default is the last stage)."""
    if (task or infer_task(config)) != "backbone":
        raise ValueError(f"out_features / out_indices choose a backbone's outputs: pass task='backbone', not {task!r}")
    config = dict(config)
    config["out_features"] = None if out_features is None else list(out_features)
    config["out_indices"] = None if out_indices is None else list(out_indices)
    try:
        cls.config_from(config)
    except ValueError as e:
        raise ValueError(f"out_features={out_features}, out_indices={out_indices} for {cls.__name__}: {e}") from None
    return config


def _build(cls: type, config: dict, where: str) -> nn.Module:
    """``cls.build_from(config)``; a config value the model cannot take is an error naming the file."""
    try:
        return cls.build_from(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from e


def load(
    name_or_path: str | os.PathLike,
    *,
    fused: bool = True,
    pretrained: bool = True,
    task: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cuda_graphs: bool = False,
    out_features: list[str] | None = None,
    out_indices: list[int] | None = None,
) -> nn.Module:
    """Load a model by registry name (``"convnext-tiny"``), HF repo id, or checkpoint directory.

    Args:
        name_or_path: a name from ``fastvit.list_models()`` (or an alias / HF repo id), or a directory with an HF
            ``config.json`` and ``model.safetensors``, ``model.safetensors.index.json`` or ``pytorch_model.bin``.
        fused: patch the model with fastvit's Triton kernels (``fastvit.patch``); False gives the eager reference.
        pretrained: load the weights (for a name: local HF cache, else a download with huggingface_hub); False gives
            HF's random init.
        task: ``"features"``, ``"classification"``, ``"backbone"`` (AltCLIP: ``"features"``, ``"vision"``,
            ``"text"``); default: from config.json's ``architectures``.
        device: where the weights go (default CPU).
        dtype: floating-point dtype of the weights (default float32, as HF's default): a torch dtype, a name HF
            accepts (``"float16"``, ``"bfloat16"``, ``"float32"``, ...) or ``"auto"`` (config.json's ``torch_dtype``,
            else the checkpoint's).
        cuda_graphs: run the forward through a CUDA-graph runner (one graph per input shape/dtype, captured on
            first use; eager on CPU, with gradients, or when capture fails), through ``fastvit.patch``.
        out_features, out_indices: the stages a ``task="backbone"`` model returns (``["stem", "stage2"]`` /
            ``[0, -1]``), as HF's ``AutoBackbone.from_pretrained(..., out_features=...)``; default: config.json's,
            else the last stage. Stage norms of new outputs (ConvNeXt) are initialized as HF does, with a warning.
    Returns:
        The model, an ``nn.Module`` in eval mode.
    """
    device = _check_device(device)
    dtype = _check_dtype(dtype)
    config, directory, source = _resolve(name_or_path, pretrained)
    cls = model_class(config, task)  # the task check
    outputs_changed = out_features is not None or out_indices is not None
    if outputs_changed:
        config = _backbone_outputs(cls, config, task, out_features, out_indices)
    where = _config_file(name_or_path, directory, source)

    if directory is None:
        dtype = _auto_dtype(config, None) if dtype == "auto" else dtype
        model = _build(cls, config, where)
        model.init_weights()
    else:
        state = read_state_dict(directory)
        dtype = _auto_dtype(config, state) if dtype == "auto" else dtype
        with torch.device("meta"):  # thread-local; a buffer added to a model later would be caught by _check_no_meta
            model = _build(cls, config, where)
        state, to_init = _match_state_dict(model, state, config, source, outputs_changed)
        state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        del state
        _init_missing(model, to_init, device, dtype)
        _check_no_meta(model, source)
    model.to(device=device, dtype=dtype)
    model.eval()
    hub.attach_source(model, str(name_or_path), directory, config)  # for processor_for / save_pretrained / predict
    if fused or cuda_graphs:
        _fuse(model, fused, cuda_graphs)
    return model
