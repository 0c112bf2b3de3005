"""Find pretrained weights for an HF repo id: the local HF cache first (offline), then huggingface_hub if installed.

Cache location, as huggingface_hub resolves it: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``. Layout: ``models--{org}--{name}/refs/main`` holds a commit hash and
``models--{org}--{name}/snapshots/{hash}/`` the files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# preprocessing and tokenizer files travel with the weights (fastvit.processor_for, fastvit predict --labels)
EXTRA_FILES = ["preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
_SAFETENSORS_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", *EXTRA_FILES]
_BIN_PATTERNS = ["config.json", "pytorch_model.bin*", *EXTRA_FILES]


def hub_cache_dir() -> Path:
    """The HF hub cache directory (not created)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def has_weights(directory: Path) -> bool:
    """Whether ``directory`` holds config.json and one of the weight files fastvit reads."""
    return (directory / "config.json").is_file() and any((directory / f).is_file() for f in WEIGHT_FILES)


def find_cached(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot directory of ``repo_id`` with config and weights, or None. Prefers ``refs/<revision>``."""
    repo_dir = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if has_weights(snap):
            return snap
    # no usable ref: the most recently written complete snapshot
    complete = [d for d in snapshots.iterdir() if d.is_dir() and has_weights(d)]
    return max(complete, key=lambda d: d.stat().st_mtime) if complete else None


def _how_to_get(repo_id: str) -> str:
    return (
        f"To use pretrained weights of {repo_id!r}: install the download extra (pip install 'fastvit[hub]'), "
        f"or put the HF snapshot in the cache at {hub_cache_dir()} (e.g. `huggingface-cli download {repo_id}`), "
        "or pass a local directory with config.json and model.safetensors / pytorch_model.bin to fastvit.load; or use "
        "pretrained=False for random weights."
    )


def download(repo_id: str, revision: str = "main") -> Path:
    """Download config and weights (safetensors preferred, else .bin) with huggingface_hub; returns the snapshot."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(
            f"no cached weights for {repo_id!r} and huggingface_hub is not installed. " + _how_to_get(repo_id)
        ) from e
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_SAFETENSORS_PATTERNS))
        if not has_weights(path):
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_BIN_PATTERNS))
    except Exception as e:  # network, auth, offline mode, missing repo: all end here with the same advice
        raise FileNotFoundError(
            f"could not download {repo_id!r}: {type(e).__name__}: {e}. " + _how_to_get(repo_id)
        ) from e
    if not has_weights(path):
        raise FileNotFoundError(
            f"{repo_id!r} has no config.json with safetensors or pytorch_model.bin weights at {path}"
        )
    return path


def find_weights(repo_id: str, revision: str = "main") -> Path:
    """The local directory with config.json + weights for ``repo_id``: cache first, then a download if possible."""
    cached = find_cached(repo_id, revision)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(f"no cached weights for {repo_id!r} and HF_HUB_OFFLINE is set. " + _how_to_get(repo_id))
    return download(repo_id, revision)


@dataclass(frozen=True)
class CheckpointSource:
    """Where a model from ``fastvit.load`` came from (``model.fastvit_source``): used by ``processor_for``,
    ``save_pretrained`` (every config.json field is kept) and ``predict`` (the checkpoint's tokenizer.json)."""

    name: str  # what was passed to fastvit.load
    directory: Path | None  # the checkpoint directory; None for random weights
    config: dict  # config.json as read
    preprocessor_config: dict | None  # preprocessor_config.json as read, None when absent

    def file(self, name: str) -> Path | None:
        """``directory/name`` when it exists."""
        path = self.directory / name if self.directory is not None else None
        return path if path is not None and path.is_file() else None


def attach_source(model, name: str, directory: str | os.PathLike | None, config: dict) -> None:
    """Record on ``model.fastvit_source`` where it came from, reading the checkpoint's preprocessor_config.json."""
    directory = Path(directory) if directory is not None else None
    pre = None
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        path = directory / "preprocessor_config.json"
        try:
            pre = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot parse {path}: {e}") from e
    model.fastvit_source = CheckpointSource(str(name), directory, dict(config), pre)


__all__ = [
    "hub_cache_dir",
    "find_cached",
    "find_weights",
    "download",
    "has_weights",
    "attach_source",
    "CheckpointSource",
    "WEIGHT_FILES",
]
