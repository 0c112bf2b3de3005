"""Embed image files: ``fastvit embed MODEL INPUT... --out FILE`` and :func:`embed` (``fastvit.embed``).

(The module is ``fastvit.embedding``, not ``fastvit.embed``: a submodule of that name would shadow the function.)

    result = fastvit.embed("dinov2-small", ["photos/"], out="photos.parquet")   # resumable, skips bad files
    paths, vectors = fastvit.read_embeddings("photos.parquet")

Pipeline per batch (the pieces are public so that other engines, e.g. a Ray actor, reuse them):
``load_image`` (bytes/path -> RGB PIL) -> ``ImageProcessor`` (HF-exact ``pixel_values``) -> :class:`Embedder`
(model forward + pooling [+ L2 normalisation] -> float32 [B, D]). :func:`embed` runs it with a DataLoader whose
workers decode and preprocess, pinned memory and non-blocking copies, fixed-size batches (the last one padded with
zeros and trimmed: CUDA graphs / compile never see a new shape) and, on CUDA with torchvision importable, JPEG decode
on the GPU (nvJPEG) + the batched tensor path of the processor.

Output (rows in input order, float32):
  * Parquet (``--out x.parquet`` or a directory): a directory of ``part-NNNNN.parquet`` files, columns ``path``
    (string) and ``embedding`` (fixed_size_list<float32>[D]), file metadata ``model``, ``pooling``, ``dtype``,
    ``normalize``, ``dim``, ``fastvit_version``. Each part is written to a temporary name and renamed when complete,
    so a killed process leaves only complete parts: it loses at most the chunk it was writing.
    ``pyarrow.parquet.read_table(dir)`` / ``pandas.read_parquet(dir)`` read the directory as one table.
  * NumPy (``--out x.npy``): ``x.npy`` [N, D] float32, ``x.paths.txt`` (one path per line), ``x.meta.json``. Rows
    are appended per chunk, then the paths, then the row count in the .npy header; on restart, rows beyond the header
    count (a chunk torn by a kill) are cut off.
Intermediate layers (``--layers 8,11`` / ``layers=[8, 11]``, block indices of ``forward_intermediates``, negative
from the end): each layer's tokens after the tower's final norm (as DINOv2's ``get_intermediate_layers``), pooled
with ``cls``, ``mean`` (patch tokens; ConvNeXt: the stage map) or ``cls+mean``, concatenated in layer order (file
metadata ``layers``); the blocks after the last requested one do not run.
Rerunning with the same ``--out`` skips the inputs already written and appends the rest (same model, pooling, dtype,
normalisation and layers required). Unreadable, truncated, empty or non-image files are skipped with one warning
each and listed in the result.
"""

from __future__ import annotations

import glob
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .preprocess import ImageProcessor, load_image, processor_for

__all__ = [
    "embed",
    "Embedder",
    "EmbedResult",
    "collect_inputs",
    "read_embeddings",
    "default_pool",
    "POOLS",
    "DTYPES",
]

POOLS = ("cls", "mean", "cls+mean", "pooler", "image_embeds")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
PIPELINE_EXTRA = "pip install 'fastvit[pipeline]'"


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ImportError(f"Parquet output needs pyarrow: {PIPELINE_EXTRA} (or write .npy with --out x.npy)") from e
    return pyarrow


# ---------------------------------------------------------------------------------------------------------- inputs


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (recursive, image extensions only), globs, and ``.txt`` lists of paths.

    Order: as given, folders and globs sorted; duplicates dropped. A missing file or empty glob is an error.
    """
    exts = _image_extensions()
    out: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        elif path.is_file() and path.suffix.lower() in (".txt", ".lst") and path.suffix.lower() not in exts:
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            found = [ln for ln in lines if ln and not ln.startswith("#")]
            missing = [p for p in found if not Path(p).expanduser().exists()]
            if missing:
                raise FileNotFoundError(f"{path} lists {len(missing)} paths that do not exist, e.g. {missing[0]!r}")
        elif path.is_file():
            found = [str(path)]
        elif any(c in text for c in "*?["):
            found = sorted(p for p in glob.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"no files match {text!r}")
        else:
            raise FileNotFoundError(f"input {text!r} is not a file, folder or glob that matches anything")
        out.extend(found)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------------- pooling


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or getattr(type(config), "model_type", "") or ""


def default_pool(model: nn.Module) -> str:
    """Per family: DINOv2 ``cls``, AltCLIP ``image_embeds`` (``pooler`` for a vision tower alone), ConvNeXt
    ``pooler`` (LayerNorm of the global average), ViT-Hybrid ``cls``."""
    mt = _model_type(model)
    if hasattr(model, "visual_projection"):
        return "image_embeds"
    if mt.startswith("altclip") or mt.startswith("convnext"):
        return "pooler"
    return "cls"


def _base(model: nn.Module) -> nn.Module:
    """The base model under HF's ``base_model_prefix`` for a head model (classifier), else the model."""
    prefix = getattr(type(model), "base_model_prefix", "") or ""
    sub = getattr(model, prefix, None) if prefix else None
    return sub if isinstance(sub, nn.Module) else model


