"""Timing and the model-variant benchmark loop shared by the ``fastvit bench`` CLI and the ``bench/`` suite.

* ``measure(fn, device)``: one callable (kernel benchmarks): ``triton.testing.do_bench`` on CUDA (CUDA events, L2
  flushed between calls), wall clock on CPU; median and the 20th / 80th percentiles.
* ``run_variants(get, variants, device)``: the one loop that compares model variants (eager, fused, CUDA graphs,
  ``torch.compile``, HF transformers). Every variant is prepared first (first call untimed, warm-up), then the
  variants are timed **interleaved** (A B C A B C ..., the starting variant rotating every round) until a time budget
  is spent, so that a machine whose speed drifts (other jobs, turbo, thermal) slows every variant alike. Each variant
  gets the median and spread of its samples, and its speedup over the reference is the median of the per-round
  ratios, with their spread: a ratio is never reported without it.
* ``ModelVariants``: the variants of one model with one set of weights, so their outputs can be compared too.

Nothing here imports the kernels or transformers at import time.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
QUANTILES = (0.5, 0.2, 0.8)  # median, then the spread reported next to it
CPU_THREADS = 1  # default torch threads for CPU benchmarks: on a small shared machine more threads add noise, not speed
WIDE_SPREAD = 0.10  # (p80 - p20) / median above this: the numbers are noisy, say so


# ----------------------------------------------------------------------------------------------- defaults


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible to torch, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """Benchmark dtype name for ``device``: bf16 on CUDA, fp32 on CPU."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def set_threads(threads: int | None, device: str) -> int:
    """Set torch's intra-op threads for a benchmark and return the number in use.

    ``None``: :data:`CPU_THREADS` on CPU (one thread gives the most stable ratios on a shared machine), torch's own
    default on CUDA (the host threads only launch kernels there).
    """
    if threads is None and torch.device(device).type == "cpu":
        threads = CPU_THREADS
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles over ``n`` samples (min / max when known)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int
    min_ms: float | None = None
    max_ms: float | None = None

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative width of the middle 60% of the samples."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else math.inf


@dataclass
class Ratio:
    """A speedup (reference time / variant time, > 1 is faster) over paired samples: median, p20, p80, count."""

    median: float
    p20: float
    p80: float
    n: int

    @property
    def spread(self) -> float:
        return (self.p80 - self.p20) / self.median if self.median > 0 else math.inf

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({self.p20:.2f}-{self.p80:.2f})"


def _percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return statistics.median(s), q[1], q[7]


def summarize(samples_ms: Sequence[float]) -> Timing:
    """:class:`Timing` of a list of per-call milliseconds (at least one)."""
    if not samples_ms:
        raise ValueError("no samples to summarize")
    median, p20, p80 = _percentiles(samples_ms)
    return Timing(median, p20, p80, len(samples_ms), min(samples_ms), max(samples_ms))


