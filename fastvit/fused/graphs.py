"""CUDA-graph runner: replay a captured graph per input signature, the model's own forward otherwise.

    from fastvit.fused.graphs import enable_cuda_graphs
    enable_cuda_graphs(model)          # or fastvit.patch(model, cuda_graphs=True) / fastvit.load(..., cuda_graphs=True)
    with torch.inference_mode():
        out = model(pixel_values)      # first call per shape/dtype: warm up + capture; later calls: copy in, replay

Like the fused blocks, the runner is an :class:`~fastvit.fused.base.InstanceForward`: installed as the instance's
``forward`` (the model object, its tree and its state dict are unchanged; ``disable_cuda_graphs`` /
``fastvit.unpatch`` remove it). One graph per input signature
(tensor shapes, strides, dtypes, devices and the non-tensor arguments), captured on first use with static input
and output buffers; at most ``max_graphs`` are kept (least recently used evicted, its memory pool freed). The
original forward runs instead - for that call, nothing captured - when capture is impossible or wrong: no CUDA,
inputs not all CUDA tensors, training mode, autograd recording, inside ``torch.compile`` or another capture,
unhashable arguments, or a capture that failed for this signature (then a warning, once).

Weights: captured graphs read the parameters' memory, so in-place writes (``p.data.copy_(...)``, the fused q|k|v
weight included: its rows are the parameters) are seen by the next replay. ``load_state_dict`` (copy or
``assign=True``) drops the graphs (a post-hook), and the first parameter's storage, dtype and device are part of
the signature, so ``.to()``, ``.half()`` and re-assigned weights capture afresh. Re-pointing a parameter by hand
(``p.data = t``) after capture is not seen by replays: call ``runner.reset()`` after such edits.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import InstanceForward


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in a nest of tuples, lists, dicts (incl. HF ``ModelOutput``) and dataclasses."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    if isinstance(obj, dict):
        items = {k: map_tensors(fn, v) for k, v in obj.items()}
        try:
            return type(obj)(**items)
        except TypeError:
            return type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: map_tensors(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        )
    return obj


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj`` (nests as :func:`map_tensors`), in traversal order."""
    found: list[torch.Tensor] = []
    map_tensors(found.append, obj)
    return found


def _signature(obj: Any) -> Any:
    """Hashable description of a call's arguments: tensors by layout, everything else by value."""
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), obj.stride(), obj.dtype, obj.device)
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_signature(v) for v in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in obj.items()))
    hash(obj)  # TypeError for unhashable arguments -> eager
    return obj


class _Graph:
    """One captured graph: static inputs (same order as ``flatten_tensors(args, kwargs)``), static outputs."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], output: Any) -> None:
        self.graph, self.inputs, self.output = graph, inputs, output

    def replay(self, args: tuple, kwargs: dict, clone: bool) -> Any:
        for static, new in zip(self.inputs, flatten_tensors((args, kwargs)), strict=True):
            if static.data_ptr() != new.data_ptr():
                static.copy_(new)
        self.graph.replay()
        return map_tensors(torch.Tensor.clone, self.output) if clone else self.output


class CUDAGraphForward(InstanceForward):
    """Installed as ``model.forward`` (outermost, over the fused blocks' forwards); see the module docstring.

    Args:
        module: the model. max_graphs: captured graphs kept (LRU). warmup: eager runs on a side stream before
            capture (autotuning, lazy init, cached fused weights). clone_outputs: return copies of the static
            outputs (safe default); False returns the static buffers themselves, overwritten by the next replay.
    """

    def __init__(self, module: nn.Module, *, max_graphs: int = 8, warmup: int = 2, clone_outputs: bool = True) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        super().__init__(module)
        self.max_graphs, self.warmup, self.clone_outputs = max_graphs, warmup, clone_outputs
        self.graphs: OrderedDict[Any, _Graph] = OrderedDict()
        self.failed: dict[Any, str] = {}
        self.captures = 0  # graphs captured so far (evicted ones included)
        self.last_fallback: str | None = None  # why the last call ran eager (None: it replayed a graph)
        self._hook = None

    def _attach(self) -> None:
        self._hook = self.module.register_load_state_dict_post_hook(self._on_load)  # a method: picklable

    def _detach(self) -> None:
        self.reset()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_load(self, module: nn.Module, incompatible_keys) -> None:
        self.reset()

    def reset(self) -> None:
        """Drop every captured graph and failure record (the next call per signature captures again)."""
        self.graphs.clear()
        self.failed.clear()

    def _weights_key(self) -> tuple:
        p = next(self.module.parameters(), None)  # the first parameter: moves with .to() / assign=True
        return () if p is None else (p.data_ptr(), p.dtype, p.device)

    def fallback_reason(self, args: tuple, kwargs: dict) -> str | None:
        """Why this call cannot replay a graph, or None."""
        if not torch.cuda.is_available():
            return "CUDA is not available"
        tensors = flatten_tensors((args, kwargs))
        if not tensors or not all(t.is_cuda for t in tensors):
            return "inputs are not all CUDA tensors"
        if self.module.training:
            return "training mode"
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters()):
            return "autograd is recording (use torch.no_grad() or torch.inference_mode())"
        if torch.compiler.is_compiling():
            return "inside torch.compile"
        if torch.cuda.is_current_stream_capturing():
            return "inside another CUDA graph capture"
        return None

    def __call__(self, *args, **kwargs):
        reason = self.fallback_reason(args, kwargs)
        key = None
        if reason is None:
            try:
                key = (_signature((args, kwargs)), self._weights_key())
            except TypeError:
                reason = "unhashable non-tensor argument"
        if reason is None and key in self.failed:
            reason = f"capture failed for this signature: {self.failed[key]}"
        self.last_fallback = reason
        if reason is not None:
            return self.eager(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = self._capture(args, kwargs)
            except Exception as e:  # noqa: BLE001 - any capture error means: run eager for this signature
                self.failed[key] = f"{type(e).__name__}: {e}"
                warnings.warn(f"fastvit: CUDA graph capture failed, running eager for this input: {e}", stacklevel=2)
                self.last_fallback = self.failed[key]
                return self.eager(*args, **kwargs)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        return graph.replay(args, kwargs, self.clone_outputs)

    def _capture(self, args: tuple, kwargs: dict) -> _Graph:
        static_args, static_kwargs = map_tensors(torch.Tensor.clone, (args, kwargs))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.eager(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.eager(*static_args, **static_kwargs)
        self.captures += 1
        return _Graph(graph, flatten_tensors((static_args, static_kwargs)), output)

    def __repr__(self) -> str:
        return f"CUDAGraphForward({type(self.module).__name__}, graphs={len(self.graphs)}/{self.max_graphs})"


def enable_cuda_graphs(model: nn.Module, **options) -> CUDAGraphForward:
    """Install a :class:`CUDAGraphForward` on ``model`` (replacing an earlier one); options as its constructor."""
    return CUDAGraphForward(model, **options).install()


def disable_cuda_graphs(model: nn.Module) -> bool:
    """Remove the graph runner from ``model`` (freeing its graphs); True if there was one."""
    return CUDAGraphForward.remove(model) is not None