def pooled_features(model: nn.Module, pixel_values: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, D] image features of ``model`` for ``pool`` (see ``POOLS``); a clear error when the model has none."""
    name = type(model).__name__
    if hasattr(model, "visual_projection") and hasattr(model, "get_image_features"):  # CLIP-style dual tower
        if pool == "image_embeds":
            return model.get_image_features(pixel_values=pixel_values)
        out = model.vision_model(pixel_values=pixel_values)
    elif pool == "image_embeds":
        raise ValueError(f"pool 'image_embeds' needs a CLIP model with a visual projection; {name} has none")
    else:
        out = _base(model)(pixel_values=pixel_values)
    if pool == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"{name} has no pooler output (e.g. a classifier's base); use --pool cls or mean")
        return pooled
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"{name} gives no last_hidden_state (a backbone?): load it with task='features'")
    if hidden.ndim == 4:  # ConvNeXt feature map [B, C, h, w]
        if pool != "mean":
            raise ValueError(f"{name} is convolutional (no CLS token): use --pool pooler or mean, not {pool!r}")
        return hidden.mean(dim=(-2, -1))
    prefix = getattr(getattr(_base(model), "config", None), "num_prefix_tokens", 1)  # CLS (+ DINOv2 registers)
    return _pool_tokens(hidden[:, :prefix], hidden[:, prefix:], pool)


def _pool_tokens(prefix: torch.Tensor, patches: torch.Tensor, pool: str) -> torch.Tensor:
    """``cls`` / ``mean`` (of the patch tokens, as HF's DINOv2 head) / ``cls+mean`` of ``[B, P, D]`` + ``[B, N, D]``."""
    cls, mean = prefix[:, 0], patches.mean(dim=1)  # [B, D]
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=-1)}[pool]


LAYER_POOLS = ("cls", "mean", "cls+mean")


def _convolutional(model: nn.Module) -> bool:
    return _model_type(model).startswith("convnext")


