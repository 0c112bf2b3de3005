"""``fastvit profile``: the device-memory traffic, FLOPs and roofline of one forward, eager vs fused; measured on CUDA.

    import fastvit
    p = fastvit.profile(model, pixel_values)       # an unpatched model: eager, and fused by patching it meanwhile
    p.fused.bytes, p.fused.flops, p.fused.launches, p.fused.roofline_s(p.gpu)
    print(p.table()); p.to_dict()                  # what `fastvit profile MODEL` prints / `--json` prints

    fastvit profile dinov2-base --batch 64 --dtype bfloat16 [--gpu h100] [--json] [--measure]

How it counts. The forward runs once on the **meta device** (shapes and dtypes, no data, no memory, no GPU: B=64 of
ViT-L costs nothing) under a ``TorchDispatchMode``, with ``fastvit_kernels._dispatch.recording`` on. Every aten op
that is not a view (nor a bare allocation) is one device operation; every Triton launch of ``fastvit_kernels`` is
one operation whose cost the kernel's file declares (``fastvit_kernels._cost``: the profiler knows no kernel names).
An op reads each input tensor once and writes each output once (the distinct elements a view addresses; gathers
such as ``embedding`` read the rows they gather); FLOPs are counted for matmuls, convolutions and attention
(2 per multiply-add; attention 4*B*H*Sq*Sk*D). On meta, ``scaled_dot_product_attention`` counts as the one fused
kernel a GPU runs (CPU and meta would decompose it into its math). A launcher's own copies and casts are aten ops.

Roofline per op: ``max(bytes / bandwidth, FLOPs / peak)`` with datasheet figures (:data:`GPUS`: memory bandwidth and
dense bf16/fp16 tensor-core throughput; fp32 ops use the fp32 figure), summed over the forward; images/s = batch /
that sum. It is a lower bound on time: real kernels reach some fraction of it, which ``--measure`` shows (CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .fused.recording import KINDS, nbytes  # the kernels' cost protocol: op kinds, bytes of a view

__all__ = ["GPU", "GPUS", "Op", "Run", "Profile", "profile", "profile_model", "build_meta", "gpu_spec", "measure"]

# --------------------------------------------------------------------------------------------------- GPU table


@dataclass(frozen=True)
class GPU:
    """Datasheet figures of one GPU: memory bandwidth (bytes/s), dense bf16/fp16 tensor and fp32 FLOP/s."""

    name: str
    bandwidth: float
    peak: float
    peak_fp32: float

    def peak_for(self, dtype: str) -> float:
        return self.peak if dtype in ("bfloat16", "float16") else self.peak_fp32

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "bandwidth": self.bandwidth,
            "peak_flops": self.peak,
            "peak_flops_fp32": self.peak_fp32,
        }


_T = 1e12
GPUS: dict[str, GPU] = {  # NVIDIA datasheets: HBM/GDDR bandwidth; dense (no sparsity) bf16 tensor; fp32 (no tensor)
    "h100": GPU("H100 SXM", 3.35e12, 989.4 * _T, 66.9 * _T),
    "h200": GPU("H200 SXM", 4.8e12, 989.4 * _T, 66.9 * _T),
    "a100": GPU("A100 SXM 80GB", 2.039e12, 312 * _T, 19.5 * _T),
    "l40s": GPU("L40S", 0.864e12, 362.05 * _T, 91.6 * _T),
    "l4": GPU("L4", 0.3e12, 121 * _T, 30.3 * _T),
    "rtx4090": GPU("RTX 4090", 1.008e12, 165.2 * _T, 82.6 * _T),
}
_GPU_ALIASES = {"h100-sxm": "h100", "h100sxm": "h100", "4090": "rtx4090", "rtx-4090": "rtx4090", "a100-80gb": "a100"}


def gpu_spec(name: str | None = "h100", *, bandwidth: float | None = None, peak: float | None = None) -> GPU:
    """The :data:`GPUS` entry for ``name`` (None: the CUDA device's, else H100), overridden by ``bandwidth``
    (bytes/s) and ``peak`` (FLOP/s, applied to 16-bit and fp32 ops alike)."""
    if name is None:
        name = _detect_gpu() or "h100"
    key = _GPU_ALIASES.get(name.lower(), name.lower())
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)} (or pass bandwidth= and peak=)")
    gpu = GPUS[key]
    if bandwidth is not None or peak is not None:
        if (bandwidth is not None and bandwidth <= 0) or (peak is not None and peak <= 0):
            raise ValueError(f"bandwidth and peak must be positive, got {bandwidth} and {peak}")
        gpu = replace(
            gpu,
            name=gpu.name + " (overridden)",
            bandwidth=bandwidth or gpu.bandwidth,
            peak=peak or gpu.peak,
            peak_fp32=peak or gpu.peak_fp32,
        )
    return gpu


def _detect_gpu() -> str | None:
    if not torch.cuda.is_available():
        return None
    device = torch.cuda.get_device_name().lower().replace(" ", "")  # e.g. "nvidiah10080gbhbm3", "nvidial4"
    for key, marker in (("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("l40s", "l40s"), ("rtx4090", "4090")):
        if marker in device:
            return key
    return "l4" if device.endswith("l4") else None


# -------------------------------------------------------------------------------------------------- the records

KIND_NAMES = {
    "gemm": "GEMM",
    "attention": "attention",
    "norm": "norm",
    "elementwise": "elementwise",
    "dwconv": "depthwise conv",
    "copy": "copies/layout",
}


@dataclass
class Op:
    """One device operation of a forward: an aten op or a Triton launch."""

    name: str  # "aten.addmm" or "triton._layer_norm_rows_kernel"
    kind: str  # one of KINDS
    read: int  # bytes
    written: int  # bytes
    flops: float
    dtype: str  # of its first floating tensor ("" if none): picks the peak
    shapes: str = ""  # its tensors, e.g. "bf16[64,197,768] bf16[768]"
    measured_s: float | None = None  # device time, with --measure

    @property
    def bytes(self) -> int:
        return self.read + self.written

    def roofline_s(self, gpu: GPU) -> float:
        return max(self.bytes / gpu.bandwidth, self.flops / gpu.peak_for(self.dtype))

    def bound(self, gpu: GPU) -> str:
        return "compute" if self.flops / gpu.peak_for(self.dtype) > self.bytes / gpu.bandwidth else "memory"

    def to_dict(self, gpu: GPU) -> dict:
        d = {
            "name": self.name,
            "kind": self.kind,
            "bytes_read": self.read,
            "bytes_written": self.written,
            "flops": self.flops,
            "roofline_s": self.roofline_s(gpu),
            "shapes": self.shapes,
        }
        if self.measured_s is not None:
            d["measured_s"] = self.measured_s
        return d


@dataclass
class Run:
    """The device operations of one forward (the eager or the fused model)."""

    ops: list[Op]

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    @property
    def flops(self) -> float:
        return float(sum(op.flops for op in self.ops))

    @property
    def launches(self) -> int:
        return len(self.ops)

    @property
    def measured(self) -> bool:
        return bool(self.ops) and all(op.measured_s is not None for op in self.ops)

    def roofline_s(self, gpu: GPU) -> float:
        return sum(op.roofline_s(gpu) for op in self.ops)

    def measured_s(self) -> float | None:
        return sum(op.measured_s for op in self.ops) if self.measured else None

    def by_kind(self, gpu: GPU) -> dict[str, dict]:
        """kind -> launches, bytes, flops, roofline_s (and measured_s), every kind present."""
        out = {k: {"launches": 0, "bytes": 0, "flops": 0.0, "roofline_s": 0.0} for k in KINDS}
        for op in self.ops:
            row = out[op.kind]
            row["launches"] += 1
            row["bytes"] += op.bytes
            row["flops"] += op.flops
            row["roofline_s"] += op.roofline_s(gpu)
            if op.measured_s is not None:
                row["measured_s"] = row.get("measured_s", 0.0) + op.measured_s
        return out

    def top(self, gpu: GPU, n: int = 10) -> list[dict]:
        """The ``n`` costliest ops, identical ops (name, shapes) grouped: count, each op's cost, total time."""
        groups: dict[tuple, dict] = {}
        for op in self.ops:
            g = groups.setdefault((op.name, op.shapes), {"op": op, "count": 0, "roofline_s": 0.0, "measured_s": 0.0})
            g["count"] += 1
            g["roofline_s"] += op.roofline_s(gpu)
            g["measured_s"] += op.measured_s or 0.0
        key = "measured_s" if self.measured else "roofline_s"
        return sorted(groups.values(), key=lambda g: -g[key])[:n]

    def to_dict(self, gpu: GPU, batch: int) -> dict:
        t = self.roofline_s(gpu)
        d = {
            "bytes": self.bytes,
            "flops": self.flops,
            "launches": self.launches,
            "roofline_s": t,
            "images_per_s": batch / t if t > 0 else None,
            "by_kind": self.by_kind(gpu),
            "ops": [op.to_dict(gpu) for op in self.ops],
        }
        if self.measured:
            d["measured_s"] = self.measured_s()
        return d


@dataclass
class Profile:
    """Eager and fused :class:`Run` of one model and input, and the GPU their roofline is computed for."""

    model: str
    batch: int
    dtype: str
    gpu: GPU
    eager: Run | None
    fused: Run | None
    inputs: dict = field(default_factory=dict)  # image_size / seq_len / task: what the forward was given

    def runs(self) -> dict[str, Run]:
        return {k: r for k, r in (("eager", self.eager), ("fused", self.fused)) if r is not None}

    def to_dict(self) -> dict:
        """The ``--json`` object: model, batch, dtype, gpu, inputs, then eager and fused (None when not counted)."""
        d = {"model": self.model, "batch": self.batch, "dtype": self.dtype, "gpu": self.gpu.to_dict(), **self.inputs}
        for name in ("eager", "fused"):
            run = getattr(self, name)
            d[name] = run.to_dict(self.gpu, self.batch) if run is not None else None
        return d

    def table(self, top: int = 10) -> str:
        """The report: per kind, eager and fused side by side, totals, predicted images/s, the top ops."""
        return _format(self, top)

    def __str__(self) -> str:
        return self.table()


# ------------------------------------------------------------------------------------------------ counting ops

_aten = torch.ops.aten
# no device work: allocations, aliases and metadata
_FREE = {
    _aten.empty.memory_format,
    _aten.empty_strided.default,
    _aten.empty_like.default,
    _aten.new_empty.default,
    _aten.new_empty_strided.default,
    _aten._unsafe_view.default,
    _aten.detach.default,
    _aten.alias.default,
    _aten.lift_fresh.default,
    _aten.resize_.default,
    _aten.set_.source_Storage_storage_offset,
}
_WRITE_ONLY_SELF = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_"}  # self is written, not read
_GATHERS = {"embedding", "index_select", "gather", "index", "_unsafe_index", "take"}  # read only what they gather
_GEMMS = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "addmv", "mv", "dot"}
_CONVS = {"convolution", "_convolution", "cudnn_convolution", "convolution_overrideable", "mkldnn_convolution"}
_ATTENTION = {
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward",
    "_efficient_attention_forward",
}
_SOFTMAX = {"_softmax", "_safe_softmax", "softmax", "_log_softmax"}
_NORMS = {
    "native_layer_norm",
    "native_group_norm",
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "native_rms_norm",
    "_fused_rms_norm",
    # reductions: the statistics of a norm written out (GRN's L2 norm, ConvNeXt's channels-first mean/var)
    "linalg_vector_norm",
    "norm",
    "sum",
    "mean",
    "var",
    "var_mean",
    "std",
    "amax",
    "amin",
}
_COPIES = {
    "_to_copy",
    "copy_",
    "clone",
    "cat",
    "stack",
    "constant_pad_nd",
    "repeat",
    "fill_",
    "zero_",
    "zeros",
    "ones",
    "full",
    "zeros_like",
    "ones_like",
    "full_like",
    "new_zeros",
    "new_ones",
    "new_full",
    "arange",
    "scalar_tensor",
    "lift_fresh_copy",
    "expand_copy",
    "permute_copy",
    "upsample_bicubic2d",
    "upsample_bilinear2d",
    "upsample_nearest2d",
} | _GATHERS