def ratio_of(reference_ms: Sequence[float], variant_ms: Sequence[float]) -> Ratio:
    """Speedup over paired samples (sample i of both taken in the same round): median and spread of ref_i / var_i."""
    pairs = [r / v for r, v in zip(reference_ms, variant_ms, strict=True) if v > 0]
    if not pairs:
        raise ValueError("no paired samples")
    return Ratio(*_percentiles(pairs), len(pairs))


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    warmup: int = 1,
    iters: int = 10,
    max_time_s: float | None = None,
) -> Timing:
    """Time ``fn()`` on ``device`` (one callable; :func:`run_variants` compares several).

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
    inner = _group_size(one * 1e3)
    samples = [one * 1e3] if inner == 1 else []  # a slow call is already a sample
    while len(samples) < max(1, iters):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
        if max_time_s is not None and time.perf_counter() - start > max_time_s:
            break
    return summarize(samples)


def _group_size(call_ms: float, min_sample_ms: float = 1.0) -> int:
    """Calls per CPU sample so that one sample lasts at least ``min_sample_ms``."""
    return 1 if call_ms >= min_sample_ms else max(1, int(min_sample_ms / max(call_ms, 1e-6)))


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
        for _ in range(warmup):
            fn()
        return summarize([_cuda_sample_ms(fn, 1) for _ in range(max(1, iters))])
    q = do_bench(fn, warmup=max(est * warmup, 1e-3), rep=max(est * iters, 1e-3), quantiles=list(QUANTILES))
    return Timing(q[0], q[1], q[2], max(1, iters))


def _cuda_sample_ms(fn: Callable[[], Any], calls: int) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


# ------------------------------------------------------------------------------------- the variant loop


@dataclass
class VariantResult:
    """One variant of :func:`run_variants`: its timing, speedup over the reference, output difference, or error.

    ``error`` is :class:`Unavailable` when the variant does not apply here, any other exception when it failed.
    """

    variant: str
    timing: Timing | None = None
    ratio: Ratio | None = None  # reference time / this variant's time, per round (None for the reference)
    diff: float | None = None  # max |output - reference output|
    first_call_s: float | None = None  # the untimed first call: compilation, autotuning, capture
    samples_ms: list[float] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def status(self) -> str:
        """``"ok"``, ``"unavailable"`` or ``"failed"``."""
        if self.error is None:
            return "ok"
        return "unavailable" if isinstance(self.error, Unavailable) else "failed"

    @property
    def message(self) -> str:
        """The error as one line (empty when ok)."""
        if self.error is None:
            return ""
        if isinstance(self.error, Unavailable):
            return str(self.error)
        first = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {first[0] if first else ''}"[:300]


def run_variants(
    get: Callable[[str], Callable[[], Any]],
    variants: Sequence[str],
    device: str,
    *,
    warmup: int = 1,
    budget_s: float = 5.0,
    rounds: int | None = None,
    min_rounds: int = 3,
    max_rounds: int = 10_000,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] | None = None,
    on_prepare: Callable[[int, str], None] | None = None,
) -> dict[str, VariantResult]:
    """Prepare every variant, then time them interleaved to a budget; returns one result per variant, in order.

    Args:
        get: ``variant -> zero-argument call`` (e.g. ``lambda v: forward_fn(model_variants.get(v), pixels)``);
            raise :class:`Unavailable` for a variant that does not apply (recorded, not fatal; so is any error).
        variants: names; the first one that prepares is the reference of output differences and speedups.
        device: where the calls run; CUDA samples are timed with CUDA events, one call per sample.
        warmup: untimed calls per variant after the first (untimed) call.
        budget_s: timing budget for all variants together, on ``clock``; rounds go on until it is spent and at
            least ``min_rounds`` rounds are done (at most ``max_rounds``).
        rounds: exactly this many rounds instead of a budget.
        clock: seconds (injectable for tests); on CPU it also times the samples.
        log: one line per event (preparation done, timing started / finished).
        on_prepare: called with (index, variant) before each variant is prepared (progress display).
    Returns:
        ``{variant: VariantResult}``.
    """
    log = log or (lambda s: None)
    cuda = torch.device(device).type == "cuda"
    results = {v: VariantResult(v) for v in variants}
    calls: dict[str, tuple[Callable[[], Any], int]] = {}  # variant -> (call, calls per sample)
    ref_name, ref_out = None, None
    for i, variant in enumerate(variants):
        if on_prepare:
            on_prepare(i, variant)
        res = results[variant]
        try:
            fn = get(variant)
            t0 = clock()
            out = main_output(fn())  # first call: compilation, autotuning, capture; not timed
            synchronize(device)
            res.first_call_s = clock() - t0
            if ref_name is None:
                ref_name, ref_out = variant, out.float()
            else:
                res.diff = max_abs_diff(out, ref_out)
            del out
            call_ms = res.first_call_s * 1e3  # an over-estimate without warm-up calls
            if warmup:
                t0 = clock()
                for _ in range(warmup):
                    fn()
                synchronize(device)
                call_ms = (clock() - t0) * 1e3 / warmup
            calls[variant] = (fn, 1 if cuda else _group_size(call_ms))
            then = f", then ~{call_ms:.3g} ms/call" if warmup else ""
            log(f"{variant}: ready (first call {res.first_call_s:.1f} s{then})")
        except Exception as e:  # noqa: BLE001 - one variant that does not run does not stop the others
            res.error = e
            log(f"{variant}: {'not available' if isinstance(e, Unavailable) else 'FAILED'}: {res.message}")
    del ref_out
    _time_interleaved(calls, results, cuda, budget_s, rounds, min_rounds, max_rounds, clock, log)
    ref = results.get(ref_name) if ref_name else None
    for res in results.values():
        if res.samples_ms and res.error is None:
            res.timing = summarize(res.samples_ms)
            if ref is not None and res is not ref and ref.samples_ms:
                n = min(len(ref.samples_ms), len(res.samples_ms))
                res.ratio = ratio_of(ref.samples_ms[:n], res.samples_ms[:n])
    return results


def _time_interleaved(
    calls: dict[str, tuple[Callable[[], Any], int]],
    results: dict[str, VariantResult],
    cuda: bool,
    budget_s: float,
    rounds: int | None,
    min_rounds: int,
    max_rounds: int,
    clock: Callable[[], float],
    log: Callable[[str], None],
) -> None:
    """Rounds of one sample per variant (A B C, B C A, C A B, ...) until the budget or round count is reached."""
    order = list(calls)
    if not order:
        return
    goal = f"{rounds} rounds" if rounds is not None else f"~{budget_s:g} s, at least {min_rounds} rounds"
    log(f"timing {', '.join(order)} interleaved ({goal})")
    start, done = clock(), 0
    while order:
        if rounds is not None:
            if done >= rounds:
                break
        elif done >= max_rounds or (done >= min_rounds and clock() - start >= budget_s):
            break
        for k in range(len(order)):
            variant = order[(done + k) % len(order)]
            fn, inner = calls[variant]
            try:
                if cuda:
                    ms = _cuda_sample_ms(fn, inner)
                else:
                    t0 = clock()
                    for _ in range(inner):
                        fn()
                    ms = (clock() - t0) * 1e3 / inner
                results[variant].samples_ms.append(ms)
            except Exception as e:  # noqa: BLE001 - a variant failing while timed is dropped, the others go on
                results[variant].error = e
                log(f"{variant}: FAILED while timed: {results[variant].message}")
        order = [v for v in order if results[v].error is None]
        done += 1
    log(f"timed {done} rounds in {clock() - start:.1f} s")


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
CUDA_ONLY = ("fused_cuda_graphs", "compile_reduce_overhead")


class Unavailable(RuntimeError):
    """A model variant that does not apply here (CUDA-only, transformers missing, no HF class)."""


class ModelVariants:
    """The variants of one model that ``fastvit bench`` and ``bench/bench_models.py`` compare, with one set of weights.

    ``get(name)`` returns a callable ``model(pixel_values=...)`` for:
      * ``eager``: the fastvit eager model (HF's formulas, never patched);
      * ``fused``: a copy of it patched with ``fastvit.patch`` (``patch_report`` keeps the report);
      * ``fused_cuda_graphs``: a copy patched with ``fastvit.patch(..., cuda_graphs=True)``, what
        ``fastvit.load(..., cuda_graphs=True)`` returns (CUDA only, unless ``cuda_only_on_cpu``);
      * ``compile`` / ``compile_reduce_overhead``: ``torch.compile`` of the eager model (default mode /
        ``mode="reduce-overhead"``, i.e. with CUDA graphs; the latter CUDA only, unless ``cuda_only_on_cpu``);
      * ``hf_eager`` / ``hf_sdpa``: the HF transformers model with the same weights (needs transformers).
    Every variant is its own module, built once on first ``get``, so all of them can be timed interleaved.
    Unavailable variants raise :class:`Unavailable` with the reason.

    Args:
        name: registered name, alias, HF repo id or checkpoint directory (``pretrained=False`` reads only its
            config.json).
        compile_backend: ``torch.compile`` backend (``"eager"`` traces with dynamo only: a quick dry run on CPU).
        cuda_only_on_cpu: build the CUDA-only variants on CPU too, to exercise their code without a GPU: the
            CUDA-graph runner then runs the fused forward, and reduce-overhead compiles without graphs.
    """

    def __init__(
        self,
        name: str,
        *,
        device: str,
        dtype: torch.dtype,
        pretrained: bool = False,
        task: str | None = None,
        compile_backend: str = "inductor",
        cuda_only_on_cpu: bool = False,
    ) -> None:
        import fastvit

        self.name, self.device, self.dtype, self.pretrained = name, device, dtype, pretrained
        self.model = fastvit.load(name, fused=False, pretrained=pretrained, task=task, device=device, dtype=dtype)
        self.task = task
        self.compile_backend = compile_backend
        self.cuda_only_on_cpu = cuda_only_on_cpu
        self.patch_report: Any = None
        self._built: dict[str, Callable[..., Any]] = {}

    def get(self, variant: str) -> Callable[..., Any]:
        """The callable for ``variant`` (see the class docstring); raises :class:`Unavailable`."""
        if variant not in BASELINES + OURS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {BASELINES + OURS}")
        if variant in CUDA_ONLY and torch.device(self.device).type != "cuda" and not self.cuda_only_on_cpu:
            why = "CUDA graphs" if variant == "fused_cuda_graphs" else "reduce-overhead uses CUDA graphs"
            raise Unavailable(f"{why}: CUDA only")
        if variant not in self._built:
            self._built[variant] = self._build(variant)
        return self._built[variant]

    def _build(self, variant: str) -> Callable[..., Any]:
        if variant == "eager":
            return self.model
        if variant in ("fused", "fused_cuda_graphs"):
            import fastvit

            model = copy.deepcopy(self.model)
            report = fastvit.patch(model, cuda_graphs=variant == "fused_cuda_graphs")
            if variant == "fused":
                self.patch_report = report
            return model
        if variant in ("compile", "compile_reduce_overhead"):
            mode = "reduce-overhead" if variant == "compile_reduce_overhead" else None
            if self.compile_backend != "inductor":
                return torch.compile(self.model, backend=self.compile_backend)  # modes are inductor's
            return torch.compile(self.model, mode=mode)
        return self._hf(variant.removeprefix("hf_"))

    def _hf(self, attn: str) -> Callable[..., Any]:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise Unavailable("transformers is not installed") from e
        config, task = self._config_and_task()
        try:
            with torch.device(self.device):  # random init where it runs (fast on GPU)
                model = hf_model(config, task, attn_implementation=attn)
        except ValueError as e:
            raise Unavailable(str(e)) from e
        copy_weights(self.model, model)
        return model.to(device=self.device, dtype=self.dtype)

    def _config_and_task(self) -> tuple[dict, str]:
        """The fastvit config dict and task of this model (a registry entry or a checkpoint directory)."""
        import os

        from fastvit.loading import read_config
        from fastvit.models import infer_task
        from fastvit.registry import get_model_info

        if os.path.isdir(self.name):
            config = read_config(self.name)
            return config, self.task or infer_task(config)
        info = get_model_info(self.name)
        return info.config, self.task or info.task