def layer_features(model: nn.Module, pixel_values: torch.Tensor, pool: str, layers: Sequence[int]) -> torch.Tensor:
    """``[B, sum of D]``: the intermediate ``layers`` (block indices, after the final norm) pooled with ``pool``
    (``LAYER_POOLS``), concatenated in layer order; nothing runs after the last of them."""
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"{type(model).__name__} has no intermediate layers (forward_intermediates)")
    if pool not in LAYER_POOLS or (_convolutional(model) and pool != "mean"):
        allowed = ("mean",) if _convolutional(model) else LAYER_POOLS
        raise ValueError(
            f"pool {pool!r} does not apply to the intermediate layers of {type(model).__name__}: {allowed}"
        )
    if _convolutional(model):  # stage maps, flattened to [B, H*W, C]
        maps = model.forward_intermediates(
            pixel_values, list(layers), norm=True, output_fmt="NLC", intermediates_only=True
        )
        return torch.cat([m.mean(dim=1) for m in maps], dim=-1)
    outs = model.forward_intermediates(
        pixel_values, list(layers), norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    return torch.cat([_pool_tokens(prefix, patches, pool) for patches, prefix in outs], dim=-1)


class Embedder:
    """Model + preprocessing + pooling: the per-batch pieces of :func:`embed`, reusable in other engines.

    ``Embedder("dinov2-small")`` loads the fused model (``fastvit.load``); an ``nn.Module`` is used as given.
    ``decode`` (bytes or path -> RGB PIL), ``preprocess`` (images -> CPU float32 pixel values), ``embed_pixels``
    (pixel values -> float32 [B, D] on CPU) and ``__call__`` (images -> [B, D] numpy) are independent steps.
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        *,
        pool: str | None = None,
        processor: ImageProcessor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        normalize: bool = False,
        fused: bool = True,
        layers: Sequence[int] | None = None,
    ) -> None:
        if device is None:  # a given model stays where it is; a name goes to CUDA when there is one
            device = next(model.parameters()).device if isinstance(model, nn.Module) else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        if isinstance(model, nn.Module):
            self.model_name = getattr(getattr(model, "fastvit_source", None), "name", None) or type(model).__name__
            self.dtype = dtype or next(model.parameters()).dtype
            self.model = model.to(device=self.device, dtype=self.dtype).eval()
        else:
            from .loading import load

            self.model_name = os.fspath(model)
            self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
            self.model = load(model, fused=fused, device=self.device, dtype=self.dtype)
        self.layers = None if layers is None else [int(i) for i in layers]
        if self.layers is not None and not self.layers:
            raise ValueError("layers is empty: give block indices, e.g. [-4, -3, -2, -1]")
        default = ("mean" if _convolutional(self.model) else "cls") if self.layers else default_pool(self.model)
        self.pool = pool or default
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {POOLS}")
        self.processor = processor or processor_for(self.model)
        self.normalize = normalize

    decode = staticmethod(load_image)

    def preprocess(self, images) -> torch.Tensor:
        """Images (PIL, paths, bytes, uint8 arrays) -> float32 [B, 3, H, W] on CPU, HF-exact."""
        return self.processor(images)

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """float32 [B, D] on CPU (L2-normalised when ``normalize``) for pixel values on any device."""
        x = pixel_values.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.layers is not None:
            feats = layer_features(self.model, x, self.pool, self.layers).float()
        else:
            feats = pooled_features(self.model, x, self.pool).float()
        if self.normalize:
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu()

    def __call__(self, images) -> np.ndarray:
        return self.embed_pixels(self.preprocess(images)).numpy()

    @property
    def metadata(self) -> dict[str, str]:
        """What identifies these embeddings (stored in the output files)."""
        from . import __version__

        meta = {
            "model": self.model_name,
            "pooling": self.pool,
            "dtype": str(self.dtype).removeprefix("torch."),
            "normalize": str(bool(self.normalize)).lower(),
            "fastvit_version": __version__,
        }
        if self.layers is not None:
            meta["layers"] = ",".join(map(str, self.layers))
        return meta


# -------------------------------------------------------------------------------------------------------- loading


def _is_jpeg(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


class _Images(torch.utils.data.Dataset):
    """Item i: (i, float32 [3, H, W] pixels or None, raw JPEG bytes as uint8 tensor or None, error or None)."""

    def __init__(self, paths: Sequence[str], processor: ImageProcessor, raw_jpeg: bool) -> None:
        self.paths, self.processor, self.raw_jpeg = list(paths), processor, raw_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            if self.raw_jpeg and _is_jpeg(path):
                data = Path(path).read_bytes()
                return i, None, torch.frombuffer(bytearray(data), dtype=torch.uint8), None
            return i, self.processor.preprocess_one(load_image(path)), None, None
        except Exception as e:  # noqa: BLE001 - one bad file never stops the run
            reason = str(e).removeprefix(f"{path}: ")
            return i, None, None, reason or type(e).__name__


@dataclass
class _Batch:
    indices: list[int]  # dataset index per slot that holds an image
    pixels: torch.Tensor  # [B, 3, H, W], zeros in unused slots
    slots: list[int]  # slot of each entry of indices
    jpegs: list[tuple[int, int, torch.Tensor]]  # (slot, index, bytes) still to decode on the GPU
    errors: list[tuple[int, str]]  # (index, reason)

    def pin_memory(self):
        self.pixels = self.pixels.pin_memory()
        return self


class _Collate:
    """Fixed-size batches: ``batch_size`` slots of ``shape`` (last batch padded with zeros)."""

    def __init__(self, batch_size: int, shape: tuple[int, int]) -> None:
        self.batch_size, self.shape = batch_size, shape

    def __call__(self, items) -> _Batch:
        pixels = torch.zeros(self.batch_size, 3, *self.shape)
        b = _Batch([], pixels, [], [], [])
        for slot, (i, px, jpeg, err) in enumerate(items):
            if err is not None:
                b.errors.append((i, err))
                continue
            b.indices.append(i)
            b.slots.append(slot)
            if jpeg is not None:
                b.jpegs.append((slot, i, jpeg))
            else:
                pixels[slot] = px
        return b


def _gpu_decode_available(device: torch.device, processor: ImageProcessor) -> bool:
    if device.type != "cuda" or processor.resample not in (0, 2, 3):
        return False
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # noqa: BLE001 - torchvision absent or built for another torch
        return False
    return True


def _decode_jpegs_on_gpu(batch: _Batch, processor: ImageProcessor, device: torch.device, paths: Sequence[str]):
    """Fill the JPEG slots of ``batch`` (nvJPEG + the tensor path); files nvJPEG rejects go through PIL on CPU."""
    if not batch.jpegs:
        return
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [data for _, _, data in batch.jpegs]
    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch call: decode one by one
        images = []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(None)
    for (slot, i, _), image in zip(batch.jpegs, images, strict=True):
        try:
            if image is None:
                pixels = processor.preprocess_one(load_image(paths[i]))
            else:
                pixels = processor.preprocess_tensors([image], device=device)[0]
            batch.pixels[slot] = pixels.to(batch.pixels.device)
        except Exception as e:  # noqa: BLE001
            k = batch.indices.index(i)
            del batch.indices[k], batch.slots[k]
            batch.errors.append((i, str(e).removeprefix(f"{paths[i]}: ")))
    batch.jpegs = []


# --------------------------------------------------------------------------------------------------------- writers


class _ParquetParts:
    """A directory of ``part-NNNNN.parquet`` files, each written under a temporary name and renamed when complete."""

    def __init__(self, directory: Path, metadata: dict[str, str]) -> None:
        self.pa = _require_pyarrow()
        self.dir, self.metadata = directory, metadata
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"--out {self.dir} exists and is a file; Parquet output is a directory of parts")
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob("*.parquet.tmp"):  # torn by a kill: never renamed, never counted
            tmp.unlink()
        self.parts = sorted(self.dir.glob("part-*.parquet"))

    def done(self) -> list[str]:
        import pyarrow.parquet as pq

        paths: list[str] = []
        for part in self.parts:
            meta = {k.decode(): v.decode() for k, v in (pq.read_schema(part).metadata or {}).items()}
            _check_same(meta, self.metadata, part)
            paths.extend(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return paths

    def write(self, paths: list[str], rows: np.ndarray) -> None:
        import pyarrow.parquet as pq

        pa = self.pa
        dim = rows.shape[1]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(rows.astype(np.float32, copy=False).ravel()), dim)
        meta = {**self.metadata, "dim": str(dim)}
        table = pa.table({"path": pa.array(paths, pa.string()), "embedding": emb}).replace_schema_metadata(meta)
        n = int(self.parts[-1].stem.split("-")[1]) + 1 if self.parts else 0
        final = self.dir / f"part-{n:05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.parts.append(final)


_NPY_HEADER = 128  # fixed header length: the row count is rewritten in place


def _npy_header(rows: int, dim: int) -> bytes:
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    head = b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little")
    body = text.encode("latin1").ljust(_NPY_HEADER - 10 - 1) + b"\n"
    return head + body


class _NpyAppender:
    """``x.npy`` + ``x.paths.txt`` + ``x.meta.json``, appended per chunk; the .npy header holds the committed rows."""

    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        self.path, self.metadata = path, metadata
        self.paths_file = path.with_suffix(".paths.txt")
        self.meta_file = path.with_suffix(".meta.json")
        self.rows = 0
        self.dim: int | None = None
        if path.exists():
            if not self.meta_file.is_file():
                raise ValueError(f"{path} exists but {self.meta_file} does not: not written by fastvit embed")
            meta = json.loads(self.meta_file.read_text())
            _check_same(meta, metadata, self.meta_file)
            with open(path, "rb") as f:
                np.lib.format.read_magic(f)
                (self.rows, self.dim), _, _ = np.lib.format.read_array_header_1_0(f)
            with open(path, "rb+") as f:  # cut rows a kill left beyond the committed count
                f.truncate(_NPY_HEADER + self.rows * self.dim * 4)

    def done(self) -> list[str]:
        if not self.path.exists():
            return []
        lines = self.paths_file.read_text().splitlines() if self.paths_file.exists() else []
        if len(lines) < self.rows:
            raise ValueError(f"{self.paths_file} has {len(lines)} paths but {self.path} {self.rows} rows")
        lines = lines[: self.rows]
        self.paths_file.write_text("".join(p + "\n" for p in lines))
        return lines

    def write(self, paths: list[str], rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if self.dim is None:
            self.dim = rows.shape[1]
            self.meta_file.write_text(json.dumps({**self.metadata, "dim": str(self.dim)}, indent=1) + "\n")
            with open(self.path, "wb") as f:
                f.write(_npy_header(0, self.dim))
            self.paths_file.write_text("")
        elif rows.shape[1] != self.dim:
            raise ValueError(f"embedding width {rows.shape[1]} does not match {self.path}'s {self.dim}")
        with open(self.path, "rb+") as f:
            f.seek(_NPY_HEADER + self.rows * self.dim * 4)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
            with open(self.paths_file, "a") as pf:
                pf.write("".join(p + "\n" for p in paths))
                pf.flush()
                os.fsync(pf.fileno())
            self.rows += len(rows)
            f.seek(0)
            f.write(_npy_header(self.rows, self.dim))  # commit
            f.flush()
            os.fsync(f.fileno())


def _check_same(found: dict[str, str], want: dict[str, str], where: Path) -> None:
    keys = ("model", "pooling", "dtype", "normalize", "layers")  # absent (None) on both sides without --layers
    diff = [f"{k}: {found.get(k)!r} there vs {want.get(k)!r} now" for k in keys if found.get(k) != want.get(k)]
    if diff:
        raise ValueError(f"cannot append to {where}: it was written with other settings ({'; '.join(diff)})")


def _writer(out: str | os.PathLike, metadata: dict[str, str]):
    path = Path(out).expanduser()
    if path.suffix.lower() == ".npy":
        return _NpyAppender(path, metadata)
    return _ParquetParts(path, metadata)


def read_embeddings(out: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths, float32 [N, D]) from an ``embed`` output (Parquet directory or .npy)."""
    path = Path(out).expanduser()
    if path.suffix.lower() == ".npy":
        rows = np.load(path)
        paths = path.with_suffix(".paths.txt").read_text().splitlines()
        return paths[: len(rows)], rows
    _require_pyarrow()
    import pyarrow.parquet as pq

    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not parts:
        return [], np.zeros((0, 0), np.float32)
    tables = [pq.read_table(p) for p in parts]
    paths = [s for t in tables for s in t.column("path").to_pylist()]
    rows = np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])
    return paths, rows.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------------------ embed


