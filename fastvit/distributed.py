"""``fastvit embed`` on many processes: ``torchrun`` ranks (here) or a Ray cluster (``--ray``, :mod:`fastvit.ray`).

    torchrun --nproc-per-node 8 -m fastvit embed dinov2-base photos/ --out photos.parquet
    fastvit embed dinov2-base photos/ --out photos.parquet --ray --num-gpus 1 [--address auto] [--actors 8]

torchrun: every rank lists the inputs (the same list on every rank: as given, folders and globs sorted), drops
those already written (all ranks read the same parts before any rank writes) and embeds its share of the rest, a
contiguous slice (rank r of W: rows ``r*N//W`` to ``(r+1)*N//W``): no duplicates, no gaps, and a resumed run's work
is balanced too. Each rank writes its own parts to
``OUT/_ranks/rank-RRRRR/`` (ignored by ``pyarrow``/``pandas`` readers: leading underscore); when every rank is done,
rank 0 moves them into ``OUT`` in rank order, so ``OUT`` is the same directory of ``part-NNNNN.parquet`` files (same
columns, metadata and, for a fresh run, row order) as single-process ``fastvit embed`` writes. A rerun (any number of
ranks, or single-process) skips the inputs already in ``OUT`` or in a rank directory left by a killed run. The
ranks talk over gloo (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` from torchrun) only to wait for each other and to
gather the summary; ``OUT`` must be on a filesystem every rank sees. Rank r runs on ``cuda:LOCAL_RANK`` when CUDA is
available, else on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fastvit.embedding import Embedder, EmbedResult, _check_same, _ParquetParts, collect_inputs, embed

__all__ = ["world", "share", "embed_torchrun", "add_scale_out_arguments", "scale_out_requested", "cmd_embed"]

RANKS_DIR = "_ranks"


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def share(paths: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Rank ``rank``'s contiguous slice of ``paths``; the slices of ranks 0..W-1 are disjoint and cover ``paths``."""
    n = len(paths)
    return list(paths[rank * n // world_size : (rank + 1) * n // world_size])


def _paths_in(directory: Path, metadata: dict[str, str]) -> list[str]:
    """Paths in ``directory``'s complete parts (read only; parts written with other settings are an error)."""
    import pyarrow.parquet as pq

    out: list[str] = []
    for part in sorted(directory.glob("part-*.parquet")):
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(part).metadata or {}).items()}
        _check_same(meta, metadata, part)
        out.extend(pq.read_table(part, columns=["path"]).column("path").to_pylist())
    return out


def _merge(out: _ParquetParts) -> None:
    """Move the parts of every rank directory into ``out`` (rank order, then part order) and remove the directories."""
    ranks = out.dir / RANKS_DIR
    for directory in sorted(ranks.glob("rank-*")):
        for part in sorted(directory.glob("part-*.parquet")):
            n = int(out.parts[-1].stem.split("-")[1]) + 1 if out.parts else 0
            final = out.dir / f"part-{n:05d}.parquet"
            os.replace(part, final)
            out.parts.append(final)
        for tmp in directory.glob("*.tmp"):
            tmp.unlink()
        directory.rmdir()
    if ranks.is_dir():
        ranks.rmdir()


