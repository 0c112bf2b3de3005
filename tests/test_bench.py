"""Benchmark harness units: byte / FLOP counting, timing records, results file, Markdown table, plot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a repo directory, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import common, report  # noqa: E402
from bench.bench_attention import SPECS as ATTENTION  # noqa: E402
from bench.bench_dwconv import SPECS as DWCONV  # noqa: E402
from bench.bench_grn import SPECS as GRN  # noqa: E402
from bench.bench_layer_norm_2d import SPECS as LN2D  # noqa: E402
from bench.bench_swiglu import SPECS as SWIGLU  # noqa: E402
from fastvit.benchmark import Timing, measure  # noqa: E402

PEAK = {"copy_GBps": 100.0, "matmul_TFLOPs": 2.0, "matmul_dtype": "fp32"}


@pytest.fixture
def fixed_peaks(monkeypatch):
    monkeypatch.setattr(common, "peaks", lambda device, dtype: PEAK)


def test_counting():
    x = torch.empty(2, 3, dtype=torch.bfloat16)
    assert common.tensor_bytes(x, None, torch.empty(5)) == 2 * 3 * 2 + 5 * 4
    assert common.attention_flops(64, 12, 257, 64) == 4 * 64 * 12 * 257 * 257 * 64
    assert common.metric_value("GB/s", 2e9, 1000.0) == pytest.approx(2.0)  # 2 GB in 1 s
    assert common.metric_value("TFLOP/s", 3e12, 1000.0) == pytest.approx(3.0)
    assert common.metric_value("images/s", 64, 500.0) == pytest.approx(128.0)
    assert common.fraction_of_peak("GB/s", 50.0, PEAK) == pytest.approx(0.5)
    assert common.fraction_of_peak("TFLOP/s", 1.0, PEAK) == pytest.approx(0.5)
    assert common.fraction_of_peak("images/s", 1.0, PEAK) is None


@pytest.mark.parametrize(
    "spec, shape, expected",
    [
        # x [2,4,3,3] read + y written, weight and bias [4]
        (LN2D[0], (2, 4, 3, 3), (2 * 72 + 2 * 4) * 4),
        # x [1,2,2,8] read + y written, gamma and beta [1,1,1,8]
        (GRN[0], (1, 2, 2, 8), (2 * 32 + 2 * 8) * 4),
        # h [3, 8] read, y [3, 4] written
        (SWIGLU[0], (3, 8), (24 + 12) * 4),
        # x [1,2,5,5] read + y written, weight [2,1,7,7], bias [2]
        (DWCONV[0], (1, 2, 5, 5), (2 * 50 + 98 + 2) * 4),
        # ... plus the LayerNorm weight and bias [2]
        (DWCONV[1], (1, 2, 5, 5), (2 * 50 + 98 + 2 + 4) * 4),
        # 4 * B * H * S^2 * D
        (ATTENTION[0], (2, 3, 5, 8), 4 * 2 * 3 * 25 * 8),
    ],
)
def test_spec_amounts(spec, shape, expected):
    inputs = spec.make_inputs(shape, "cpu", torch.float32)
    assert spec.amount(inputs) == expected


def test_measure_cpu():
    t = measure(lambda: torch.ones(8).sum(), "cpu", warmup=1, iters=4)
    assert isinstance(t, Timing) and t.n == 4
    assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms


def _broken(*args):
    raise RuntimeError("boom\nsecond line")


def _not_here(*args):
    raise common.Skip("not on this device")


def test_run_spec_records_failures(fixed_peaks):
    spec = common.OpBench(
        name="toy",
        shapes={"cpu": [(4, 8)]},
        make_inputs=lambda shape, device, dtype: (torch.randn(*shape, device=device, dtype=dtype),),
        providers={"eager": lambda x: x * 2, "fastvit": lambda x: x + x, "broken": _broken, "absent": _not_here},
        amount=lambda inputs: common.tensor_bytes(inputs[0], inputs[0]),
    )
    rows = common.run_spec(spec, "cpu", "fp32", iters=2, log=lambda s: None)
    by = {r["provider"]: r for r in rows}
    assert set(by) >= {"eager", "fastvit", "broken", "absent"}
    assert by["fastvit"]["value"] > 0 and by["fastvit"]["max_abs_diff"] == 0.0
    assert by["fastvit"]["frac_of_peak"] == pytest.approx(by["fastvit"]["value"] / PEAK["copy_GBps"])
    assert by["fastvit"]["backend"]  # what the fastvit provider ran (triton / torch fallback)
    assert by["broken"]["value"] is None and by["broken"]["error"] == "RuntimeError: boom"
    assert by["absent"]["skipped"] and by["absent"]["error"] == "not on this device"
    for key in ("device_name", "torch", "triton", "date", "commit"):
        assert key in by["eager"]


def test_results_file_table_and_plot(tmp_path, fixed_peaks):
    common_kw = dict(suite="kernel", bench="toy", device="cpu", dtype="fp32", metric="GB/s", peak=PEAK)
    old = common.record(case="4x8", provider="eager", amount=1e9, timing=Timing(1000, 1000, 1000, 1), **common_kw)
    rows = [
        common.record(case="4x8", provider="eager", amount=1e9, timing=Timing(100, 90, 110, 3), **common_kw),
        common.record(case="4x8", provider="fastvit", amount=1e9, timing=Timing(50, 45, 55, 3), **common_kw),
        common.record(case="4x8", provider="compile", error="RuntimeError: no compiler", **common_kw),
    ]
    path = common.append_results([old], tmp_path)
    common.append_results(rows, tmp_path)
    loaded = common.load_results(path)
    assert len(loaded) == 4 and loaded[0]["ms"] == 1000
    latest = report.latest(loaded)
    assert len(latest) == 3  # the later eager row replaced the earlier one
    md = report.markdown(loaded)
    assert "| case | eager | compile | fastvit | ours / best baseline (p20-p80) |" in md
    # eager: 1e9 B / 100 ms = 10 GB/s = 10% of 100; ours 20 GB/s = 20%: 2x the best baseline,
    # from 90 / 55 = 1.64x to 110 / 45 = 2.44x over the two spreads
    assert "| 4x8 | 10.0 (10%) | fail | 20.0 (20%) | 2.00x (1.64-2.44) |" in md
    assert "- compile: failed (4x8): RuntimeError: no compiler" in md
    pytest.importorskip("matplotlib")
    md_path, png = report.write_report(path, tmp_path)
    assert md_path.read_text().startswith("# fastvit benchmark results")
    assert png is not None and png.stat().st_size > 0


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    row = common.record(
        suite="kernel",
        bench="t",
        case="c",
        provider="eager",
        device="cpu",
        dtype="fp32",
        metric="GB/s",
        amount=1e6,
        timing=Timing(1, 1, 1, 1),
    )
    assert report.plot([row], tmp_path / "x.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_bench_items_cover_specs():
    import bench.bench_dwconv as module

    items = common.bench_items(module, "cpu")
    ids = [item.id for item in items]
    assert len(ids) == len(set(ids))
    assert "dwconv2d-2x96x56x56-eager" in ids and "dwconv2d_layer_norm-2x768x7x7-fastvit" in ids


def test_model_variants_share_weights():
    """eager, fused and fused + CUDA-graph runner (the fused forward on CPU) are separate modules with the same
    weights and outputs; building the fused ones leaves the eager model exactly as it was."""
    import fastvit_kernels

    from fastvit.benchmark import ModelVariants, Unavailable, forward_fn, main_output, max_abs_diff, pixel_values

    mv = ModelVariants("convnextv2-atto", device="cpu", dtype=torch.float32, cuda_only_on_cpu=True)
    px = pixel_values(mv.model, 1, 32, "cpu", torch.float32)
    with fastvit_kernels.backend("torch"):
        ref = main_output(forward_fn(mv.get("eager"), px)())
        fused = main_output(forward_fn(mv.get("fused"), px)())
        graphs = main_output(forward_fn(mv.get("fused_cuda_graphs"), px)())
        again = main_output(forward_fn(mv.get("eager"), px)())
    assert mv.patch_report is not None
    assert mv.get("fused") is mv.get("fused") and mv.get("fused") is not mv.get("eager")
    assert max_abs_diff(fused, ref) < 1e-4 and max_abs_diff(graphs, ref) < 1e-4
    assert torch.equal(again, ref), "building the fused variants must not change the eager model"
    with pytest.raises(Unavailable, match="CUDA only"):
        ModelVariants("convnextv2-atto", device="cpu", dtype=torch.float32).get("fused_cuda_graphs")


# --------------------------------------------------------------------- the interleaved loop, on a fake clock


class FakeClock:
    """A clock that advances only when a fake variant "runs": ``cost[name]`` ms per call, plus ``extra`` ms for
    the calls made while ``slow`` is set (a busy machine)."""

    def __init__(self):
        self.now, self.calls, self.slow = 0.0, [], 0.0

    def __call__(self) -> float:
        return self.now

    def variant(self, name: str, ms: float):
        def call():
            self.calls.append(name)
            self.now += (ms + self.slow) / 1e3
            return torch.full((2,), ms)

        return call


def test_run_variants_interleaves_to_a_budget():
    from fastvit.benchmark import Unavailable, run_variants

    clock = FakeClock()
    calls = {"a": clock.variant("a", 4.0), "b": clock.variant("b", 2.0), "c": clock.variant("c", 8.0)}

    def get(name):
        if name == "absent":
            raise Unavailable("not here")
        if name == "broken":
            raise RuntimeError("boom\nmore")
        return calls[name]

    res = run_variants(get, ["a", "b", "absent", "broken", "c"], "cpu", warmup=1, budget_s=1.0, clock=clock)
    assert list(res) == ["a", "b", "absent", "broken", "c"]
    assert res["absent"].status == "unavailable" and res["absent"].message == "not here"
    assert res["broken"].status == "failed" and res["broken"].message == "RuntimeError: boom"
    # preparation: first call + 1 warm-up each, in order; then rounds a b c, b c a, c a b, ...
    assert clock.calls[:6] == ["a", "a", "b", "b", "c", "c"]
    timed = clock.calls[6:]
    assert timed[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    rounds = res["a"].timing.n
    assert res["b"].timing.n == res["c"].timing.n == rounds and len(timed) == 3 * rounds
    assert 1.0 <= rounds * 14e-3 < 1.0 + 14e-3  # stopped at the first round boundary past the 1 s budget
    assert res["a"].timing.median_ms == pytest.approx(4.0) and res["a"].timing.spread == 0
    assert res["a"].ratio is None  # the reference
    assert res["b"].ratio.median == pytest.approx(2.0) and res["c"].ratio.median == pytest.approx(0.5)
    assert str(res["b"].ratio) == "2.00x (2.00-2.00)"
    assert res["b"].diff == pytest.approx(2.0) and res["c"].diff == pytest.approx(4.0)  # vs the reference output


def test_run_variants_fixed_rounds_and_paired_ratio_spread():
    """A machine that slows down for a while slows both variants of those rounds: the paired ratio stays tight
    while the times themselves spread."""
    from fastvit.benchmark import run_variants

    clock = FakeClock()
    a, b = clock.variant("a", 10.0), clock.variant("b", 5.0)
    seen = []

    def get(name):
        return {"a": a, "b": b}[name]

    def log(line):
        seen.append(line)
        if line.startswith("timing"):
            clock.slow = 0.0

    res = run_variants(get, ["a", "b"], "cpu", warmup=0, rounds=4, clock=clock, log=log)
    assert res["a"].timing.n == res["b"].timing.n == 4
    assert clock.calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert any(line.startswith("timed 4 rounds") for line in seen)
    assert res["b"].ratio.median == pytest.approx(2.0)


def test_timing_and_ratio_statistics():
    from fastvit.benchmark import ratio_of, summarize

    t = summarize([10, 11, 12, 13, 30])
    assert t.median_ms == 12 and t.min_ms == 10 and t.max_ms == 30 and t.n == 5
    assert t.p20_ms < t.median_ms < t.p80_ms and t.spread == pytest.approx((t.p80_ms - t.p20_ms) / 12)
    r = ratio_of([10, 20, 30], [5, 10, 30])
    assert (r.median, r.n) == (2.0, 3) and r.p20 < r.median
    with pytest.raises(ValueError):
        summarize([])


def test_set_threads_default_on_cpu():
    from fastvit.benchmark import CPU_THREADS, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(None, "cpu") == CPU_THREADS
        assert set_threads(2, "cpu") == 2
        with pytest.raises(ValueError, match="at least 1"):
            set_threads(0, "cpu")
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ bench.gpu_run


def _gpu_run(tmp_path: Path, *args: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_run", "--dry-run", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, common.load_results(out)


def _steps(rows: list[dict]) -> dict[str, dict]:
    return {r["case"]: r for r in rows if r["suite"] == "run" and r["bench"] == "steps"}


@pytest.mark.slow
def test_gpu_run_dry_run(tmp_path):
    """The GPU run's steps on CPU (Triton interpreter, one tiny model; .ci/run runs every step and model): each
    step runs, every variant of the latency suite (CUDA graphs and reduce-overhead falling back on CPU) is
    measured, the report is written. About a minute on an idle 2-core machine."""
    proc, rows = _gpu_run(tmp_path, "--models", "dinov2-base", "--steps", "env,ceilings,kernels,latency,profile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _steps(rows)
    assert list(steps) == ["env", "ceilings", "kernels", "latency", "profile"]
    assert {s: r["status"] for s, r in steps.items() if r["status"] != "ok"} == {}
    measured = {(r["suite"], r["provider"]) for r in rows if r.get("value") is not None}
    for provider in ("eager", "fastvit_fused", "fastvit_fused_cuda_graphs", "compile", "compile_reduce_overhead"):
        assert ("latency", provider) in measured, provider
    kernels = {r["bench"] for r in rows if r["suite"] == "kernel" and r["provider"] == "fastvit" and r["value"]}
    assert kernels >= {"layer_norm", "layer_norm_2d", "grn", "swiglu", "dwconv2d", "attention"}
    assert {r["case"] for r in rows if r["suite"] == "ceiling"} == {"copy", "matmul"}
    fused = next(r for r in rows if r["suite"] == "latency" and r["provider"] == "fastvit_fused")
    assert fused["max_abs_diff"] < 1e-4 and fused["vs_eager"]["p20"] <= fused["vs_eager"]["median"]
    assert next(r for r in rows if r["suite"] == "profile").get("profile"), "fastvit profile --measure output"
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    plot = importlib.util.find_spec("matplotlib") is not None  # the plot extra (the GPU machines have it)
    assert files == ["gpu_run.log", "results.jsonl", "results.md"] + (["results.png"] if plot else [])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Steps" in md and "| latency | ok |" in md and "## Summary" in md
    assert proc.stdout.rstrip().splitlines()[-1].startswith("gpu_run: "), "the summary table comes last"


def test_gpu_run_never_starts_a_step_it_cannot_finish(tmp_path):
    """A budget too small for any measuring step: env (what the machine is) runs, every other step is recorded as
    skipped with its reason, the report is still written."""
    proc, rows = _gpu_run(tmp_path, "--budget-s", "4", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _steps(rows)
    assert list(steps) == ["env", "gpu_tests", "ceilings", "kernels", "throughput", "latency", "profile"]
    assert steps.pop("env")["status"] == "ok"
    for step, row in steps.items():
        assert row["status"] == "skipped" and row["error"].startswith("budget:"), (step, row)
    assert (tmp_path / "out" / "results.md").exists()


def test_gpu_run_plan_admits_items_round_by_round(tmp_path):
    """The schedule by the estimates: every step's first item before any step's second; nothing past the budget."""
    from bench import gpu_run

    def plan(budget: float) -> dict[str, list[str]]:
        run = gpu_run.Run(gpu_run.build_parser().parse_args(["--out", str(tmp_path), "--budget-s", str(budget)]))
        return run.admit(budget, run.steps)

    est = gpu_run.ESTIMATES["gpu"]
    firsts = sum(est["step"].values()) + sum(
        est["child_start"] + gpu_run.item_estimate(est, step, items[0])
        for step, items in [("ceilings", ["ceilings"]), ("kernels", ["layer_norm"]), ("profile", ["convnext-tiny"])]
        + [(step, [gpu_run.MODELS[0][0]]) for step in ("throughput", "latency")]
    )
    admitted = plan(firsts)
    assert all(len(items) == 1 for items in admitted.values()), admitted  # exactly the first items fit
    admitted = plan(firsts - 1)
    assert admitted["profile"] == [] and admitted["env"] == ["env"]  # the last step's first item no longer fits
    everything = plan(10_000)
    assert everything["latency"] == [m for m, _ in gpu_run.MODELS] and everything["kernels"] == gpu_run.kernel_names()


def test_gpu_run_pytest_parsing():
    from bench.gpu_run import parse_pytest

    cut = "tests/a.py::t[bf16-(2, 3)] SKIPPED (needs a CUDA GPU) [ 10%]\ntests/a.py::u FAILED [ 20%]\n"
    assert parse_pytest(cut) == ({"skipped": 1, "failed": 1}, ["tests/a.py::u"])  # cut short: counted per line
    done = cut + "=========== 1 failed, 100 skipped, 374 deselected in 9.00s ===========\n"
    assert parse_pytest(done)[0] == {"failed": 1, "skipped": 100, "deselected": 374}  # finished: pytest's count
