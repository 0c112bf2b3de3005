"""Timing and model-benchmark helpers shared by the ``fastvit bench`` CLI and the ``bench/`` suite.

Timing: ``triton.testing.do_bench`` on CUDA (CUDA events, L2 flushed between calls, median and quantiles), wall
clock on CPU (``time.perf_counter`` after warm-up, median and quantiles). Model helpers build the variants the
benchmarks compare (fastvit eager / fused / CUDA graphs, ``torch.compile``, HF transformers eager / SDPA) with the
same weights, so their outputs can be compared too. Nothing here imports the kernels or transformers at import time.
"""

from __future__ import annotations

import inspect
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
QUANTILES = (0.5, 0.2, 0.8)  # median, then the spread reported next to it


@dataclass
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles over ``n`` timed calls."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _quantiles(samples_ms: list[float]) -> Timing:
    s = sorted(samples_ms)
    if len(s) == 1:
        return Timing(s[0], s[0], s[0], 1)
    q = statistics.quantiles(s, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return Timing(statistics.median(s), q[1], q[7], len(s))


def measure(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    warmup: int = 1,
    iters: int = 10,
    max_time_s: float | None = None,
) -> Timing:
    """Time ``fn()`` on ``device``.

    Args:
        fn: zero-argument callable (inputs captured), run under the caller's grad mode.
        device: where the work runs. CUDA: ``triton.testing.do_bench`` with warm-up and repetition budgets of about
            ``warmup`` and ``iters`` calls (CUDA events when triton is missing). CPU: ``warmup`` untimed calls, then
            up to ``iters`` timed ones (at least one; stops early past ``max_time_s``); calls shorter than 1 ms are
            timed in groups so that the clock resolution does not matter.
    Returns:
        :class:`Timing` in milliseconds per call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _measure_cuda(fn, warmup, iters)
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    inner = max(1, int(1e-3 / max(one, 1e-9))) if one < 1e-3 else 1
    samples = [one * 1e3] if inner == 1 else []  # a slow call is already a sample
    while len(samples) < max(1, iters):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
        if max_time_s is not None and time.perf_counter() - start > max_time_s:
            break
    return _quantiles(samples)


def _measure_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> Timing:
    fn()  # first call: compilation, autotuning, graph capture
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end), 1e-3)
    try:
        from triton.testing import do_bench
    except ImportError:  # pragma: no cover - triton is a Linux dependency of fastvit
        samples = []
        for _ in range(warmup):
            fn()
        for _ in range(max(1, iters)):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        return _quantiles(samples)
    q = do_bench(fn, warmup=max(est * warmup, 1e-3), rep=max(est * iters, 1e-3), quantiles=list(QUANTILES))
    return Timing(q[0], q[1], q[2], max(1, iters))


# ----------------------------------------------------------------------------------------------------- models


def main_output(out: Any) -> torch.Tensor:
    """The tensor a model output is judged by: logits, pooled output, last hidden state, or its first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "pooler_output", "image_embeds", "last_hidden_state", "feature_maps"):
        value = getattr(out, name, None)
        if isinstance(value, (tuple, list)) and value:
            value = value[-1]
        if isinstance(value, torch.Tensor):
            return value
    items = out.to_tuple() if hasattr(out, "to_tuple") else out
    for value in items:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an output tensor in {type(out).__name__}")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in fp32 (inf when shapes differ; nan when either has NaN where the other does not)."""
    if a.shape != b.shape:
        return float("inf")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def vision_config(config: Any) -> Any:
    """The config that describes the pixel input (AltCLIP keeps it in ``vision_config``)."""
    vc = getattr(config, "vision_config", None)
    if vc is not None and not hasattr(config, "num_channels"):
        return vc
    if isinstance(config, dict):
        return config.get("vision_config", config)
    return config