def embed_torchrun(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    fused: bool = True,
    num_workers: int | None = None,
    **kwargs,
) -> EmbedResult:
    """This rank's part of a torchrun ``fastvit embed`` (see the module docstring); every rank must call it.

    Args:
        model: a registered name or checkpoint directory (each rank loads it on its own device).
        inputs, out: as :func:`fastvit.embed`; ``out`` is a Parquet directory.
        device: ``cuda`` (this rank's GPU, ``cuda:LOCAL_RANK``) or ``cpu``; default: cuda when available.
        num_workers: decoding workers per rank (default: the CPUs shared by this machine's ranks, at most 8).
        dtype, fused, **kwargs: as :func:`fastvit.embed` (``pool``, ``batch_size``, ``normalize``, ``chunk_size``,
            ``gpu_decode``, ``layers``, ``progress``).
    Returns:
        On rank 0 the totals over all ranks (``paths``: the rows written by this run, rank by rank), on the other
        ranks their own; ``embeddings`` None (the rows are in ``out``).
    """
    import torch.distributed as dist

    from fastvit.loading import load

    t0 = time.perf_counter()
    rank, world_size, local_rank = world()
    kwargs["progress"] = kwargs.get("progress", False) and rank == 0  # one progress bar
    out = Path(out).expanduser()
    if out.suffix.lower() == ".npy":
        raise ValueError(f"--out {out}: distributed runs write Parquet (a directory of parts), not .npy")
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("device='cuda': no CUDA GPU is available; use device='cpu'")
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if num_workers is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        num_workers = min(8, max(0, ((os.cpu_count() or 1) - local_world) // local_world))
    own_group = not dist.is_initialized()
    if own_group:
        # barriers and the summary only (small CPU objects); ranks wait for the slowest at the end
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        paths = collect_inputs(inputs)
        dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
        loaded = load(model, fused=fused, device=dev, dtype=dtype)
        embedder_options = {k: kwargs[k] for k in ("pool", "normalize", "layers") if k in kwargs}
        metadata = Embedder(loaded, **embedder_options).metadata
        merged = _ParquetParts(out, metadata) if rank == 0 else None  # rank 0 owns OUT (cleans torn .tmp parts)
        dist.barrier()
        ranks = out / RANKS_DIR
        done = set(_paths_in(out, metadata))
        for directory in sorted(ranks.glob("rank-*")) if ranks.is_dir() else []:
            done.update(_paths_in(directory, metadata))
        remaining = [p for p in paths if p not in done]  # the same list on every rank
        todo = share(remaining, rank, world_size)
        dist.barrier()  # every rank has read the rank directories before any rank writes to its own
        if todo:
            result = embed(loaded, todo, out=ranks / f"rank-{rank:05d}", num_workers=num_workers, **kwargs)
            written, skipped = result.paths, result.skipped
        else:
            written, skipped = [], []
        summaries: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object((written, skipped), summaries, dst=0)
        summaries = summaries or [(written, skipped)]
        if rank == 0:
            _merge(merged)
        dist.barrier()  # OUT is complete when any rank returns
    finally:
        if own_group:
            dist.destroy_process_group()
    return EmbedResult(
        out=os.fspath(out),
        paths=[p for w, _ in summaries for p in w],
        embeddings=None,
        skipped=[s for _, sk in summaries for s in sk],
        resumed=len(paths) - len(remaining),
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------------------------------------ CLI


def add_scale_out_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray``, ``--address``, ``--num-gpus``, ``--actors`` on ``fastvit embed`` (torchrun needs no flag)."""
    group = parser.add_argument_group(
        "scale out", "Ray Data (--ray) or torchrun (torchrun --nproc-per-node N -m fastvit embed ...); Parquet output"
    )
    group.add_argument("--ray", action="store_true", help="run on a Ray cluster (pip install 'fastvit[ray]')")
    group.add_argument(
        "--address", default=None, help="Ray cluster address ('auto': this machine's cluster); default: a local one"
    )
    group.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray actor (default 0: CPU actors)")
    group.add_argument(
        "--actors", type=int, default=None, help="Ray actors (default: cluster GPUs / --num-gpus, or its CPUs)"
    )


def scale_out_requested(args: argparse.Namespace) -> bool:
    """Whether ``fastvit embed`` runs on Ray (``--ray``) or as one of several torchrun ranks."""
    return bool(getattr(args, "ray", False)) or world()[1] > 1


def cmd_embed(args: argparse.Namespace) -> int:
    """``fastvit embed`` with ``--ray`` or under torchrun; prints the summary (rank 0)."""
    from fastvit.cli import CLIError
    from fastvit.embedding import DTYPES

    common = dict(pool=args.pool, batch_size=args.batch_size, normalize=args.normalize, chunk_size=args.chunk_size)
    common.update(dtype=DTYPES[args.dtype] if args.dtype else None, fused=not args.eager, layers=args.layers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # skipped files are listed below, once each
            if args.ray:
                from fastvit.ray import embed as ray_embed

                result = ray_embed(
                    args.model, args.inputs, args.out, address=args.address, actors=args.actors,
                    num_gpus=args.num_gpus, progress=not args.quiet, **common,
                )  # fmt: skip
            else:
                result = embed_torchrun(
                    args.model, args.inputs, args.out, device=args.device, num_workers=args.num_workers,
                    gpu_decode=False if args.no_gpu_decode else None, progress=not args.quiet, **common,
                )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise CLIError(str(e).splitlines()[0], 2) from e
    if world()[0] == 0:
        for path, reason in result.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"{result.summary()}; written to {args.out}")
    return 0
