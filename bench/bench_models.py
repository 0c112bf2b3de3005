"""Whole-model benchmarks with random weights: throughput (images/s at a batch) and batch-1 latency (ms).

Providers (same weights everywhere, outputs compared with fastvit eager):
  HF transformers eager / SDPA (when transformers is installed), fastvit eager, ``torch.compile`` of it (and
  ``mode="reduce-overhead"`` for latency, CUDA only), fastvit fused, fastvit fused + CUDA graphs (latency, CUDA,
  through ``fastvit.patch(model, cuda_graphs=True)``).

    python -m bench.bench_models [--device cuda] [--dtype bf16] [--models convnext-tiny,dinov2-base] [--no-latency]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bench.common import (
    DEFAULT_OUT,
    Skip,
    add_common_args,
    append_results,
    compile_enabled,
    error_line,
    provider_failed,
    record,
    resolve_device_dtype,
    run_pytest_benchmark,
)
from bench.report import markdown
from fastvit.benchmark import DTYPES, ModelVariants, Unavailable, VariantResult, forward_fn, run_variants
from fastvit.benchmark import pixel_values as make_pixels

# (registry name, task): the models of the performance targets
MODELS = [("convnext-tiny", None), ("convnextv2-tiny", None), ("dinov2-base", None), ("altclip", "vision")]
# "eager" first: every other output is compared with it
THROUGHPUT = ("eager", "hf_eager", "hf_sdpa", "compile", "fused")
LATENCY = ("eager", "hf_eager", "hf_sdpa", "compile", "compile_reduce_overhead", "fused", "fused_cuda_graphs")
COMPILED = ("compile", "compile_reduce_overhead")


def provider_name(variant: str) -> str:
    """Result-file name of a variant: ours carry the ``fastvit`` prefix."""
    return f"fastvit_{variant}" if variant.startswith("fused") else variant


@dataclass(frozen=True)
class ModelCase:
    model: str  # registry name or checkpoint directory
    task: str | None
    batch: int
    image_size: int
    display: str | None = None  # the name shown instead of ``model`` (the dry run's tiny config directories)

    @property
    def label(self) -> str:
        task = f"[{self.task}]" if self.task else ""
        return f"{self.display or self.model}{task} b{self.batch} {self.image_size}px"


def run_case(
    case: ModelCase,
    variants: Sequence[str],
    device: str,
    dtype: str,
    *,
    suite: str,
    warmup: int,
    budget_s: float,
    rounds: int | None = None,
    variant_options: dict | None = None,
    separate_compile: bool = False,
    emit: Callable[[list[dict]], None] | None = None,
    log: Callable[[str], None],
) -> list[dict]:
    """Time the variants of one model case interleaved (``fastvit.benchmark.run_variants``); every failure is
    recorded and skipped.

    Args:
        budget_s / rounds: timing budget for all variants together, or an exact number of rounds.
        variant_options: extra keyword arguments of ``ModelVariants`` (the dry run's compile backend, ...).
        separate_compile: time the ``torch.compile`` variants in a second group (interleaved with eager again),
            after the first group's rows are emitted: a compile that never ends costs only its own rows.
        emit: called with each group's rows as soon as they are measured.
    """
    metric = "ms" if suite == "latency" else "images/s"
    common = dict(suite=suite, bench="models", case=case.label, device=device, dtype=dtype, metric=metric)
    emit = emit or (lambda rows: None)
    try:
        mv = ModelVariants(case.model, device=device, dtype=DTYPES[dtype], task=case.task, **(variant_options or {}))
        pixels = make_pixels(mv.model, case.batch, case.image_size, device, DTYPES[dtype])
    except Exception as e:  # noqa: BLE001 - the model cannot be built here: one row says why
        log(f"  {case.label}: cannot build: {error_line(e)}")
        rows = [record(provider="*", error=error_line(e), **common)]
        emit(rows)
        return rows
    rows = []
    if not compile_enabled(device) and not (variant_options or {}).get("compile_backend"):
        for variant in [v for v in variants if v in COMPILED]:
            skip = Skip("torch.compile is off on CPU (set FASTVIT_BENCH_COMPILE=1)")
            rows.append(provider_failed(skip, provider_name(variant), case.label, log, **common))
        variants = [v for v in variants if v not in COMPILED]
    groups = [list(variants)]
    if separate_compile and any(v in COMPILED for v in variants):
        groups = [[v for v in variants if v not in COMPILED], ["eager"] + [v for v in variants if v in COMPILED]]
    for group in groups:
        results = run_variants(
            lambda variant: forward_fn(mv.get(variant), pixels),
            group,
            device,
            warmup=warmup,
            budget_s=budget_s,
            rounds=rounds,
            log=lambda s: log(f"  {case.label} {s}"),
        )
        group_rows = [_variant_row(res, mv, case, common, log) for res in results.values()]
        emit(group_rows)
        rows += group_rows
    return rows


def _variant_row(res: VariantResult, mv: ModelVariants, case: ModelCase, common: dict, log: Callable) -> dict:
    """The result record of one variant: images/s or ms with spread, speedup over eager, max |diff|."""
    name = provider_name(res.variant)
    if res.error is not None:
        return provider_failed(res.error, name, case.label, log, **common)
    extra = {
        "max_abs_diff": res.diff,
        "batch": case.batch,
        "image_size": case.image_size,
        "spread": res.timing.spread,
        "first_call_s": res.first_call_s,
        "vs_eager": None if res.ratio is None else vars(res.ratio),
    }
    if res.variant == "fused" and mv.patch_report is not None:
        extra["patch"] = str(mv.patch_report).splitlines()[0][:200]
    row = record(provider=name, amount=case.batch, timing=res.timing, extra=extra, **common)
    vs = f", vs eager {res.ratio}" if res.ratio is not None else ""
    log(
        f"  {case.label} {name}: {row['value']:.4g} {common['metric']} ({res.timing.median_ms:.3f} ms/batch, spread "
        f"{res.timing.spread:.0%}{vs}), max|diff| {res.diff}"
    )
    return row


def run(
    device: str,
    dtype: str,
    *,
    models: Sequence[tuple[str, str | None]] = MODELS,
    batch: int | None = None,
    image_size: int = 224,
    throughput: bool = True,
    latency: bool = True,
    iters: int | None = None,
    budget_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Throughput and latency records for ``models`` (defaults: B=64 on CUDA, B=2 on CPU; 224 px).

    Each case times its variants interleaved for ``budget_s`` (default 4 s CUDA, 3 s CPU), or ``iters`` rounds.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cuda = device == "cuda"
    batch = batch or (64 if cuda else 2)
    budget_s = budget_s if budget_s is not None else (4.0 if cuda else 3.0)
    timing = dict(budget_s=budget_s, rounds=iters, log=log)
    rows = []
    for model, task in models:
        if throughput:
            case = ModelCase(model, task, batch, image_size)
            rows += run_case(case, THROUGHPUT, device, dtype, suite="model", warmup=2, **timing)
        if latency:
            case = ModelCase(model, task, 1, image_size)
            rows += run_case(case, LATENCY, device, dtype, suite="latency", warmup=3, **timing)
        if cuda:
            torch.cuda.empty_cache()  # the case's models are gone with run_case's frame
    return rows


# ------------------------------------------------------------------------------------------ pytest-benchmark


@functools.lru_cache(maxsize=4)
def _variants(model: str, task: str | None, device: str, dtype: torch.dtype) -> ModelVariants:
    return ModelVariants(model, device=device, dtype=dtype, task=task)


class ModelSpec:
    """pytest-benchmark view of the model benchmark (same duck type as ``OpBench`` for ``bench/conftest.py``)."""

    name = "models"
    shapes = {
        "cuda": [ModelCase(m, t, 64, 224) for m, t in MODELS],
        "cpu": [ModelCase("convnext-tiny", None, 1, 64)],  # small: the whole pytest bench run stays well under 60 s
    }

    @staticmethod
    def label(case: ModelCase) -> str:
        return case.label.replace(" ", "-")

    @staticmethod
    def provider_names(device: str) -> list[str]:
        names = ["eager", "hf_eager", "fused"]
        return names + ["compile"] if compile_enabled(device) else names

    @staticmethod
    def pytest_call(case: ModelCase, provider: str, device: str, dtype: torch.dtype):
        try:
            mv = _variants(case.model, case.task, device, dtype)
            pixels = make_pixels(mv.model, case.batch, case.image_size, device, dtype)
            model = mv.get(provider)
        except Unavailable as e:
            raise Skip(str(e)) from e
        return forward_fn(model, pixels), ()


SPECS = [ModelSpec()]


def test_models(benchmark, bench_item):
    run_pytest_benchmark(benchmark, bench_item)


# ---------------------------------------------------------------------------------------------- command line


def parse_models(text: str | None) -> list[tuple[str, str | None]]:
    """``"convnext-tiny,altclip:vision"`` -> [("convnext-tiny", None), ("altclip", "vision")]."""
    if not text:
        return list(MODELS)
    out = []
    for item in text.split(","):
        name, _, task = item.strip().partition(":")
        out.append((name, task or dict(MODELS).get(name)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastvit model benchmarks (random weights)")
    add_common_args(p)
    p.add_argument("--models", help="comma-separated names, name:task for a task (default: the four target models)")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 64 on CUDA, 2 on CPU)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency suite")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput suite")
    p.add_argument("--budget-s", type=float, default=None, help="timing budget per case (default 4 CUDA, 3 CPU)")
    args = p.parse_args(argv)
    device, dtype = resolve_device_dtype(args)
    rows = run(
        device,
        dtype,
        models=parse_models(args.models),
        batch=args.batch,
        image_size=args.image_size,
        throughput=not args.no_throughput,
        latency=not args.no_latency,
        iters=args.iters,
        budget_s=args.budget_s,
    )
    path = append_results(rows, args.out or DEFAULT_OUT)
    print(markdown(rows))
    print(f"results appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
