"""Embed a dataset with Ray Data: many GPUs, many machines (``pip install "fastvit[ray]"``).

    import ray
    import fastvit.ray

    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)   # or read_images(..., mode="RGB")
    ds = ds.map_batches(fastvit.ray.Embedder, fn_constructor_kwargs=dict(model="dinov2-base", batch_size=256),
                        compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1, batch_size=256)
    ds.write_parquet("s3://bucket/embeddings/")                                # columns: path, embedding

:class:`Embedder` is the per-actor callable: its constructor loads the fused model once, on the actor's GPU (Ray
sets ``CUDA_VISIBLE_DEVICES``) or on the CPU, with the model's preprocessing; ``__call__`` turns a batch into the
same batch with an ``embedding`` column. It is :class:`fastvit.embedding.Embedder` (decode, HF-exact preprocessing,
forward, pooling) wrapped for Ray's batch formats.

:func:`embed` is ``fastvit embed ... --ray``: the same on a Ray cluster, written as the single-process command writes
(Parquet parts with the same columns and metadata; resumable).

Faults: Ray Data restarts a dead actor and retries its batch (``max_restarts=-1``, ``max_task_retries=-1`` are its
defaults for actor pools; pass ``max_restarts=0`` to ``map_batches`` to fail instead); a retried batch's first
attempt produced nothing, so every row comes out exactly once. An unreadable image skips that row only (see
:class:`Embedder`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastvit.embedding import Embedder as _Embedder
from fastvit.embedding import EmbedResult, _ParquetParts, collect_inputs

__all__ = ["Embedder", "embed", "INPUT_COLUMNS"]

logger = logging.getLogger(__name__)

INPUT_COLUMNS = ("bytes", "image", "path")  # read_binary_files, read_images, a column of file paths
RAY_EXTRA = 'pip install "fastvit[ray]"'


def _require_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError(f"fastvit.ray needs Ray Data: {RAY_EXTRA}") from e
    return ray


class Embedder:
    """Callable class for ``ray.data.Dataset.map_batches``: image batch -> the batch with an ``embedding`` column.

    Args:
        model, pool, device, dtype, normalize, fused, layers: as :class:`fastvit.embedding.Embedder` (device
            default: the actor's GPU when it has one, else CPU; dtype default: bf16 on CUDA, fp32 on CPU).
        batch_size: run the model on exactly this many images per forward (larger batches are split, smaller ones
            padded with zeros and trimmed), so CUDA graphs / ``torch.compile`` see one shape. Default: the batch.
        column: the input column: ``bytes`` (``read_binary_files``), ``image`` (``read_images``: HWC uint8 arrays;
            use ``mode="RGB"``), or ``path`` (file paths, read by the actor). Default: the first of those present.
        errors: what happens to a row whose image cannot be decoded or preprocessed. ``"drop"`` (default): the row
            is left out of the output batch and logged (``skipped PATH: reason``, on the worker's log, which Ray
            forwards to the driver). ``"column"``: every row is kept, with an ``error`` column (the reason; ``""``
            when the image was read) and a NaN embedding for the failed rows.
        threads: decode/preprocess threads per actor (PIL releases the GIL); default 4 on CUDA, 1 on CPU.

    Output: the input columns except the image bytes / arrays, plus ``embedding`` (float32 [B, D]: a tensor column).
    Batches may be dicts of NumPy arrays (Ray's default) or pandas DataFrames (``batch_format="pandas"``).
    """

    def __init__(
        self,
        model,
        *,
        pool: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        normalize: bool = False,
        fused: bool = True,
        layers: Sequence[int] | None = None,
        batch_size: int | None = None,
        column: str | None = None,
        errors: str = "drop",
        threads: int | None = None,
    ) -> None:
        if errors not in ("drop", "column"):
            raise ValueError(f"errors must be 'drop' or 'column', got {errors!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if column is not None and column not in INPUT_COLUMNS:
            raise ValueError(f"column must be one of {INPUT_COLUMNS}, got {column!r}")
        self.embedder = _Embedder(
            model, pool=pool, device=device, dtype=dtype, normalize=normalize, fused=fused, layers=layers
        )
        self.shape = self.embedder.processor.output_size
        if self.shape is None:
            raise ValueError("the model's preprocessing has no fixed output size (no center crop): cannot batch")
        self.batch_size, self.column, self.errors = batch_size, column, errors
        threads = threads or (4 if self.embedder.device.type == "cuda" else 1)
        self._threads = ThreadPoolExecutor(threads) if threads > 1 else None
        self._dim: int | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """What identifies these embeddings (as ``fastvit embed`` stores in its Parquet metadata, with ``dim``)."""
        return {**self.embedder.metadata, "dim": str(self.dim)}

    @property
    def dim(self) -> int:
        """Embedding width D."""
        if self._dim is None:
            self._dim = self._forward([torch.zeros(3, *self.shape)]).shape[1]
        return self._dim

    def __call__(self, batch):
        frame = None if isinstance(batch, Mapping) else batch  # pandas DataFrame (batch_format="pandas")
        cols = {k: np.asarray(batch[k]) for k in batch} if frame is None else {k: frame[k].to_numpy() for k in frame}
        name = self._input_column(cols)
        items = cols[name] if name == "path" else cols.pop(name)  # paths stay; image bytes / arrays go
        paths = cols.get("path")
        results = list(self._map(self._pixels, items))
        ok = [i for i, (px, _) in enumerate(results) if px is not None]
        reasons = [reason for _, reason in results]
        for i, reason in enumerate(reasons):
            if reason is not None:
                logger.warning("skipped %s: %s", paths[i] if paths is not None else f"row {i}", reason)
        feats = self._forward([results[i][0] for i in ok])
        if self.errors == "drop":
            keep = np.asarray(ok, dtype=np.int64)
            out = {k: v[keep] for k, v in cols.items()}
            out["embedding"] = feats
        else:
            emb = np.full((len(results), feats.shape[1]), np.nan, np.float32)
            emb[ok] = feats
            out = {**cols, "embedding": emb, "error": np.array([r or "" for r in reasons], dtype=object)}
        if frame is None:
            return out
        import pandas as pd

        return pd.DataFrame({k: list(v) if k == "embedding" else v for k, v in out.items()})

    def _input_column(self, cols: dict) -> str:
        if self.column is not None:
            if self.column not in cols:
                raise KeyError(f"the batch has no column {self.column!r} (columns: {sorted(cols)})")
            return self.column
        for name in INPUT_COLUMNS:
            if name in cols:
                return name
        raise KeyError(f"the batch has none of the image columns {INPUT_COLUMNS} (columns: {sorted(cols)})")

    def _map(self, fn, items):
        return self._threads.map(fn, items) if self._threads is not None else map(fn, items)

    def _pixels(self, item) -> tuple[torch.Tensor | None, str | None]:
        """(float32 [3, H, W], None) for one image (bytes, path, array), or (None, why it cannot be read)."""
        try:
            if isinstance(item, (bytes, bytearray, memoryview, str, os.PathLike)):
                item = self.embedder.decode(bytes(item) if isinstance(item, memoryview) else item)
            return self.embedder.processor.preprocess_one(item), None
        except Exception as e:  # noqa: BLE001 - one bad image never stops the batch
            name = item if isinstance(item, str) else "<bytes>"
            return None, str(e).removeprefix(f"{name}: ") or type(e).__name__

    def _forward(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """float32 [N, D] for N preprocessed images, ``batch_size`` per forward (the last one padded)."""
        if not pixels:
            return np.zeros((0, self.dim), np.float32)
        step = self.batch_size or len(pixels)
        outs = []
        for start in range(0, len(pixels), step):
            chunk = torch.stack(pixels[start : start + step])  # [n, 3, H, W]
            n = len(chunk)
            if n < step:
                chunk = torch.cat([chunk, chunk.new_zeros(step - n, *chunk.shape[1:])])
            outs.append(self.embedder.embed_pixels(chunk)[:n].numpy())
        return np.concatenate(outs)


# ------------------------------------------------------------------------------------------------- fastvit embed


def _num_blocks(rows: int, batch_size: int, actors: int) -> int:
    """Input blocks: about 16 batches each, at least 4 per actor, at most one per batch."""
    batches = max(1, math.ceil(rows / batch_size))
    return min(batches, max(4 * actors, math.ceil(batches / 16)))


def _default_actors(ray, num_gpus: float) -> int:
    resources = ray.cluster_resources()
    if num_gpus:
        actors = int(resources.get("GPU", 0) // num_gpus)
        if actors < 1:
            raise ValueError(f"--num-gpus {num_gpus}: the Ray cluster has {resources.get('GPU', 0)} GPUs")
        return actors
    return max(1, int(resources.get("CPU", 1)))


def embed(
    model: str | os.PathLike | torch.nn.Module,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    actors: int | None = None,
    num_gpus: float = 0,
    batch_size: int = 32,
    chunk_size: int = 4096,
    pool: str | None = None,
    dtype: torch.dtype | str | None = None,
    normalize: bool = False,
    fused: bool = True,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> EmbedResult:
    """``fastvit embed ... --ray``: image files -> a Parquet directory like :func:`fastvit.embed`'s, on a Ray cluster.

    The driver lists the inputs, skips those already in ``out`` (resume), and writes the parts (``part-NNNNN.parquet``,
    columns ``path`` and ``embedding``, the same file metadata; rows in input order); the actors read, decode,
    preprocess and embed. Input files must be readable by every node at the same path; ``out`` only by the driver.

    Args:
        address: the Ray cluster (``"auto"``: the one this machine belongs to); default: the one this process is
            connected to, else a new local one (shut down at the end).
        actors: model replicas (default: cluster GPUs / ``num_gpus``, or the cluster's CPUs when ``num_gpus`` is 0).
        num_gpus: GPUs per actor (Ray's ``num_gpus``; 0.5 puts two actors on a GPU); 0 runs on CPUs.
        batch_size: images per forward (fixed: the last batch of a block is padded).
        chunk_size: rows per written part (what a driver crash can lose at most).
        pool, dtype, normalize, fused, layers: as :func:`fastvit.embed` (dtype default: bf16 on GPUs, else fp32).
        progress: Ray Data's progress bars.
    Returns:
        :class:`fastvit.embedding.EmbedResult` (``embeddings`` None: the rows are in ``out``).
    """
    t0 = time.perf_counter()
    ray = _require_ray()
    out = Path(out).expanduser()
    if out.suffix.lower() == ".npy":
        raise ValueError(f"--out {out}: distributed runs write Parquet (a directory of parts), not .npy")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    paths = collect_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    dtype = dtype or (torch.bfloat16 if num_gpus else torch.float32)
    options = dict(pool=pool, dtype=dtype, normalize=normalize, layers=layers)
    # the actors' metadata, computed here for the resume check (the driver loads the model once, on the CPU)
    metadata = _Embedder(model, device="cpu", fused=False, **options).metadata
    writer = _ParquetParts(out, metadata)
    done = set(writer.done())
    todo = [p for p in paths if p not in done]
    result = EmbedResult(out=os.fspath(out), paths=[], embeddings=None, resumed=len(paths) - len(todo))
    if not todo:
        result.seconds = time.perf_counter() - t0
        return result

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    try:
        ctx.execution_options.preserve_order = True  # rows in input order, as single-process embed writes them
        ctx.enable_progress_bars = progress
        actors = actors or _default_actors(ray, num_gpus)
        ds = ray.data.from_items(
            [{"path": p} for p in todo], override_num_blocks=_num_blocks(len(todo), batch_size, actors)
        )
        ds = ds.map_batches(
            Embedder,
            fn_constructor_kwargs=dict(
                model=model,
                device="cuda" if num_gpus else "cpu",
                fused=fused,
                batch_size=batch_size,
                column="path",
                errors="column",
                **options,
            ),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=num_gpus or None,
        )  # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts/max_task_retries=-1)
        for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            reasons = batch["error"]
            good = np.asarray([i for i, r in enumerate(reasons) if not r], dtype=np.int64)
            names = batch["path"].tolist()
            result.skipped.extend((names[i], str(r)) for i, r in enumerate(reasons) if r)
            if len(good):
                writer.write([names[i] for i in good], np.asarray(batch["embedding"])[good])
                result.paths.extend(names[i] for i in good)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()
    result.seconds = time.perf_counter() - t0
    return result