@dataclass
class EmbedResult:
    """What :func:`embed` did. ``embeddings``/``paths``: the rows of this run (all rows when ``out`` is None)."""

    out: str | None
    paths: list[str]
    embeddings: np.ndarray | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    resumed: int = 0  # inputs already in the output, not recomputed
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"{self.images} images in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s end to end), "
            f"{len(self.skipped)} skipped"
        )
        return text + (f", {self.resumed} already in {self.out}" if self.resumed else "")


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(f"no progress bar: tqdm is not installed ({PIPELINE_EXTRA})", stacklevel=3)
        return None
    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1)


def embed(
    model: nn.Module | str | os.PathLike,
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    pool: str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    num_workers: int | None = None,
    normalize: bool = False,
    fused: bool = True,
    chunk_size: int = 4096,
    gpu_decode: bool | None = None,
    progress: bool = False,
    layers: Sequence[int] | None = None,
) -> EmbedResult:
    """Embed image files with ``model`` (name, path or nn.Module); see the module docstring.

    Args:
        model: a registered name / checkpoint directory (loaded fused) or a loaded model.
        inputs: files, folders (recursive), globs, ``.txt`` lists of paths (see :func:`collect_inputs`).
        out: ``*.npy``, or a Parquet directory (``*.parquet`` or any other name); None keeps the result in memory.
        pool: ``cls``, ``mean``, ``cls+mean``, ``pooler``, ``image_embeds`` (default per family: ``default_pool``).
        batch_size: images per forward (every forward has exactly this batch size).
        device, dtype: where and in which precision the model runs (default CUDA + bf16 when available, else CPU
            + fp32; a given nn.Module keeps its dtype unless ``dtype`` is set).
        num_workers: DataLoader worker processes decoding and preprocessing (default: up to 8 of the CPUs; 0 decodes
            in this process).
        normalize: L2-normalise each embedding.
        chunk_size: rows per written chunk (what a crash can lose at most).
        gpu_decode: decode JPEGs with nvJPEG on the GPU (default: on CUDA when torchvision imports). Its pixels differ
            slightly from PIL's (other IDCT, tensor-path resize), so pass False for HF-exact preprocessing.
        progress: a tqdm progress bar with images/s.
        layers: embed these intermediate layers (block indices, negative from the end) instead of the final
            features: each after the final norm, pooled with ``pool`` (``cls``, ``mean``, ``cls+mean``), concatenated.
    Returns:
        :class:`EmbedResult` (rows of this run, skipped files with reasons, timing).
    """
    t0 = time.perf_counter()
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = collect_inputs(inputs)
    embedder = Embedder(model, pool=pool, device=device, dtype=dtype, normalize=normalize, fused=fused, layers=layers)
    processor = embedder.processor
    shape = processor.output_size
    if shape is None:
        raise ValueError("the model's preprocessing has no fixed output size (no center crop): cannot batch")

    writer = _writer(out, embedder.metadata) if out is not None else None
    done = set(writer.done()) if writer is not None else set()
    todo = [p for p in paths if p not in done]
    resumed = len(paths) - len(todo)

    if gpu_decode is None:
        gpu_decode = _gpu_decode_available(embedder.device, processor)
    elif gpu_decode and not _gpu_decode_available(embedder.device, processor):
        raise ValueError("gpu_decode=True needs a CUDA device, an importable torchvision and a bilinear/bicubic resize")
    if num_workers is None:
        num_workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    cuda = embedder.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _Images(todo, processor, raw_jpeg=gpu_decode),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_Collate(batch_size, shape),
        pin_memory=cuda,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )

    bar = _progress(len(todo), progress)
    kept_paths: list[str] = []
    kept_rows: list[np.ndarray] = []
    pending_paths: list[str] = []
    pending_rows: list[np.ndarray] = []
    pending = 0
    skipped: list[tuple[str, str]] = []

    def flush() -> None:
        nonlocal pending
        if pending and writer is not None:
            writer.write(pending_paths[:], np.concatenate(pending_rows))
        pending_paths.clear()
        pending_rows.clear()
        pending = 0

    try:
        for batch in loader:
            if gpu_decode:
                batch.pixels = batch.pixels.to(embedder.device, non_blocking=True)
                _decode_jpegs_on_gpu(batch, processor, embedder.device, todo)
            for i, reason in sorted(batch.errors):
                warnings.warn(f"skipped {todo[i]}: {reason}", stacklevel=2)
                skipped.append((todo[i], reason))
            if batch.indices:
                feats = embedder.embed_pixels(batch.pixels)[batch.slots].numpy()  # padded slots trimmed
                names = [todo[i] for i in batch.indices]
                kept_paths.extend(names)
                if writer is None:
                    kept_rows.append(feats)
                else:
                    pending_paths.extend(names)
                    pending_rows.append(feats)
                    pending += len(names)
                    if pending >= chunk_size:
                        flush()
            if bar is not None:
                bar.update(len(batch.indices) + len(batch.errors))
                bar.set_postfix(skipped=len(skipped), refresh=False)
        flush()
    except KeyboardInterrupt:
        flush()  # keep what was computed; a kill (SIGKILL) loses at most this chunk
        raise
    finally:
        if bar is not None:
            bar.close()
    rows = np.concatenate(kept_rows) if kept_rows else None
    if writer is None and rows is None:
        rows = np.zeros((0, 0), np.float32)
    return EmbedResult(
        out=None if out is None else os.fspath(out),
        paths=kept_paths,
        embeddings=rows,
        skipped=skipped,
        resumed=resumed,
        seconds=time.perf_counter() - t0,
    )
