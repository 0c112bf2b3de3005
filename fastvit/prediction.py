"""``fastvit predict MODEL INPUT... [--top-k 5] [--json]`` and :func:`predict` (``fastvit.predict``).

Classifiers: top-k labels from config.json's ``id2label`` (``LABEL_i`` when absent, as HF) with softmax
probabilities. AltCLIP: zero-shot over ``labels`` (texts), tokenized with the checkpoint's ``tokenizer.json`` through
the ``tokenizers`` library (transformers is not needed); probabilities are ``logits_per_image.softmax(-1)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .embedding import collect_inputs
from .preprocess import load_image, processor_for

__all__ = ["predict", "Prediction", "tokenize"]


@dataclass
class Prediction:
    """Top-k (label, probability) pairs of one image, best first."""

    path: str
    labels: list[tuple[str, float]]

    def as_dict(self) -> dict:
        return {"path": self.path, "labels": [{"label": k, "prob": p} for k, p in self.labels]}


def _tokenizer_path(model: nn.Module, tokenizer: str | os.PathLike | None) -> Path:
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return path
    source = getattr(model, "fastvit_source", None)
    found = source.file("tokenizer.json") if source is not None else None
    if found is None:
        where = f"in {source.directory}" if source is not None and source.directory else "for this model"
        raise FileNotFoundError(
            f"zero-shot labels need the checkpoint's tokenizer.json, and there is none {where}: pass tokenizer=PATH "
            "(--tokenizer), e.g. the tokenizer.json of BAAI/AltCLIP"
        )
    return found


def tokenize(
    texts: Sequence[str], tokenizer_file: str | os.PathLike, pad_id: int, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [N, L] from a tokenizer.json (its post-processor adds the special tokens)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("zero-shot labels need the tokenizers library: pip install 'fastvit[pipeline]'") from e
    tok = Tokenizer.from_file(os.fspath(tokenizer_file))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "<pad>")
    enc = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


def _label_names(model: nn.Module, n: int) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [id2label.get(i, f"LABEL_{i}") for i in range(n)]


def predict(
    model: nn.Module | str | os.PathLike,
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    top_k: int = 5,
    labels: Sequence[str] | None = None,
    tokenizer: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    fused: bool = True,
) -> list[Prediction]:
    """Top-k labels per image: a classifier's ``id2label``, or AltCLIP zero-shot over ``labels``.

    Args:
        model: a registered name / checkpoint directory (loaded fused with its default head) or a loaded model.
        inputs: image files, folders, globs, .txt lists (as ``fastvit embed``); unreadable files are skipped with a
            warning.
        top_k: how many labels per image (capped at the number of classes).
        labels: zero-shot texts (CLIP models only), e.g. ``["a photo of a cat", "a photo of a dog"]``.
        tokenizer: tokenizer.json (or its directory) for ``labels``; default: the checkpoint's.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not isinstance(model, nn.Module):
        from .loading import load

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = load(model, fused=fused, device=dev, dtype=dtype)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    name = type(model).__name__
    clip = hasattr(model, "get_image_features") and hasattr(model, "text_model")
    if clip:
        if not labels:
            raise ValueError(f"{name} is a CLIP model: pass zero-shot labels (--labels 'a cat,a dog')")
        text = model.config.text_config
        ids, mask = tokenize(
            labels, _tokenizer_path(model, tokenizer), text.pad_token_id, text.max_position_embeddings - 2
        )
        ids, mask = ids.to(device), mask.to(device)
        names = list(labels)
    else:
        if labels:
            raise ValueError(f"--labels is for CLIP zero-shot; {name} is a classifier with its own labels (id2label)")
        if not hasattr(model, "classifier"):
            raise ValueError(
                f"{name} has no classification head: load a classification checkpoint (e.g. convnext-tiny, "
                "dinov2-small-imagenet1k-1-layer), or use `fastvit embed` for features"
            )
    processor = processor_for(model)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = collect_inputs(inputs)
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        good, pixels = [], []
        for path in paths[start : start + batch_size]:
            try:
                pixels.append(processor.preprocess_one(load_image(path)))
                good.append(path)
            except Exception as e:  # noqa: BLE001 - one bad file never stops the run
                warnings.warn(f"skipped {path}: {str(e).removeprefix(f'{path}: ')}", stacklevel=2)
        if not good:
            continue
        x = torch.stack(pixels).to(device=device, dtype=dtype)
        with torch.inference_mode():
            if clip:
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=x).logits_per_image
            else:
                logits = model(pixel_values=x).logits
        probs = logits.float().softmax(-1).cpu()
        if not clip:
            names = _label_names(model, probs.shape[-1])
        k = min(top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        for path, p, i in zip(good, top.values.tolist(), top.indices.tolist(), strict=True):
            results.append(Prediction(path, [(names[j], float(q)) for j, q in zip(i, p, strict=True)]))
    return results
