"""Benchmark harness: environment record, roofline references, providers, timing, results file.

Every kernel benchmark file declares one or more :class:`OpBench` (shapes per device, an input factory, the
providers and a byte or FLOP count) and gets from here:
  * ``run_spec(spec, device, dtype)`` -> result records (one per case and provider; a failing provider is recorded
    with its error and skipped, never fatal),
  * the pytest-benchmark test (``bench/conftest.py`` parametrizes ``test_*(benchmark, bench_item)``),
  * a command line (``python -m bench.bench_<op> [--device cpu] [--dtype fp32] [--out bench/out]``).
Results are JSON lines appended to ``bench/out/results.jsonl`` (gitignored; ``bench/results.py``);
``python -m bench.report`` turns them into a Markdown table and a PNG plot.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import os
import platform
import subprocess
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.report import markdown
from bench.results import DEFAULT_OUT, METRICS, OURS_PREFIX, ROOT, append_results, load_results  # noqa: F401
from fastvit.benchmark import (  # noqa: F401 - default_device / default_dtype: the suite's defaults are the CLI's
    DTYPE_NAMES,
    DTYPES,
    Timing,
    Unavailable,
    default_device,
    default_dtype,
    max_abs_diff,
    measure,
    synchronize,
)

try:  # a few shapes recompile the same torch.compile'd function; keep dynamo from giving up on them
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
except AttributeError:  # pragma: no cover - very old torch
    pass


class Skip(Exception):
    """A provider that does not apply here (no CUDA, no transformers, backend missing...): recorded as skipped."""


# ----------------------------------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    try:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def environment(device: str) -> dict:
    """GPU (or CPU) name, library versions, date and git commit, stored with every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    commit = _git("rev-parse", "--short=12", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU: {_cpu_name()} ({os.cpu_count()} threads, torch uses {torch.get_num_threads()})"
    return {
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers_version,
        "python": platform.python_version(),
        # a copy of the tree without .git (the GPU machine's): the commit the caller names in FASTVIT_COMMIT
        "commit": (commit + ("-dirty" if dirty else "")) if commit else os.environ.get("FASTVIT_COMMIT"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@functools.cache
def peaks(device: str, dtype: str) -> dict:
    """Copy bandwidth (GB/s, read + write counted) and matmul throughput (TFLOP/s) measured now on ``device``.

    The kernel numbers are reported as fractions of these, measured in the same run.
    """
    dt = DTYPES[dtype]
    cuda = device == "cuda"
    n = (256 << 20) // 4 if cuda else (32 << 20) // 4  # 256 MiB (GPU) / 32 MiB (CPU) of fp32
    copy_gbps = _copy_gbps(n, device, 20 if cuda else 5)
    m = 8192 if cuda else 1024
    a = torch.randn(m, m, device=device, dtype=dt)
    b = torch.randn(m, m, device=device, dtype=dt)
    t = measure(lambda: a @ b, device, warmup=2, iters=20 if cuda else 5)
    mm_tflops = 2 * m**3 / t.median_ms / 1e9
    return {"copy_GBps": round(copy_gbps, 1), "matmul_TFLOPs": round(mm_tflops, 2), "matmul_dtype": dtype}


def _copy_gbps(n: int, device: str, iters: int) -> float:
    src = torch.randn(n, device=device)  # fp32
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, warmup=2, iters=iters)
    return 2 * src.numel() * src.element_size() / t.median_ms / 1e6


# ------------------------------------------------------------------------------------------------ counting


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the given tensors (None ignored): each input read once + each output written once."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def attention_flops(batch: int, heads: int, seq_q: int, head_dim: int, seq_k: int | None = None) -> int:
    """FLOPs of non-causal attention: two matmuls of 2·S_q·S_k·D each per head, 4·B·H·S_q·S_k·D."""
    return 4 * batch * heads * seq_q * (seq_k if seq_k is not None else seq_q) * head_dim


def metric_value(metric: str, amount: float, ms: float) -> float:
    """``amount`` (bytes, FLOPs or images per call) over ``ms`` milliseconds, in ``metric`` units."""
    if metric == "GB/s":
        return amount / ms / 1e6
    if metric == "TFLOP/s":
        return amount / ms / 1e9
    if metric == "images/s":
        return amount / ms * 1e3
    if metric == "ms":
        return ms
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")


def fraction_of_peak(metric: str, value: float, peak: dict | None) -> float | None:
    if not peak or value is None:
        return None
    ref = {"GB/s": peak.get("copy_GBps"), "TFLOP/s": peak.get("matmul_TFLOPs")}.get(metric)
    return value / ref if ref else None


# ------------------------------------------------------------------------------------------------- specs


@dataclass
class OpBench:
    """One kernel benchmark.

    Attributes:
        name: the op (``"layer_norm_2d"``).
        shapes: device type -> list of shapes (tuples handed to ``make_inputs``); ``"dry"``: tiny shapes for
            ``bench.gpu_run --dry-run`` (CPU, Triton interpreter).
        make_inputs: ``(shape, device, dtype) -> tuple`` of arguments shared by all providers.
        providers: name -> ``(*inputs) -> Tensor``; ``"eager"`` is the HF formula; a ``"compile"`` provider
            (``torch.compile`` of eager) is added automatically. A provider raises :class:`Skip` when it does not
            apply.
        amount: ``inputs -> bytes`` (GB/s) or ``inputs -> FLOPs`` (TFLOP/s).
        metric: ``"GB/s"`` or ``"TFLOP/s"``.
        label: ``shape -> str`` for tables.
        reference: provider whose output the others are compared with.
    """

    name: str
    shapes: dict[str, list[tuple]]
    make_inputs: Callable[..., tuple]
    providers: dict[str, Callable[..., Any]]
    amount: Callable[[tuple], float]
    metric: str = "GB/s"
    label: Callable[[tuple], str] = field(default=lambda shape: "x".join(str(s) for s in shape))
    reference: str = "eager"

    def provider_names(self, device: str) -> list[str]:
        names = list(self.providers)
        if "compile" not in names and compile_enabled(device):
            names.append("compile")
        return names

    def provider(self, name: str) -> Callable[..., Any]:
        if name == "compile" and name not in self.providers:
            return compiled(self.providers[self.reference])
        return self.providers[name]

    def pytest_call(self, shape: tuple, provider: str, device: str, dtype: torch.dtype) -> tuple[Callable, tuple]:
        """(call, arguments) of one pytest-benchmark case."""
        return self.provider(provider), self.make_inputs(shape, device, dtype)


def compile_enabled(device: str) -> bool:
    """torch.compile providers run on CUDA; on CPU (minutes of compilation on small machines) only with
    ``FASTVIT_BENCH_COMPILE=1``."""
    flag = os.environ.get("FASTVIT_BENCH_COMPILE")
    if flag is not None:
        return flag == "1"
    return device == "cuda"


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` (one compiled wrapper per function, shared across shapes)."""
    return torch.compile(fn)


def fastvit_op(name: str) -> Callable[..., Any]:
    """The public fastvit_kernels op ``name`` (Skip when that kernel file is not there yet)."""
    import fastvit_kernels

    try:
        fn = getattr(fastvit_kernels, name)
    except (AttributeError, ImportError) as e:
        raise Skip(f"fastvit_kernels.{name} is not available: {e}") from e
    if isinstance(fn, types.ModuleType):  # the submodule of the same name shadowed the lazy export
        fn = getattr(fn, name)
    return fn


# ------------------------------------------------------------------------------------------------- running


def _kernel_path(device: str) -> str:
    """``fastvit.fused.status.kernel_path``, imported here and not at the top: the harness loads, and records the
    error, even when a fused file is broken."""
    try:
        from fastvit.fused.status import kernel_path
    except Exception as e:  # noqa: BLE001 - reported in the row, not fatal
        return f"unavailable ({type(e).__name__}: {e})"
    return kernel_path(device)


def record(
    *,
    suite: str,
    bench: str,
    case: str,
    provider: str,
    device: str,
    dtype: str,
    metric: str,
    amount: float | None = None,
    timing: Timing | None = None,
    error: str | None = None,
    skipped: bool = False,
    peak: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """One result row (JSON-serializable)."""
    value = metric_value(metric, amount, timing.median_ms) if timing and amount is not None else None
    if timing and metric == "ms":
        value = timing.median_ms
    row = {
        "suite": suite,
        "bench": bench,
        "case": case,
        "provider": provider,
        "device": device,
        "dtype": dtype,
        "metric": metric,
        "value": value,
        "frac_of_peak": fraction_of_peak(metric, value, peak),
        "ms": timing.median_ms if timing else None,
        "ms_p20": timing.p20_ms if timing else None,
        "ms_p80": timing.p80_ms if timing else None,
        "n": timing.n if timing else None,
        "amount": amount,
        "error": error,
        "skipped": skipped,
        "peak": peak,
        "backend": _kernel_path(device) if provider.startswith(OURS_PREFIX) else None,
        **environment(device),
    }
    if extra:
        row.update(extra)
    return row


def error_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def provider_failed(e: Exception, provider: str, where: str, log: Callable[[str], None], **common) -> dict:
    """The record of a provider that did not run: skipped (``Skip``, ``Unavailable``) or failed. A failure is
    recorded, never raised; ``FASTVIT_BENCH_DEBUG=1`` also prints its traceback."""
    if isinstance(e, (Skip, Unavailable)):
        log(f"  {where} {provider}: skipped ({e})")
        return record(provider=provider, error=str(e), skipped=True, **common)
    log(f"  {where} {provider}: FAILED {error_line(e)}")
    if os.environ.get("FASTVIT_BENCH_DEBUG") == "1":
        traceback.print_exc()
    return record(provider=provider, error=error_line(e), **common)


def run_spec(
    spec: OpBench,
    device: str,
    dtype: str,
    *,
    shapes: Sequence[tuple] | None = None,
    providers: Sequence[str] | None = None,
    iters: int | None = None,
    warmup: int = 2,
    peak: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every provider of ``spec`` at every shape; returns the records (errors recorded, never raised).

    ``iters`` / ``warmup``: timed and untimed calls per measurement (after the call whose output is compared);
    ``peak``: the ceilings the values are fractions of (default: :func:`peaks`, measured once per process).
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    dt = DTYPES[dtype]
    peak = peak or peaks(device, dtype)
    iters = iters or (100 if device == "cuda" else 10)
    rows = []
    for shape in shapes if shapes is not None else spec.shapes[device]:
        label = spec.label(shape)
        common = dict(suite="kernel", bench=spec.name, case=label, device=device, dtype=dtype, metric=spec.metric)
        try:
            inputs = spec.make_inputs(shape, device, dt)
            amount = spec.amount(inputs)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the whole shape is skipped
            rows.append(record(provider="*", error=error_line(e), **common))
            log(f"  {spec.name} {label}: inputs failed: {error_line(e)}")
            continue
        ref_out = None
        for name in providers or spec.provider_names(device):
            try:
                fn = spec.provider(name)
                with torch.inference_mode():
                    out = fn(*inputs)
                    synchronize(device)
                    if name == spec.reference:
                        ref_out = out
                    diff = max_abs_diff(out, ref_out) if ref_out is not None and name != spec.reference else None
                    del out
                    t = measure(functools.partial(fn, *inputs), device, warmup=warmup, iters=iters, max_time_s=2.0)
                row = record(provider=name, amount=amount, timing=t, peak=peak, extra={"max_abs_diff": diff}, **common)
                frac = f" ({row['frac_of_peak']:.0%} of peak)" if row["frac_of_peak"] is not None else ""
                log(f"  {spec.name} {label} {name}: {row['value']:.4g} {spec.metric}{frac}, {t.median_ms:.4f} ms")
            except Exception as e:  # noqa: BLE001 - a failing provider is recorded, not fatal
                row = provider_failed(e, name, f"{spec.name} {label}", log, **common)
            rows.append(row)
        del inputs, ref_out
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------ pytest-benchmark


@dataclass
class BenchItem:
    """One pytest-benchmark test: a spec, a shape and a provider."""

    spec: Any
    shape: tuple
    provider: str

    @property
    def id(self) -> str:
        return f"{self.spec.name}-{self.spec.label(self.shape)}-{self.provider}"


def bench_items(module: Any, device: str) -> list[BenchItem]:
    """The pytest parameters of a bench module: every (spec, shape, provider) of its ``SPECS`` on ``device``."""
    items = []
    for spec in getattr(module, "SPECS", ()):
        for shape in spec.shapes[device]:
            for provider in spec.provider_names(device):
                items.append(BenchItem(spec, shape, provider))
    return items


def run_pytest_benchmark(benchmark: Any, item: BenchItem) -> None:
    """Body of a pytest-benchmark test: build the call, check it runs, time it (CUDA synchronized)."""
    import pytest

    device = default_device()
    dt = DTYPES[default_dtype(device)]
    try:
        fn, args = item.spec.pytest_call(item.shape, item.provider, device, dt)
    except Skip as e:
        pytest.skip(str(e))
    benchmark.extra_info.update(bench=item.spec.name, provider=item.provider, device=device, dtype=DTYPE_NAMES[dt])

    def call():
        with torch.inference_mode():
            out = fn(*args)
        synchronize(device)
        return out

    try:
        call()  # warm-up (compilation) outside the timed rounds
    except Skip as e:
        pytest.skip(str(e))
    rounds, warmup = (50, 5) if device == "cuda" else (5, 1)
    out = benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert out is not None


# ---------------------------------------------------------------------------------------------- command line


def cli(specs: Sequence[OpBench], argv: Sequence[str] | None = None) -> int:
    """``python -m bench.bench_<op>``: run the specs, append the results, print their table."""
    p = argparse.ArgumentParser(description=f"Benchmark {', '.join(s.name for s in specs)}")
    add_common_args(p)
    p.add_argument("--providers", help="comma-separated provider names (default: all)")
    args = p.parse_args(argv)
    device, dtype = resolve_device_dtype(args)
    rows = []
    for spec in specs:
        providers = args.providers.split(",") if args.providers else None
        rows += run_spec(spec, device, dtype, providers=providers, iters=args.iters)
    path = append_results(rows, args.out)
    print(markdown(rows))
    print(f"results appended to {path}")
    return 0


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (results.jsonl is appended)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per measurement")


def resolve_device_dtype(args: argparse.Namespace) -> tuple[str, str]:
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible to torch")
    return device, args.dtype or default_dtype(device)