_DTYPE_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def _key(t: torch.Tensor) -> tuple:
    try:
        storage = t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        storage = id(t)
    return (storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _unique(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        k = _key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def _device_tensors(values: Any) -> list[torch.Tensor]:
    # 0-dim CPU tensors next to device tensors are kernel arguments, not traffic
    return [
        t for t in tree_leaves(values) if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")
    ]


def _fmt_shapes(tensors: Sequence[torch.Tensor], n: int = 4) -> str:
    parts = [
        f"{_DTYPE_SHORT.get(t.dtype, str(t.dtype).replace('torch.', ''))}[{','.join(map(str, t.shape))}]"
        for t in tensors[:n]
    ]
    return " ".join(parts) + (" ..." if len(tensors) > n else "")


def _dtype_of(tensors: Sequence[torch.Tensor]) -> str:
    for t in tensors:
        if t.is_floating_point():
            return str(t.dtype).replace("torch.", "")
    return ""


def _aten_kind(name: str, args: tuple) -> str:
    if name in _GEMMS:
        return "gemm"
    if name in _CONVS:
        x, w = args[0], args[1]
        groups = args[8] if len(args) > 8 else 1
        return "dwconv" if groups > 1 and groups == x.shape[1] and w.shape[1] == 1 else "gemm"
    if name in _ATTENTION or name in _SOFTMAX:
        return "attention"
    if name in _NORMS:
        return "norm"
    if name in _COPIES:
        return "copy"
    return "elementwise"


def _aten_flops(name: str, args: tuple, out: Any) -> float:
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not outs:
        return 0.0
    y = outs[0]
    if name in ("mm", "bmm"):
        return 2.0 * y.numel() * args[0].shape[-1]
    if name in ("addmm", "baddbmm"):
        return 2.0 * y.numel() * args[1].shape[-1]
    if name in ("mv", "addmv", "dot"):
        return 2.0 * args[0 if name != "addmv" else 1].numel()
    if name in _CONVS:
        return 2.0 * y.numel() * math.prod(args[1].shape[1:])  # weight [Cout, Cin/groups, kh, kw]
    if name in _ATTENTION:
        q, k, v = args[:3]
        if name in ("_flash_attention_forward", "_efficient_attention_forward"):  # [B, S, H, D]
            q, k, v = (t.transpose(-2, -3) for t in (q, k, v))
        return attention_flops(q, k, v)
    return 0.0


def attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """2*B*H*Sq*Sk*(Dqk + Dv) (= 4*B*H*Sq*Sk*D) for q [..., Sq, D], k [..., Sk, D], v [..., Sk, Dv]: QK^T and PV
    of non-causal attention."""
    *_, s_q, d = q.shape
    s_k, d_v = k.shape[-2], v.shape[-1]
    return 2.0 * (q.numel() // (s_q * d)) * s_q * s_k * (d + d_v)


def aten_op(func, args: tuple, kwargs: dict, out: Any) -> Op | None:
    """The :class:`Op` of one aten call, None for views, allocations and other ops without device traffic."""
    if func in _FREE or func.is_view or func.namespace != "aten":
        return None
    name = func._schema.name.split("::", 1)[1]
    outs = _unique(iter(_device_tensors(out)))
    written_args = []  # mutated arguments (in place, out=)
    write_only: set = set()
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is None or not a.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(a.name)
        for t in _device_tensors(value):
            written_args.append(t)
            if a.kwarg_only or name in _WRITE_ONLY_SELF:
                write_only.add(_key(t))
    inputs = [t for t in _unique(iter(_device_tensors((args, kwargs)))) if _key(t) not in write_only]
    if not outs and not written_args and not inputs:
        return None
    # a non-mutating op whose outputs alias its inputs (unbind, split, ...) moves no data
    if not written_args and outs and {_key(t)[0] for t in outs} <= {_key(t)[0] for t in inputs}:
        return None
    read = 0
    for t in inputs:
        b = nbytes(t)
        if name in _GATHERS and outs and t.is_floating_point():
            b = min(b, nbytes(outs[0]))  # the gathered rows, not the whole table
        read += b
    written = sum(nbytes(t) for t in _unique(iter(outs + written_args)))
    tensors = inputs or outs
    return Op(
        name=f"aten.{name}",
        kind=_aten_kind(name, args),
        read=read,
        written=written,
        flops=_aten_flops(name, args, out),
        dtype=_dtype_of(tensors + outs),
        shapes=_fmt_shapes(tensors),
    )


def launch_op(launch) -> Op:
    """The :class:`Op` of a recorded Triton launch, from the cost its kernel declares."""
    from .fused.recording import cost_of

    cost = cost_of(launch)
    tensors = list(launch.tensors.values())
    return Op(
        name=f"triton.{launch.name}",
        kind=cost.kind,
        read=int(cost.read),
        written=int(cost.written),
        flops=float(cost.flops),
        dtype=_dtype_of(tensors),
        shapes=_fmt_shapes(tensors),
    )


class _CountOps(TorchDispatchMode):
    """Appends the :class:`Op` of every aten call with device traffic to ``events`` (and times it, with ``timer``)."""

    def __init__(self, events: list, timer: Callable | None = None) -> None:
        super().__init__()
        self.events = events
        self.timer = timer
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused or func.namespace == "profiler":  # inside a running launch; record_function's own ops
            return func(*args, **kwargs)
        with self.timer() if self.timer is not None else contextlib.nullcontext() as n:
            try:
                out = func(*args, **kwargs)
            except NotImplementedError as e:
                raise RuntimeError(f"fastvit profile: {func} cannot run on {_devices(args)}: {e}") from e
        op = aten_op(func, args, kwargs, out)
        if op is not None:
            self.events.append(op)
            if self.timer is not None:
                self.timer.index_of[n] = len(self.events) - 1
        return out


def _devices(args: tuple) -> str:
    return ", ".join(sorted({t.device.type for t in _device_tensors(args)})) or "no tensors"


class _AttentionAsOneKernel(TorchFunctionMode):
    """On the meta device, ``F.scaled_dot_product_attention`` is one fused attention kernel (as on a GPU), not the
    math decomposition meta would run: q, k, v and the mask read once, the output written once."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or args[0].device.type != "meta":
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        # [B, H, Sq, Dv] with the [B, Sq, H, Dv] memory layout of CUDA's flash / memory-efficient outputs, so that
        # the usual ``out.transpose(1, 2).reshape(B, Sq, H * Dv)`` is a view, as it is on a GPU
        shape = (*q.shape[:-1], v.shape[-1])
        if q.dim() >= 4:
            bshd = (*shape[:-3], shape[-2], shape[-3], shape[-1])
            out = torch.empty(bshd, dtype=q.dtype, device=q.device).transpose(-2, -3)
        else:
            out = torch.empty(shape, dtype=q.dtype, device=q.device)
        inputs = _unique(iter(_device_tensors((q, k, v, mask))))
        self.events.append(
            Op(
                name="aten.scaled_dot_product_attention",
                kind="attention",
                read=sum(nbytes(t) for t in inputs),
                written=nbytes(out),
                flops=attention_flops(q, k, v),
                dtype=_dtype_of(inputs),
                shapes=_fmt_shapes(inputs),
            )
        )
        return out


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "meta" else torch.empty_like(value, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _meta_weights(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with meta stand-ins for its parameters and buffers (no copy; restored afterwards), and drop
    the meta buffers that fused blocks cache on first use (they rebuild them on the next real call)."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    if all(t.device.type == "meta" for t in tensors.values()):
        yield
        return
    before = {(id(m), name) for m in model.modules() for name in m._buffers}
    state = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    try:
        with torch.nn.utils.stateless._reparametrize_module(model, state, tie_weights=True, strict=False):
            yield
    finally:
        for m in model.modules():
            for name in [n for n, b in m._buffers.items() if (id(m), n) not in before and b is not None]:
                if m._buffers[name].device.type == "meta":
                    del m._buffers[name]
                    m._non_persistent_buffers_set.discard(name)


def trace(model: Callable, *args: Any, timer: Callable | None = None, **kwargs: Any) -> Run:
    """The device operations of one ``model(*args, **kwargs)`` call (any callable; a module's weights are swapped
    for meta tensors meanwhile), run on the meta device after one uncounted call (or, with ``timer``, where the
    model and inputs are: see :func:`measure`)."""
    from .fused.recording import is_launch, recording

    events: list = []
    if timer is None:
        args, kwargs = _to_meta(args), _to_meta(kwargs)
        weights = _meta_weights(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    else:
        weights = contextlib.nullcontext()
    counter = _CountOps(events, timer)

    @contextlib.contextmanager
    def timed_launch(index: int) -> Iterator[None]:
        counter.paused = True  # what runs a kernel (the interpreter's copies on CPU) is not an op of the model
        try:
            with timer(index):
                yield
        finally:
            counter.paused = False

    with weights, torch.no_grad():
        if timer is None:  # an uncounted first call: fused blocks build their cached weights (q|k|v, ...) once
            with recording():
                model(*args, **kwargs)
        around = timed_launch if timer is not None else None
        with recording(events, execute=timer is not None, around=around), _AttentionAsOneKernel(events), counter:
            model(*args, **kwargs)
    return Run([launch_op(e) if is_launch(e) else e for e in events])


# ------------------------------------------------------------------------------------------------------- the API


def _is_fused(model: nn.Module) -> bool:
    from .patching import patched_blocks

    return bool(patched_blocks(model))


def _batch_and_dtype(model: nn.Module, inputs: Sequence[Any]) -> tuple[int, str]:
    tensors = [t for t in tree_leaves(list(inputs)) if isinstance(t, torch.Tensor)]
    batch = tensors[0].shape[0] if tensors and tensors[0].dim() else 1
    floating = [t for t in tensors if t.is_floating_point()] or [p for p in model.parameters() if p.is_floating_point()]
    return batch, (str(floating[0].dtype).replace("torch.", "") if floating else "")


def profile(
    model: nn.Module,
    *inputs: Any,
    eager: nn.Module | None = None,
    gpu: str | GPU | None = "h100",
    name: str | None = None,
    **model_kwargs: Any,
) -> Profile:
    """Count the device operations of one forward ``model(*inputs, **model_kwargs)``, eager and fused.

    Nothing runs on a device: parameters, buffers and inputs are swapped for meta tensors for the count (the model
    is unchanged afterwards; fused blocks rebuild their cached q|k|v weights on the next call). An unpatched model
    is the eager side; its fused side is counted by patching it with ``fastvit.patch`` and unpatching it
    afterwards. A patched model is the fused side; pass its unpatched twin as ``eager`` to count both (else
    ``Profile.eager`` is None).

    Args:
        model: the model (ours or an HF transformers model of a supported family).
        inputs, model_kwargs: what the forward takes (any device, or meta tensors).
        eager: the eager model, when ``model`` is already fused.
        gpu: a :data:`GPUS` key, a :class:`GPU`, or None for the CUDA device's (else H100).
        name: the model's name in the report (default: its class name).
    Returns:
        A :class:`Profile`.
    """
    from .patching import patch, unpatch

    spec = gpu if isinstance(gpu, GPU) else gpu_spec(gpu)
    if _is_fused(model):
        fused_run = trace(model, *inputs, **model_kwargs)
        eager_run = trace(eager, *inputs, **model_kwargs) if eager is not None else None
    else:
        eager_run = trace(model, *inputs, **model_kwargs)
        patch(model)
        try:
            fused_run = trace(model, *inputs, **model_kwargs)
        finally:
            unpatch(model)
    batch, dtype = _batch_and_dtype(model, (inputs, model_kwargs))
    return Profile(name or type(model).__name__, batch, dtype, spec, eager_run, fused_run)


# ------------------------------------------------------------------------------------- models by name (CLI path)


def _config_and_task(name_or_path: str, task: str | None) -> tuple[dict, str, str]:
    """(config, task, display name) of a registry name or checkpoint directory; AltCLIP defaults to its vision tower."""
    import os

    from . import registry
    from .loading import read_config
    from .models import infer_task

    if os.path.isdir(name_or_path):
        config, display = read_config(name_or_path), os.path.basename(os.path.normpath(name_or_path))
    else:
        info = registry.get_model_info(name_or_path)
        config, display = info.config, info.name
    task = task or infer_task(config)
    if task == "features" and config.get("model_type") == "altclip":
        task = "vision"  # the dual model's forward needs both towers' inputs: profile one tower at a time
    return config, task, display


def build_meta(
    name_or_path: str, *, task: str | None = None, dtype: torch.dtype = torch.bfloat16, fused: bool = True
) -> nn.Module:
    """The model of a registry name or checkpoint directory on the meta device (no weights, no memory), in eval
    mode, fused with ``fastvit.patch`` when ``fused``: what :func:`trace` and ``bench.sass`` run."""
    from .models import build_model

    config, task, _ = _config_and_task(name_or_path, task)
    with torch.device("meta"):
        model = build_model(config, task)
    model = model.to(dtype).eval()
    if fused:
        from .patching import patch

        patch(model)
    return model


def _input_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    vision = getattr(cfg, "vision_config", None)
    return vision if vision is not None and not hasattr(cfg, "num_channels") else cfg


def example_inputs(
    model: nn.Module,
    *,
    task: str,
    batch: int,
    image_size: int = 224,
    seq_len: int = 77,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "meta",
) -> dict[str, Any]:
    """Keyword inputs of one forward: ``pixel_values`` [B, C, S, S] (+ ``interpolate_pos_encoding`` where the
    model has fixed position embeddings of another size), or for ``task="text"`` ``input_ids`` and an all-ones
    ``attention_mask`` [B, seq_len] (as a tokenizer's padded batch)."""
    if batch < 1 or image_size < 1 or seq_len < 1:
        raise ValueError(f"batch, image size and sequence length must be >= 1, got {batch}, {image_size}, {seq_len}")
    if task == "text":
        ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cfg = _input_config(model)
    channels = getattr(cfg, "num_channels", 3) or 3
    kwargs: dict[str, Any] = {
        "pixel_values": torch.empty(batch, channels, image_size, image_size, dtype=dtype, device=device)
    }
    size = getattr(cfg, "image_size", None)
    if size not in (None, image_size) and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        kwargs["interpolate_pos_encoding"] = True
    return kwargs


def profile_model(
    name_or_path: str,
    *,
    batch: int = 64,
    image_size: int = 224,
    seq_len: int = 77,
    dtype: torch.dtype = torch.bfloat16,
    task: str | None = None,
    gpu: str | GPU | None = "h100",
) -> Profile:
    """:class:`Profile` of a registry name or checkpoint directory at the given input, eager and fused (built on
    the meta device: runs anywhere in seconds). ``fastvit profile`` without ``--measure``."""

    def run(fused: bool, task: str) -> Run:
        model = build_meta(name_or_path, task=task, dtype=dtype, fused=fused)
        inputs = example_inputs(model, task=task, batch=batch, image_size=image_size, seq_len=seq_len, dtype=dtype)
        return trace(model, **inputs)

    return _profile(name_or_path, task, gpu, run, batch=batch, image_size=image_size, seq_len=seq_len, dtype=dtype)


def _profile(
    name_or_path: str,
    task: str | None,
    gpu: str | GPU | None,
    run: Callable[[bool, str], Run],
    *,
    batch: int,
    image_size: int,
    seq_len: int,
    dtype: torch.dtype,
) -> Profile:
    """The :class:`Profile` of ``run(fused, task)``, eager then fused (``task`` resolved from the config)."""
    _, task, display = _config_and_task(name_or_path, task)
    spec = gpu if isinstance(gpu, GPU) else gpu_spec(gpu)
    runs = {fused: run(fused, task) for fused in (False, True)}
    shape = {"seq_len": seq_len} if task == "text" else {"image_size": image_size}
    return Profile(
        display, batch, str(dtype).replace("torch.", ""), spec, runs[False], runs[True], {"task": task, **shape}
    )


# ------------------------------------------------------------------------------------------- measuring (CUDA)


class _Timer:
    """Wraps each op in ``torch.profiler.record_function("fastvit.op.<n>")`` (``trace(timer=...)``) and remembers
    which event index each ``n`` belongs to (ops without device traffic get none)."""

    PREFIX = "fastvit.op."

    def __init__(self) -> None:
        self.index_of: dict[int, int] = {}
        self._next = 0

    @contextlib.contextmanager
    def __call__(self, index: int | None = None) -> Iterator[int]:
        n, self._next = self._next, self._next + 1
        if index is not None:  # a Triton launch: its record is already in the events
            self.index_of[n] = index
        with torch.profiler.record_function(f"{self.PREFIX}{n}"):
            yield n

    def times(self, prof, device: bool) -> dict[int, float]:
        """Seconds per event index from a torch.profiler run: the device time of the kernels each op launched (CPU
        time when profiling the CPU, for tests)."""
        times: dict[int, float] = {}
        for ev in prof.events():
            if not ev.name.startswith(self.PREFIX):
                continue
            index = self.index_of.get(int(ev.name[len(self.PREFIX) :]))
            if index is None:
                continue
            us = getattr(ev, "device_time_total", None) if device else ev.cpu_time_total
            if us is None:  # older torch
                us = ev.cuda_time_total
            times[index] = times.get(index, 0.0) + us * 1e-6
        return times


def measure(model: nn.Module, *args: Any, warmup: int = 3, iters: int = 5, **kwargs: Any) -> Run:
    """The ops of one forward where the model and inputs are (CUDA), each with its measured device time: the median
    over ``iters`` profiled forwards (torch.profiler, each op a ``record_function``) after ``warmup`` plain ones.

    On CPU this runs too (CPU time instead of device time): the code path, not a measurement worth reading.
    """
    device = next((t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    on_cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CUDA if on_cuda else torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad():
        for _ in range(warmup):
            model(*args, **kwargs)
    samples: list[dict[int, float]] = []
    runs = []
    for _ in range(max(iters, 1)):
        timer = _Timer()
        with torch.profiler.profile(activities=activities) as prof:
            runs.append(trace(model, *args, timer=timer, **kwargs))
            if on_cuda:
                torch.cuda.synchronize()
        samples.append(timer.times(prof, on_cuda))
    run = runs[0]
    if any(len(r.ops) != len(run.ops) for r in runs):
        raise RuntimeError("fastvit profile --measure: the forward ran different ops from one call to the next")
    for j, op in enumerate(run.ops):
        values = sorted(s.get(j, 0.0) for s in samples)
        op.measured_s = values[len(values) // 2]
    return run


def measure_model(
    name_or_path: str,
    *,
    batch: int = 64,
    image_size: int = 224,
    seq_len: int = 77,
    dtype: torch.dtype = torch.bfloat16,
    task: str | None = None,
    gpu: str | GPU | None = None,
    device: str = "cuda",
    iters: int = 5,
) -> Profile:
    """``fastvit profile --measure``: the eager and fused model (random weights) run on ``device``, every op timed."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--measure needs a CUDA GPU (none is visible to torch here); without --measure the profile is modelled "
            "on the meta device and runs anywhere"
        )
    from .loading import load

    def run(fused: bool, task: str) -> Run:
        model = load(name_or_path, pretrained=False, fused=fused, task=task, device=device, dtype=dtype)
        inputs = example_inputs(
            model, task=task, batch=batch, image_size=image_size, seq_len=seq_len, dtype=dtype, device=device
        )
        if "pixel_values" in inputs:
            inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
        return measure(model, iters=iters, **inputs)  # the model is freed on return, before the next is loaded

    return _profile(name_or_path, task, gpu, run, batch=batch, image_size=image_size, seq_len=seq_len, dtype=dtype)


# ---------------------------------------------------------------------------------------------------- reporting


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _format(p: Profile, top: int) -> str:
    gpu = p.gpu
    shape = f"seq {p.inputs['seq_len']}" if "seq_len" in p.inputs else f"{p.inputs.get('image_size', '?')} px"
    lines = [
        f"{p.model}  batch {p.batch}  {shape}  {p.dtype}  roofline on {gpu.name}: "
        f"{gpu.bandwidth / 1e9:,.0f} GB/s, {gpu.peak_for(p.dtype) / 1e12:,.0f} TFLOP/s",
        "",
    ]
    runs = p.runs()
    measured = any(r.measured for r in runs.values())
    cols = ["ops", "GB", "GFLOP", "roofline ms"] + (["measured ms", "roofline %"] if measured else [])
    head = f"{'kind':<16}" + "".join(f"| {name:<{12 * len(cols) - 2}}" for name in runs)
    sub = f"{'':<16}" + "".join("| " + "".join(f"{c:>12}" for c in cols)[2:] for _ in runs)
    lines += [head, sub, "-" * len(sub)]
    kinds = {name: r.by_kind(gpu) for name, r in runs.items()}

    def cells(row: dict) -> str:
        vals = [f"{row['launches']}", f"{row['bytes'] / 1e9:.3f}", f"{row['flops'] / 1e9:,.0f}", _ms(row["roofline_s"])]
        if measured:
            m = row.get("measured_s")
            vals += [_ms(m), f"{100 * row['roofline_s'] / m:.0f}%" if m else "-"]
        return "| " + "".join(f"{v:>12}" for v in vals)[2:]

    for kind in KINDS:
        if not any(kinds[name][kind]["launches"] for name in runs):
            continue
        lines.append(f"{KIND_NAMES[kind]:<16}" + "".join(cells(kinds[name][kind]) for name in runs))
    lines.append("-" * len(sub))
    totals = {
        name: {
            "launches": r.launches,
            "bytes": r.bytes,
            "flops": r.flops,
            "roofline_s": r.roofline_s(gpu),
            **({"measured_s": r.measured_s()} if r.measured else {}),
        }
        for name, r in runs.items()
    }
    lines.append(f"{'total':<16}" + "".join(cells(totals[name]) for name in runs))
    ips = {name: p.batch / t["roofline_s"] for name, t in totals.items() if t["roofline_s"] > 0}
    lines.append(
        f"{'images/s':<16}"
        + "".join(f"| {'roofline ' + format(ips.get(name, 0), ',.0f'):>{12 * len(cols) - 2}}" for name in runs)
    )
    if "eager" in totals and "fused" in totals and totals["fused"]["bytes"]:
        e, f = totals["eager"], totals["fused"]
        lines.append(
            f"fused vs eager: {f['bytes'] / e['bytes']:.2f}x the bytes, {f['launches']}/{e['launches']} launches, "
            f"roofline {e['roofline_s'] / f['roofline_s']:.2f}x faster"
        )
    for name in ("fused", "eager")[:1] if "fused" in runs else ("eager",):
        run = runs[name]
        lines += [
            "",
            f"top {top} {name} ops by {'measured' if run.measured else 'roofline'} time (identical ops grouped)",
        ]
        lines.append(f"{'count':>5}  {'op':<44} {'kind':<14} {'GB each':>9} {'GFLOP each':>11} {'ms total':>9}  bound")
        for g in run.top(gpu, top):
            op = g["op"]
            t = g["measured_s"] if run.measured else g["roofline_s"]
            lines.append(
                f"{g['count']:>5}  {op.name[:44]:<44} {KIND_NAMES[op.kind]:<14} {op.bytes / 1e9:>9.4f} "
                f"{op.flops / 1e9:>11,.1f} {t * 1e3:>9.3f}  {op.bound(gpu)}  {op.shapes}"
            )
    return "\n".join(lines)


def plot(p: Profile, path: str) -> None:
    """A PNG bar chart per op kind: roofline and measured ms, eager and fused (needs the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'fastvit[plot]'") from e
    runs = p.runs()
    kinds = [k for k in KINDS if any(r.by_kind(p.gpu)[k]["launches"] for r in runs.values())]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / (2 * len(runs))
    i = 0
    for name, run in runs.items():
        rows = run.by_kind(p.gpu)
        for what in ("roofline_s", "measured_s"):
            values = [rows[k].get(what, 0.0) * 1e3 for k in kinds]
            xs = [j + (i - len(runs) + 0.5) * width for j in range(len(kinds))]
            ax.bar(xs, values, width, label=f"{name} {what.split('_')[0]}")
            i += 1
    ax.set_xticks(range(len(kinds)), [KIND_NAMES[k] for k in kinds])
    ax.set_ylabel("ms per forward")
    ax.set_title(f"{p.model}: batch {p.batch}, {p.dtype}, {p.gpu.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- CLI

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "bf16": torch.bfloat16,
           "fp16": torch.float16, "fp32": torch.float32}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction, func: Callable[[argparse.Namespace], int] | None = None) -> None:
    """Add the ``profile`` subcommand to the ``fastvit`` CLI (running ``func``, default :func:`cmd_profile`)."""
    s = sub.add_parser(
        "profile",
        help="device-memory traffic, FLOPs and roofline of one forward, eager vs fused (any machine)",
        description="Count one forward's device operations on the meta device (no GPU, no weights, seconds): bytes "
        "read and written and FLOPs per op, grouped by kind, eager vs fused, with the roofline time on a GPU from "
        "its datasheet. --measure times every op on a CUDA GPU.",
    )
    s.add_argument("model", help="registered name, alias, HF repo id or checkpoint directory")
    s.add_argument("--task", default=None, help="model head / tower, e.g. text or vision for altclip (default vision)")
    s.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    s.add_argument("--image-size", type=int, default=224, help="input resolution (default 224)")
    s.add_argument("--seq-len", type=int, default=77, help="text tokens per sample with --task text (default 77)")
    s.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16", help="default bfloat16")
    s.add_argument("--gpu", default=None, help=f"roofline GPU: {', '.join(GPUS)} (default: the CUDA device, else h100)")
    s.add_argument("--bandwidth", type=float, default=None, help="override the memory bandwidth, GB/s")
    s.add_argument("--peak", type=float, default=None, help="override the peak throughput, TFLOP/s")
    s.add_argument("--top", type=int, default=10, help="how many of the costliest ops to list (default 10)")
    s.add_argument("--json", action="store_true", help="print exactly one JSON object instead of the table")
    s.add_argument("--measure", action="store_true", help="also run on the CUDA GPU and time every op")
    s.add_argument("--iters", type=int, default=5, help="profiled forwards per model with --measure (default 5)")
    s.add_argument("--plot", default=None, metavar="PNG", help="with --measure: bar chart per kind (plot extra)")
    s.set_defaults(func=func or cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    """``fastvit profile``: print the table (or the JSON object); errors raise ValueError / RuntimeError."""
    gpu = gpu_spec(
        args.gpu,
        bandwidth=args.bandwidth * 1e9 if args.bandwidth is not None else None,
        peak=args.peak * 1e12 if args.peak is not None else None,
    )
    if args.plot and not args.measure:
        raise ValueError("--plot draws measured times: add --measure (needs a CUDA GPU)")
    if args.measure and not torch.cuda.is_available():
        raise ValueError(
            "--measure needs a CUDA GPU (torch sees none here); without --measure the profile is modelled on the meta "
            "device and runs anywhere"
        )
    common = dict(
        batch=args.batch, image_size=args.image_size, seq_len=args.seq_len, dtype=_DTYPES[args.dtype],
        task=args.task, gpu=gpu,
    )  # fmt: skip
    if args.measure:
        result = measure_model(args.model, iters=args.iters, **common)
        if args.plot:
            plot(result, args.plot)
    else:
        result = profile_model(args.model, **common)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(result.table(args.top))
    return 0
