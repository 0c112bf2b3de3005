"""Run every benchmark (kernels, then models: throughput and batch-1 latency) in one call, append the results,
write the Markdown table and PNG plot, and print a short summary.

    python -m bench.run_all --out bench/out                  # everything, on CUDA when available
    python -m bench.run_all --suite kernels                  # kernels only (a few minutes on an H100)
    python -m bench.run_all --suite models --models convnext-tiny,dinov2-base
    python -m bench.run_all --device cpu                     # small CPU shapes (fastvit = torch fallbacks)

Robust by design: a provider or shape that fails is recorded with its error and skipped; results are appended
after every benchmark, so a run cut short keeps what it measured; ``--budget-s`` stops starting new benchmarks
once the time is spent.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from bench.common import (
    DEFAULT_OUT,
    add_common_args,
    append_results,
    environment,
    peaks,
    resolve_device_dtype,
    run_spec,
)

KERNEL_MODULES = (
    "bench_layer_norm",
    "bench_layer_norm_2d",
    "bench_grn",
    "bench_swiglu",
    "bench_dwconv",
    "bench_attention",
    "bench_fused_linear",
)


def summary(rows: Sequence[dict]) -> str:
    """Short table: per bench and case, the best of ours vs the best baseline."""
    from bench.report import latest, speedup, tables

    lines = [f"{'bench':<22} {'case':<34} {'metric':<9} {'ours':>10} {'best baseline':>24} {'ratio (p20-p80)':>20}"]
    for (suite, bench, _, _, metric), t in tables(latest(rows)).items():
        higher = metric != "ms"
        for case in t["cases"]:
            best = {True: None, False: None}  # is-ours -> (value, provider)
            for p in t["providers"]:
                row = t["cells"].get((case, p))
                if not row or row.get("value") is None:
                    continue
                ours = p.startswith("fastvit")
                cur = best[ours]
                if cur is None or (row["value"] > cur[0]) == higher:
                    best[ours] = (row["value"], p)
            o, b = best[True], best[False]
            ours_s = f"{o[0]:.4g}" if o else "–"
            base_s = f"{b[0]:.4g} {b[1]}" if b else "–"
            name = bench if suite == "kernel" else f"{bench}:{suite}"
            lines.append(f"{name:<22} {case:<34} {metric:<9} {ours_s:>10} {base_s:>24} {speedup(t, case, metric):>20}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run all fastvit benchmarks")
    add_common_args(p)
    p.add_argument("--suite", choices=["all", "kernels", "models"], default="all")
    p.add_argument("--only", help="comma-separated kernel bench modules or op names (e.g. grn,attention)")
    p.add_argument("--models", help="model list for the model suite (see bench.bench_models --help)")
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency part of the model suite")
    p.add_argument("--budget-s", type=float, default=None, help="start no new benchmark after this many seconds")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    device, dtype = resolve_device_dtype(args)
    out = args.out or DEFAULT_OUT
    start = time.perf_counter()
    env = environment(device)
    print(f"fastvit benchmarks on {env['device_name']} · {dtype} · torch {env['torch']} · triton {env['triton']}")
    print(f"roofline references (this run): {peaks(device, dtype)}", flush=True)

    def over_budget(what: str) -> bool:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            print(f"time budget spent: skipping {what}", file=sys.stderr)
            return True
        return False

    all_rows: list[dict] = []
    if args.suite in ("all", "kernels"):
        wanted = {w.strip().removeprefix("bench_") for w in args.only.split(",")} if args.only else None
        for name in KERNEL_MODULES:
            module = importlib.import_module(f"bench.{name}")
            for spec in module.SPECS:
                if wanted and spec.name not in wanted and name.removeprefix("bench_") not in wanted:
                    continue
                if over_budget(spec.name):
                    continue
                print(f"[kernels] {spec.name}", file=sys.stderr, flush=True)
                rows = run_spec(spec, device, dtype, iters=args.iters)
                append_results(rows, out)
                all_rows += rows
    if args.suite in ("all", "models"):
        from bench import bench_models

        for model in bench_models.parse_models(args.models):
            if over_budget(model[0]):
                continue
            print(f"[models] {model[0]}", file=sys.stderr, flush=True)
            rows = bench_models.run(device, dtype, models=[model], latency=not args.no_latency, iters=args.iters)
            append_results(rows, out)
            all_rows += rows

    from bench.report import write_report

    md, png = write_report(out, out, make_plot=not args.no_plot)
    print()
    print(summary(all_rows))
    failed = [r for r in all_rows if r.get("error") and not r.get("skipped")]
    print(
        f"\n{len(all_rows)} results ({len(failed)} failed) in {time.perf_counter() - start:.0f} s; appended to "
        f"{out}/results.jsonl; table {md}" + (f", plot {png}" if png else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
