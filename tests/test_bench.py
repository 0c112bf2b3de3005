"""Benchmark harness units: byte / FLOP counting, timing records, results file, Markdown table, plot."""

from __future__ import annotations

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
    assert "| case | eager | compile | fastvit | ours / best baseline |" in md
    # eager: 1e9 B / 100 ms = 10 GB/s = 10% of 100; ours 20 GB/s = 20%: 2x the best baseline
    assert "| 4x8 | 10.0 (10%) | fail | 20.0 (20%) | 2.00x |" in md
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


def test_model_variants_share_weights_and_toggle_patching():
    """eager -> fused -> fused + CUDA-graph runner (falls back to eager on CPU) -> eager: one module, same outputs."""
    import fastvit_kernels

    from fastvit.benchmark import ModelVariants, Unavailable, forward_fn, main_output, max_abs_diff, pixel_values

    mv = ModelVariants("convnextv2-atto", device="cpu", dtype=torch.float32)
    px = pixel_values(mv.model, 1, 32, "cpu", torch.float32)
    with fastvit_kernels.backend("torch"):
        ref = main_output(forward_fn(mv.get("eager"), px)())
        fused = main_output(forward_fn(mv.get("fused"), px)())
        assert mv.patch_report is not None
        mv._patch(graphs=True)  # what fused_cuda_graphs does on CUDA; the runner runs the fused forward on CPU
        graphs = main_output(forward_fn(mv.model, px)())
        again = main_output(forward_fn(mv.get("eager"), px)())
    assert max_abs_diff(fused, ref) < 1e-4 and max_abs_diff(graphs, ref) < 1e-4
    assert torch.equal(again, ref), "unpatch must restore the exact eager outputs"
    with pytest.raises(Unavailable):
        mv.get("fused_cuda_graphs")  # CUDA only
