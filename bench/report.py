"""Markdown table and PNG plot from the results file (latest measurement per bench, case, provider, device, dtype).

    python -m bench.report [--results bench/out/results.jsonl] [--out bench/out] [--no-plot]

Writes ``results.md`` and ``results.png`` (matplotlib optional: without it the plot is skipped with a message).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.results import DEFAULT_OUT, METRICS, OURS_PREFIX, RESULTS_NAME, load_results

TableKey = tuple[str, str, str, str, str]  # suite, bench, device name, dtype, metric


def latest(rows: Sequence[dict]) -> list[dict]:
    """The last row per (suite, bench, case, provider, device name, dtype); file order is time order."""
    last: dict[tuple, dict] = {}
    for row in rows:
        key = (row["suite"], row["bench"], row["case"], row["provider"], row.get("device_name"), row["dtype"])
        last[key] = row
    return list(last.values())


def tables(rows: Sequence[dict]) -> dict[TableKey, dict]:
    """Group rows into tables: key -> {"cases": [...], "providers": [...], "cells": {(case, provider): row}}."""
    out: dict[TableKey, dict] = {}
    for row in rows:
        if row["provider"] == "*":  # a whole case that failed to set up
            continue
        key = (row["suite"], row["bench"], row.get("device_name") or row["device"], row["dtype"], row["metric"])
        t = out.setdefault(key, {"cases": [], "providers": [], "cells": {}})
        if row["case"] not in t["cases"]:
            t["cases"].append(row["case"])
        if row["provider"] not in t["providers"]:
            t["providers"].append(row["provider"])
        t["cells"][(row["case"], row["provider"])] = row
    for t in out.values():  # baselines first, ours last, otherwise in order of appearance
        order = list(t["providers"])
        t["providers"] = sorted(order, key=lambda p: (p.startswith(OURS_PREFIX), order.index(p)))
    return out


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def cell(row: dict | None) -> str:
    """``1,234 (56%)`` (value, fraction of the roofline measured in the same run), ``skip`` or ``fail``."""
    if row is None:
        return ""
    if row.get("value") is None:
        return "skip" if row.get("skipped") else "fail"
    frac = row.get("frac_of_peak")
    return _fmt(row["value"]) + (f" ({frac:.0%})" if frac is not None else "")


def speedup(t: dict, case: str, metric: str) -> str:
    """Best of ours over the best baseline, ``1.23x (1.10-1.35)`` (>1 is faster for every metric).

    The range comes from the two rows' timing spreads (baseline p20 over ours p80 to baseline p80 over ours p20):
    a ratio is never shown without it when the rows have one.
    """
    higher = METRICS.get(metric, True)
    ours, base = [], []
    for p in t["providers"]:
        row = t["cells"].get((case, p))
        if row and row.get("value") is not None:
            (ours if p.startswith(OURS_PREFIX) else base).append(row)
    if not ours or not base:
        return "–"
    pick = max if higher else min
    o, b = (pick(rows, key=lambda r: r["value"]) for rows in (ours, base))
    ratio = o["value"] / b["value"] if higher else b["value"] / o["value"]
    if not all(r.get(k) for r in (o, b) for k in ("ms", "ms_p20", "ms_p80")):
        return f"{ratio:.2f}x"
    lo = ratio * (b["ms_p20"] / b["ms"]) / (o["ms_p80"] / o["ms"])
    hi = ratio * (b["ms_p80"] / b["ms"]) / (o["ms_p20"] / o["ms"])
    return f"{ratio:.2f}x ({lo:.2f}-{hi:.2f})"


def markdown(rows: Sequence[dict], *, title: str | None = None) -> str:
    """Markdown tables (one per suite/bench/device/dtype) of the latest rows, with a provenance line each."""
    rows = latest(rows)
    parts = [f"# {title}\n"] if title else []
    for (suite, bench, device_name, dtype, metric), t in tables(rows).items():
        any_row = next(iter(t["cells"].values()))
        peak = any_row.get("peak") or {}
        ref = ""
        if metric == "GB/s" and peak.get("copy_GBps"):
            ref = f"; % of copy bandwidth {peak['copy_GBps']:,.0f} GB/s"
        elif metric == "TFLOP/s" and peak.get("matmul_TFLOPs"):
            ref = f"; % of {peak.get('matmul_dtype', dtype)} matmul {peak['matmul_TFLOPs']:,.1f} TFLOP/s"
        better = "higher is better" if METRICS.get(metric, True) else "lower is better"
        parts.append(f"### {bench} ({suite}) — {metric}, {better}{ref}")
        parts.append(
            f"{device_name} · {dtype} · torch {any_row.get('torch')} · triton {any_row.get('triton')} · "
            f"{any_row.get('date')} · commit {any_row.get('commit')}"
        )
        backends = {r.get("backend") for r in t["cells"].values() if r.get("backend")}
        if backends:
            parts[-1] += f" · fastvit kernels: {', '.join(sorted(backends))}"
        parts.append("")
        header = ["case", *t["providers"], "ours / best baseline (p20-p80)"]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for case in t["cases"]:
            cells = [cell(t["cells"].get((case, p))) for p in t["providers"]]
            parts.append("| " + " | ".join([case, *cells, speedup(t, case, metric)]) + " |")
        notes: dict[tuple, list[str]] = {}  # (provider, status, error) -> cases
        for r in t["cells"].values():
            if r.get("error") and r.get("value") is None:
                status = "skipped" if r.get("skipped") else "failed"
                notes.setdefault((r["provider"], status, r["error"]), []).append(r["case"])
        if notes:
            parts.append("")
        for (provider, status, error), cases in notes.items():
            where = "all cases" if len(cases) == len(t["cases"]) > 1 else ", ".join(cases)
            parts.append(f"- {provider}: {status} ({where}): {error}")
        parts.append("")
    return "\n".join(parts) if parts else "(no results)\n"


def plot(rows: Sequence[dict], path: str | Path) -> Path | None:
    """Grouped bars, one panel per table (ours vs baselines per case). None (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'fastvit[plot]')", file=sys.stderr)
        return None
    groups = tables(latest(rows))
    if not groups:
        return None
    n = len(groups)
    cols = min(n, 2)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 3.6 * nrows), squeeze=False)
    for ax, ((suite, bench, device_name, dtype, metric), t) in zip(list(axes.flat)[:n], groups.items(), strict=True):
        width = 0.8 / max(1, len(t["providers"]))
        for i, p in enumerate(t["providers"]):
            values = [(t["cells"].get((c, p)) or {}).get("value") or 0.0 for c in t["cases"]]
            xs = [j + (i - (len(t["providers"]) - 1) / 2) * width for j in range(len(t["cases"]))]
            ax.bar(xs, values, width, label=p, hatch="//" if p.startswith(OURS_PREFIX) else None)
        ax.set_xticks(range(len(t["cases"])))
        ax.set_xticklabels(t["cases"], rotation=15, fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(f"{bench} ({suite}) · {dtype} · {device_name[:40]}", fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: str | Path, out_dir: str | Path, *, make_plot: bool = True) -> tuple[Path, Path | None]:
    """``results.md`` (and ``results.png``) in ``out_dir`` from the results file; returns their paths."""
    rows = load_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown(rows, title="fastvit benchmark results"))
    png = plot(rows, out_dir / "results.png") if make_plot and rows else None
    return md, png


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(DEFAULT_OUT / RESULTS_NAME))
    p.add_argument("--out", default=None, help="directory for results.md / results.png (default: next to results)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out) if args.out else (results if results.is_dir() else results.parent)
    if not load_results(results):
        print(f"error: no results in {results}; run `python -m bench.run_all` first", file=sys.stderr)
        return 1
    md, png = write_report(results, out, make_plot=not args.no_plot)
    print(md.read_text())
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