def pixel_values(
    model: nn.Module, batch: int, image_size: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Random ``[batch, C, S, S]`` images for ``model`` (C from its config, 3 by default)."""
    cfg = vision_config(getattr(model, "config", None))
    channels = (cfg.get("num_channels") if isinstance(cfg, dict) else getattr(cfg, "num_channels", None)) or 3
    return torch.randn(batch, channels, image_size, image_size, device=device, dtype=dtype)


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (explicitly or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def forward_fn(model: Callable, pixels: torch.Tensor) -> Callable[[], Any]:
    """Zero-argument inference call of ``model`` on ``pixels`` (under ``torch.inference_mode``).

    Models with fixed position embeddings (CLIP-style towers) get ``interpolate_pos_encoding=True`` when the image
    size is not the configured one.
    """
    kwargs: dict[str, Any] = {"pixel_values": pixels}
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    size = getattr(vision_config(getattr(inner, "config", None)), "image_size", None)
    forward = getattr(inner, "forward", None)
    if size not in (None, pixels.shape[-1]) and forward is not None:
        try:
            if "interpolate_pos_encoding" in inspect.signature(forward).parameters:
                kwargs["interpolate_pos_encoding"] = True
        except (TypeError, ValueError):
            pass

    def run():
        with torch.inference_mode():
            return model(**kwargs)

    return run


def hf_model(config: dict, task: str, *, attn_implementation: str = "eager") -> nn.Module:
    """The HF transformers model for a fastvit registry config and task (random weights; transformers needed).

    Raises ImportError without transformers, ValueError when the task has no HF class or the attention
    implementation is not supported by the family (e.g. SDPA for ConvNeXt, which has no attention).
    """
    import transformers

    from fastvit.models import family

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    candidates = [a for a, t in family(model_type).ARCHITECTURES.items() if t == task and hasattr(transformers, a)]
    named = [a for a in candidates if a in (cfg.get("architectures") or ())]
    prefix = model_type.replace("-", "").lower()  # ConvNextV2ForImageClassification for "convnextv2", not ConvNext...
    exact = [a for a in candidates if re.split("Model|For|Backbone", a)[0].lower() == prefix]
    arch = (named or exact or candidates or [None])[0]
    if arch is None:
        raise ValueError(f"no HF transformers class for {model_type} task {task!r}")
    cls = getattr(transformers, arch)
    hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
    if task in ("vision", "text") and hasattr(hf_config, f"{task}_config"):
        hf_config = getattr(hf_config, f"{task}_config")
    if attn_implementation != "eager" and not getattr(cls, "_supports_sdpa", False):
        raise ValueError(f"{arch} has no {attn_implementation} attention")
    return cls._from_config(hf_config, attn_implementation=attn_implementation).eval()


def copy_weights(src: nn.Module, dst: nn.Module) -> int:
    """Load ``src``'s state dict into ``dst`` (same keys by contract); returns the number of ``dst`` keys missed."""
    result = dst.load_state_dict(src.state_dict(), strict=False)
    return len(result.missing_keys)


# ------------------------------------------------------------------------------------------- model variants

BASELINES = ("eager", "hf_eager", "hf_sdpa", "compile", "compile_reduce_overhead")
OURS = ("fused", "fused_cuda_graphs")


class Unavailable(RuntimeError):
    """A model variant that does not apply here (CUDA-only, transformers missing, not implemented yet)."""


class ModelVariants:
    """The variants of one model that ``fastvit bench`` and ``bench/bench_models.py`` compare, with one set of weights.

    ``get(name)`` returns a callable ``model(pixel_values=...)`` for:
      * ``eager``: the fastvit eager model (HF's formulas, unpatched);
      * ``fused``: the same module patched in place with ``fastvit.patch`` (``patch_report`` keeps the report);
      * ``fused_cuda_graphs``: the same module patched with ``fastvit.patch(..., cuda_graphs=True)`` (CUDA only);
      * ``compile`` / ``compile_reduce_overhead``: ``torch.compile`` of the eager model (the latter CUDA only);
      * ``hf_eager`` / ``hf_sdpa``: the HF transformers model with the same weights (needs transformers).
    Variants are built on demand; ``get`` patches or unpatches the shared module as needed, so time each variant
    right after getting it. Unavailable variants raise :class:`Unavailable` with the reason.
    """

    def __init__(
        self,
        name: str,
        *,
        device: str,
        dtype: torch.dtype,
        pretrained: bool = False,
        task: str | None = None,
    ) -> None:
        import fastvit

        self.name, self.device, self.dtype, self.pretrained = name, device, dtype, pretrained
        self.model = fastvit.load(name, fused=False, pretrained=pretrained, task=task, device=device, dtype=dtype)
        self.task = task
        self.patch_report: Any = None
        self._state: str | None = None  # None (eager), "fused" or "graphs" (fused + CUDA-graph runner)

    def _unpatch(self) -> None:
        if self._state is not None:
            import fastvit

            fastvit.unpatch(self.model)
            self._state = None

    def _patch(self, graphs: bool) -> None:
        state = "graphs" if graphs else "fused"
        if self._state == state:
            return
        try:
            import fastvit

            patch = fastvit.patch
        except (ImportError, AttributeError) as e:
            raise Unavailable(f"fastvit.patch is not available yet ({type(e).__name__}: {e})") from e
        if graphs and not accepts(patch, "cuda_graphs"):
            raise Unavailable("fastvit.patch has no cuda_graphs option yet")
        self._unpatch()
        report = patch(self.model, cuda_graphs=True) if graphs else patch(self.model)
        if not graphs:
            self.patch_report = report
        self._state = state

    def get(self, variant: str) -> Callable[..., Any]:
        """The callable for ``variant`` (see the class docstring); raises :class:`Unavailable`."""
        cuda = torch.device(self.device).type == "cuda"
        if variant == "eager":
            self._unpatch()
            return self.model
        if variant == "fused":
            self._patch(graphs=False)
            return self.model
        if variant in ("compile", "compile_reduce_overhead"):
            if variant == "compile_reduce_overhead" and not cuda:
                raise Unavailable("reduce-overhead uses CUDA graphs: CUDA only")
            self._unpatch()
            mode = "reduce-overhead" if variant == "compile_reduce_overhead" else None
            return torch.compile(self.model, mode=mode)
        if variant == "fused_cuda_graphs":
            if not cuda:
                raise Unavailable("CUDA graphs need a CUDA device")
            self._patch(graphs=True)
            return self.model
        if variant in ("hf_eager", "hf_sdpa"):
            return self._hf(variant.removeprefix("hf_"))
        raise ValueError(f"unknown variant {variant!r}; expected one of {BASELINES + OURS}")

    def _hf(self, attn: str) -> Callable[..., Any]:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise Unavailable("transformers is not installed") from e
        from fastvit.registry import get_model_info

        info = get_model_info(self.name)
        task = self.task or info.task
        try:
            with torch.device(self.device):  # random init where it runs (fast on GPU)
                model = hf_model(info.config, task, attn_implementation=attn)
        except ValueError as e:
            raise Unavailable(str(e)) from e
        self._unpatch()
        copy_weights(self.model, model)
        return model.to(device=self.device, dtype=self.dtype)
