"""Find pretrained weights for an HF repo id: the local HF cache first (offline), then huggingface_hub if installed.

Cache location, as huggingface_hub resolves it: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``. Layout: ``models--{org}--{name}/refs/main`` holds a commit hash and
``models--{org}--{name}/snapshots/{hash}/`` the files.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SAFETENSORS_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_BIN_PATTERNS = ["config.json", "pytorch_model.bin*"]


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


__all__ = ["hub_cache_dir", "find_cached", "find_weights", "download", "has_weights", "WEIGHT_FILES"]
