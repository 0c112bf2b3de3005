"""``fastvit profile``: hand-computed traffic and FLOPs of small known ops, the kernels' declared costs, eager vs
fused totals of a tiny model of each family, the CLI's JSON, and the structure of ``--measure`` (run on CPU here).

Everything is counted on the meta device (no data): bytes are sizes, so every expected figure below is exact.
"""

from __future__ import annotations

import importlib
import itertools
import json
import pkgutil
import re

import fastvit_kernels
import pytest
import torch
import torch.nn.functional as F
from fastvit_kernels._cost import KINDS, Cost, cost_of, declared_cost
from fastvit_kernels._dispatch import Launch, jit_function, recording
from torch import nn

import fastvit
from fastvit.cli import main
from fastvit.models import build_model
from fastvit.patching import patched_blocks

P = importlib.import_module("fastvit.profile")  # the module (fastvit.profile is the function)
BF16 = torch.bfloat16
S = 2  # bytes per bf16 element


def meta(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def only(run: P.Run, name: str | None = None) -> P.Op:
    """The single op of a run (or the single op of that name)."""
    ops = [op for op in run.ops if name is None or op.name == name]
    assert len(ops) == 1, [(op.name, op.shapes) for op in run.ops]
    return ops[0]


def fk(name: str):
    return getattr(fastvit_kernels, name)


# ---------------------------------------------------------------------------------------- hand-computed ops


def test_layer_norm_eager_and_kernel():
    N, C = 6, 40
    x, w, b = meta(N, C), meta(C), meta(C)
    op = only(P.trace(lambda: F.layer_norm(x, (C,), w, b)))
    assert (op.name, op.kind, op.flops) == ("aten.native_layer_norm", "norm", 0)
    assert op.read == N * C * S + 2 * C * S
    assert op.written == N * C * S + 2 * N * 4  # y, and the fp32 mean and rstd native_layer_norm also writes
    op = only(P.trace(lambda: fk("layer_norm")(x, w, b)))
    assert (op.name, op.kind) == ("triton._layer_norm_rows_kernel", "norm")
    assert (op.read, op.written, op.flops) == (N * C * S + 2 * C * S, N * C * S, 0)
    op = only(P.trace(lambda: fk("layer_norm")(x)))  # no affine: the dummy pointers are not read
    assert (op.read, op.written) == (N * C * S, N * C * S)


def test_linear_with_bias():
    M, K, N = 10, 24, 56
    x, w, b = meta(2, M // 2, K), meta(N, K), meta(N)
    op = only(P.trace(lambda: F.linear(x, w, b)))
    assert (op.name, op.kind) == ("aten.addmm", "gemm")
    assert op.read == M * K * S + N * K * S + N * S  # x, W, the bias row once (broadcast)
    assert op.written == M * N * S
    assert op.flops == 2 * M * N * K


@pytest.mark.parametrize("mask", [None, "bool", "float"], ids=["no-mask", "bool-mask", "float-mask"])
def test_attention_kernel(mask):
    B, H, Sq, D = 2, 3, 17, 32
    q, k, v = meta(B, H, Sq, D), meta(B, H, Sq, D), meta(B, H, Sq, D)
    m = None if mask is None else meta(B, Sq, dtype=torch.bool if mask == "bool" else torch.float32)
    run = P.trace(lambda: fk("attention")(q, k, v, key_padding_mask=m))
    op = only(run, "triton._attn_fwd")
    qkv = 3 * B * H * Sq * D * S
    assert op.kind == "attention"
    assert op.read == qkv + (0 if m is None else B * Sq)  # the [B, S] int8 keep-mask, once
    assert op.written == B * H * Sq * D * S
    assert op.flops == 4 * B * H * Sq * Sq * D
    if mask == "float":  # the launcher's own conversion `mask != 0` is an op of its own
        ne = only(run, "aten.ne")
        assert (ne.read, ne.written) == (B * Sq * 4, B * Sq)
    else:
        assert len(run.ops) == 1


@pytest.mark.parametrize("masked", [False, True])
def test_eager_sdpa_is_one_attention_op(masked):
    B, H, Sq, D = 2, 3, 17, 64
    q = meta(B, H, Sq, D)
    m = meta(B, 1, 1, Sq) if masked else None  # an additive [B, 1, 1, S] padding mask
    run = P.trace(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=m))
    op = only(run)
    assert (op.name, op.kind) == ("aten.scaled_dot_product_attention", "attention")
    assert op.read == B * H * Sq * D * S + (B * Sq * S if masked else 0)  # q is k is v: read once
    assert (op.written, op.flops) == (B * H * Sq * D * S, 4 * B * H * Sq * Sq * D)


def test_sdpa_output_has_the_gpu_layout():
    """CUDA's flash / memory-efficient kernels write [B, S, H, D]: merging heads after them is a view, no copy."""
    B, H, Sq, D = 2, 3, 17, 64
    q = meta(B, H, Sq, D)
    run = P.trace(lambda: F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(B, Sq, H * D))
    assert [op.name for op in run.ops] == ["aten.scaled_dot_product_attention"]


@pytest.mark.parametrize("k", [3, 7])
def test_depthwise_conv(k):
    N, C, H, W = 2, 16, 9, 11
    x = meta(N, C, H, W).contiguous(memory_format=torch.channels_last)
    w, b = meta(C, 1, k, k), meta(C)
    conv = 2 * N * C * H * W * k * k
    op = only(P.trace(lambda: F.conv2d(x, w, b, padding=k // 2, groups=C)))
    assert (op.name, op.kind, op.flops) == ("aten.convolution", "dwconv", conv)
    assert (op.read, op.written) == (N * C * H * W * S + C * k * k * S + C * S, N * C * H * W * S)
    run = P.trace(lambda: fk("dwconv2d")(x, w, b))
    op = only(run, "triton._dwconv2d_kernel")
    assert (op.kind, op.flops) == ("dwconv", conv)
    assert (op.read, op.written) == (N * C * H * W * S + C * k * k * S + C * S, N * C * H * W * S)
    repack = only(run, "aten.clone")  # a [C, 1, k, k] weight is repacked tap-major by the launcher: counted
    assert (repack.kind, repack.read, repack.written) == ("copy", C * k * k * S, C * k * k * S)
    packed = importlib.import_module("fastvit_kernels.dwconv").pack_weight(w)
    assert [op.name for op in P.trace(lambda: fk("dwconv2d")(x, packed, b)).ops] == ["triton._dwconv2d_kernel"]


def test_views_and_allocations_are_free():
    x = meta(4, 8)
    run = P.trace(lambda: (x.t(), x.view(2, 16), x[1:], x.unbind(0), torch.empty_like(x), x.expand(3, 4, 8)))
    assert run.ops == []
    op = only(P.trace(lambda: x.t().contiguous()))
    assert (op.name, op.kind, op.read, op.written) == ("aten.clone", "copy", 4 * 8 * S, 4 * 8 * S)


def test_in_place_and_copy_ops():
    x, y = meta(4, 8), meta(4, 8)
    op = only(P.trace(lambda: x.add_(y)))
    assert (op.read, op.written) == (2 * 32 * S, 32 * S)
    op = only(P.trace(lambda: x.copy_(y)))  # the destination is written, not read
    assert (op.read, op.written) == (32 * S, 32 * S)
    op = only(P.trace(lambda: x.mul(x)))  # one tensor twice: read once
    assert (op.read, op.written, op.kind) == (32 * S, 32 * S, "elementwise")


def test_embedding_reads_the_rows_it_gathers():
    table, ids = meta(1000, 16), meta(2, 5, dtype=torch.long)
    op = only(P.trace(lambda: F.embedding(ids, table)))
    assert (op.kind, op.read, op.written) == ("copy", 10 * 8 + 10 * 16 * S, 10 * 16 * S)


def test_roofline_and_gpu_table():
    gpu = P.GPU("test", bandwidth=1e12, peak=1e15, peak_fp32=1e14)
    mem = P.Op("a", "elementwise", read=6e8, written=4e8, flops=0, dtype="bfloat16")
    dot = P.Op("b", "gemm", read=1e6, written=1e6, flops=4e12, dtype="bfloat16")
    dot32 = P.Op("c", "gemm", read=1e6, written=1e6, flops=4e12, dtype="float32")
    assert mem.roofline_s(gpu) == pytest.approx(1e-3) and mem.bound(gpu) == "memory"
    assert dot.roofline_s(gpu) == pytest.approx(4e-3) and dot.bound(gpu) == "compute"
    assert dot32.roofline_s(gpu) == pytest.approx(4e-2)  # fp32: the fp32 peak
    run = P.Run([mem, dot, dot32])
    assert run.roofline_s(gpu) == pytest.approx(1e-3 + 4e-3 + 4e-2)
    assert run.by_kind(gpu)["gemm"]["launches"] == 2 and run.bytes == 1e9 + 4e6
    assert set(P.GPUS) == {"h100", "h200", "a100", "l40s", "l4", "rtx4090"}
    assert P.gpu_spec("H100").bandwidth == 3.35e12 and P.gpu_spec("h200").peak == pytest.approx(989.4e12)
    custom = P.gpu_spec("l4", bandwidth=2e12, peak=3e14)
    assert (custom.bandwidth, custom.peak, custom.peak_fp32) == (2e12, 3e14, 3e14)
    with pytest.raises(ValueError, match="unknown GPU 'b300'"):
        P.gpu_spec("b300")


# ---------------------------------------------------------------------------- every kernel declares its cost


def _kernel_modules() -> dict[str, object]:
    names = [m.name for m in pkgutil.iter_modules(fastvit_kernels.__path__) if not m.name.startswith("_")]
    return {name: importlib.import_module(f"fastvit_kernels.{name}") for name in names}


def _jit_functions(module) -> dict[str, object]:
    """Module-level @triton.jit functions of a kernel file, keyed by name."""
    out = {}
    for value in vars(module).values():
        fn = jit_function(value)
        if type(fn).__name__ in ("JITFunction", "InterpretedFunction") and fn.fn.__module__ == module.__name__:
            out[fn.fn.__name__] = fn
    return out


def _launched_kernels(module) -> dict[str, object]:
    """The kernels a launcher launches: jit functions not called from another jit function (device helpers)."""
    fns = _jit_functions(module)
    source = {name: jit_function(fn).fn.__code__.co_names for name, fn in fns.items()}  # globals each one uses
    helpers = {name for name in fns for other, used in source.items() if other != name and name in used}
    return {name: fn for name, fn in fns.items() if name not in helpers}


def _sample_calls():
    """Small meta calls that launch every kernel of fastvit_kernels (a new kernel file adds its line here)."""
    x2, c, d = meta(6, 40), meta(40), meta(40)
    nchw, cl = meta(2, 8, 3, 5), meta(2, 8, 3, 5).contiguous(memory_format=torch.channels_last)
    q, k, v = meta(2, 2, 9, 32), meta(2, 2, 9, 32), meta(2, 2, 9, 32)
    calls = [
        lambda: fk("layer_norm")(x2, c, d),
        lambda: fk("layer_norm_2d")(nchw, meta(8), meta(8)),
        lambda: fk("layer_norm_2d")(cl, meta(8), None),
        lambda: fk("grn")(meta(2, 3, 5, 8), meta(8), meta(8)),
        lambda: fk("swiglu")(meta(4, 3, 32)),
        lambda: fk("dwconv2d")(cl, meta(8, 1, 3, 3), meta(8)),
        lambda: fk("dwconv2d_layer_norm")(cl, meta(8, 1, 7, 7), meta(8), meta(8), meta(8)),
        lambda: fk("attention")(q, k, v),
        lambda: fk("attention")(q, k, v, key_padding_mask=meta(2, 9, dtype=torch.bool)),
    ]
    modules = _kernel_modules()
    if "fused_linear" in modules:  # issue 14: fused-epilogue GEMM (+ GRN sums of squares)
        fl = modules["fused_linear"].fused_linear
        calls += [
            lambda: fl(meta(2, 5, 32), meta(48, 32), meta(48), activation="gelu"),
            lambda: fl(meta(2, 4, 32), meta(48, 32), meta(48), activation="gelu", sumsq_images=2),
            # cuBLAS + the one-pass epilogue kernel (the alternative the GPU choice times) and the GRN-scale reduction
            lambda: fl(meta(2, 4, 32), meta(48, 32), None, activation="silu", residual=meta(2, 4, 48), impl="epilogue"),
            lambda: fl(meta(2, 4, 32), meta(48, 32), None, sumsq_images=2, grn=(meta(48), 1e-6)),
        ]
        fl_mod = modules["fused_linear"]  # the plan a GPU may pick: cuBLAS, then the one-pass epilogue kernel
        calls.append(
            lambda: fl_mod._run_plan(
                fl_mod._Plan("epilogue"), meta(8, 32), meta(48, 32), meta(48), "gelu", None, None, None, 1, False
            )
        )
    if "add_layer_norm" in modules:  # issue 14: residual add + LayerNorm, two outputs
        calls.append(lambda: modules["add_layer_norm"].add_layer_norm(x2, meta(6, 40), c, d))
    return calls


def _recorded() -> list[Launch]:
    launches: list[Launch] = []
    with torch.no_grad(), recording(launches):
        for call in _sample_calls():
            call()
    return launches


EXPECTED_KERNELS = {  # at least these (a new kernel file adds more, found by the discovery below)
    "_layer_norm_rows_kernel", "_layer_norm_2d_kernel", "_grn_sumsq_kernel", "_grn_nx_kernel", "_grn_apply_kernel",
    "_swiglu_kernel", "_dwconv2d_kernel", "_dwconv2d_layer_norm_kernel", "_attn_fwd",
}  # fmt: skip


def test_every_kernel_declares_a_cost_and_is_exercised():
    launched = {r.name for r in _recorded()}
    kernels = {(m, k): fn for m, module in _kernel_modules().items() for k, fn in _launched_kernels(module).items()}
    names = {k for _, k in kernels}
    assert EXPECTED_KERNELS <= names and not {"_attn_block", "_hw_offsets"} & names  # device helpers are not kernels
    for (module, name), fn in kernels.items():
        hint = f"add @kernel_cost({name}) beside its launcher (see fastvit_kernels._cost)"
        assert declared_cost(fn) is not None, f"{module}.{name} declares no cost: {hint}"
        assert name in launched, f"{module}.{name}: add a call that launches it to _sample_calls()"


def _split(sizes: list[int], read: int, written: int) -> bool:
    """Whether some tensors sum to ``read`` and some others (disjoint) to ``written``."""
    return any(
        sum(b for b, a in zip(sizes, roles, strict=True) if a == 1) == read
        and sum(b for b, a in zip(sizes, roles, strict=True) if a == 2) == written
        for roles in itertools.product((0, 1, 2), repeat=len(sizes))
    )


def test_declared_costs_agree_with_the_tensors_each_launch_touches():
    """The bytes a kernel declares are those of whole tensors the launch gets, each read or written at most once:
    some of its distinct tensors make up exactly the bytes read, others exactly the bytes written (dummy pointers,
    which a flag tells the kernel not to touch, in neither). The hand-computed cases above check the exact sets."""
    launches = _recorded()
    assert launches
    for r in launches:
        cost = cost_of(r)
        assert isinstance(cost, Cost) and cost.kind in KINDS
        tensors = P._unique(iter(r.tensors.values()))
        sizes = [P.nbytes(t) for t in tensors]
        shapes = P._fmt_shapes(tensors, 8)
        assert cost.read > 0 and cost.written > 0, f"{r.name}: {cost}"
        assert _split(sizes, cost.read, cost.written), f"{r.name}: {cost} is no split of its tensors {shapes}"


def test_recording_runs_nothing_and_records_what_the_jit_needs():
    x = meta(6, 40)
    with recording() as launches:
        y = fk("layer_norm")(x)
    assert y.device.type == "meta" and y.shape == x.shape
    (r,) = launches
    assert r.name == "_layer_norm_rows_kernel" and not r.autotuned
    assert r["X"].shape == x.shape and r["M"] == 6 and r["C"] == 40 and isinstance(r.grid, tuple)
    (config,) = r.configs()
    assert config.kwargs["BLOCK_C"] == 64 and config.num_warps == r.kwargs["num_warps"]
    assert not fastvit_kernels.use_triton(x)  # outside recording, meta tensors take the reference


# ------------------------------------------------------------------------------------- tiny model per family

_V = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
FAMILIES = {
    "convnext": ({"model_type": "convnext", "depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 48, 64]}, "features"),
    "convnextv2": ({"model_type": "convnextv2", "depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 48, 64]}, "features"),
    "dinov2": ({"model_type": "dinov2", "mlp_ratio": 4, **_V}, "features"),
    "dinov2-swiglu": ({"model_type": "dinov2", "mlp_ratio": 4, "use_swiglu_ffn": True, **_V}, "features"),
    "vit-hybrid": (
        {
            "model_type": "vit-hybrid",
            **_V,
            "image_size": 64,
            "patch_size": 1,
            "intermediate_size": 128,
            "backbone_config": {
                "model_type": "bit",
                "embedding_size": 16,
                "hidden_sizes": [32, 64, 96, 128],
                "depths": [1, 1, 1],
                "layer_type": "bottleneck",
                "global_padding": "SAME",
                "num_groups": 8,
                "embedding_dynamic_padding": True,
                "out_features": ["stage3"],
            },
            "backbone_featmap_shape": [1, 96, 4, 4],
        },
        "features",
    ),  # fmt: skip
    "altclip-vision": (
        {"model_type": "altclip_vision_model", "intermediate_size": 128, "hidden_act": "quick_gelu", **_V},
        "vision",
    ),
    "altclip-text": (
        {
            "model_type": "altclip_text_model",
            "vocab_size": 99,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 40,
            "project_dim": 32,
        },
        "text",
    ),  # fmt: skip
}


def _tiny(family: str) -> tuple[nn.Module, dict]:
    config, task = FAMILIES[family]
    with torch.device("meta"):
        model = build_model(config, task)
    model = model.to(BF16).eval()
    return model, P.example_inputs(model, task=task, batch=2, image_size=config.get("image_size", 32), seq_len=7)


def _gemm_flops(run: P.Run) -> float:
    return sum(op.flops for op in run.ops if op.kind == "gemm")


def _attention_flops(run: P.Run) -> float:
    return sum(op.flops for op in run.ops if op.kind == "attention")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_eager_vs_fused_totals(family):
    model, inputs = _tiny(family)
    p = fastvit.profile(model, **inputs, name=family)
    assert patched_blocks(model) == []  # patched for the count, restored
    e, f = p.eager, p.fused
    assert not any(op.name.startswith("triton.") for op in e.ops)
    assert any(op.name.startswith("triton.") for op in f.ops)
    # the same matmuls, convolutions and attention, however fused
    assert _gemm_flops(f) == pytest.approx(_gemm_flops(e)) and _gemm_flops(e) > 0
    assert _attention_flops(f) == pytest.approx(_attention_flops(e))
    assert f.bytes < e.bytes and f.launches < e.launches
    assert e.bytes == sum(op.read + op.written for op in e.ops)
    assert p.batch == 2 and p.dtype == "bfloat16"


def test_tiny_dinov2_flops_by_hand():
    model, inputs = _tiny("dinov2")
    B, E, L, heads, tokens = 2, 64, 2, 2, (28 // 14) ** 2 + 1
    M = B * tokens
    layer = 2 * M * (E * 3 * E + E * E + E * 4 * E + 4 * E * E)  # q|k|v, out, fc1, fc2
    patch_embed = 2 * B * E * (28 // 14) ** 2 * 3 * 14 * 14
    p = fastvit.profile(model, **inputs)
    for run in (p.eager, p.fused):
        assert _gemm_flops(run) == layer * L + patch_embed
        assert _attention_flops(run) == 4 * B * heads * tokens * tokens * (E // heads) * L


def test_tiny_convnext_flops_by_hand():
    model, inputs = _tiny("convnext")  # 32 px input, stages at 8, 4, 2, 1 px
    B, dims, sizes = 2, [16, 32, 48, 64], [8, 4, 2, 1]
    stem = 2 * B * dims[0] * sizes[0] ** 2 * 3 * 4 * 4
    down = sum(2 * B * dims[i + 1] * sizes[i + 1] ** 2 * dims[i] * 2 * 2 for i in range(3))
    blocks = sum(2 * B * s * s * (c * 4 * c * 2) for c, s in zip(dims, sizes, strict=True))
    dw = sum(2 * B * c * s * s * 49 for c, s in zip(dims, sizes, strict=True))
    p = fastvit.profile(model, **inputs)
    for run in (p.eager, p.fused):
        assert _gemm_flops(run) == stem + down + blocks
        assert sum(op.flops for op in run.ops if op.kind == "dwconv") == dw


def test_profile_leaves_a_real_model_unchanged():
    config, task = FAMILIES["dinov2"]
    model = build_model(config, task).eval()  # real (CPU) weights
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = model(pixel_values=x).last_hidden_state
    fastvit.patch(model)
    p = fastvit.profile(model, x)  # fused: only the fused side unless the eager twin is given
    assert p.eager is None and p.fused.launches > 0
    assert all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    with torch.no_grad():
        after = model(pixel_values=x).last_hidden_state
    fastvit.unpatch(model)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(capsys):
    code, out, err = run_cli(capsys, "profile", "dinov2-small", "--batch", "2", "--dtype", "bfloat16", "--json")
    assert code == 0, err
    d = json.loads(out)  # exactly one JSON object
    assert {"model", "batch", "dtype", "gpu", "eager", "fused"} <= set(d)
    assert (d["model"], d["batch"], d["dtype"], d["image_size"]) == ("dinov2-small", 2, "bfloat16", 224)
    assert d["gpu"]["name"] == "H100 SXM"
    for side in ("eager", "fused"):
        r = d[side]
        assert isinstance(r["bytes"], int) and isinstance(r["flops"], float) and isinstance(r["launches"], int)
        assert r["launches"] == len(r["ops"]) and r["bytes"] == sum(
            o["bytes_read"] + o["bytes_written"] for o in r["ops"]
        )
        assert r["roofline_s"] == pytest.approx(sum(o["roofline_s"] for o in r["ops"]))
    assert d["fused"]["bytes"] < d["eager"]["bytes"]
    ref = P.profile_model("dinov2-small", batch=2)
    assert d["fused"]["bytes"] == ref.fused.bytes and d["eager"]["launches"] == ref.eager.launches


def test_cli_table_text_tower_of_a_checkpoint_dir(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FAMILIES["altclip-text"][0]))
    argv = ["--task", "text", "--seq-len", "9", "--batch", "2", "--bandwidth", "1000", "--peak", "100"]
    code, out, err = run_cli(capsys, "profile", str(tmp_path), *argv)
    assert code == 0, err
    for word in ("GEMM", "attention", "norm", "elementwise", "total", "images/s", "top 10 fused ops", "seq 9"):
        assert word in out
    assert re.search(r"1,000 GB/s, 100 TFLOP/s", out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--measure"], "needs a CUDA GPU"),
        (["--gpu", "v100"], "unknown GPU 'v100'"),
        (["--batch", "0"], "must be >= 1"),
        (["--plot", "x.png"], "add --measure"),
    ],
)
def test_cli_errors(capsys, argv, message):
    if argv == ["--measure"] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, err = run_cli(capsys, "profile", "convnextv2-atto", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ --measure (structure, on CPU)


@pytest.mark.parametrize("fused", [False, True])
def test_measure_structure_on_cpu(fused, tmp_path):
    """``measure`` times every op through torch.profiler; on CPU (CPU time, interpreted kernels) the same ops come
    back as counted on meta, each with a time, and the table / JSON / plot carry them."""
    config, task = FAMILIES["dinov2"]
    model = build_model(config, task).to(BF16).eval()  # bf16: fp32 attention would take SDPA on a GPU (and meta)
    if fused:
        fastvit.patch(model)
    x = torch.randn(2, 3, 28, 28, dtype=BF16)
    run = P.measure(model, x, warmup=1, iters=2)  # the warm-up builds the fused blocks' cached weights
    counted = P.trace(model, x)
    # the same ops in the same order (CPU names its SDPA kernel, meta counts the GPU's fused one)
    assert [op.kind for op in run.ops] == [op.kind for op in counted.ops]
    triton_ops = [(op.name, op.bytes) for op in run.ops if op.name.startswith("triton.")]
    assert triton_ops == [(op.name, op.bytes) for op in counted.ops if op.name.startswith("triton.")]
    assert _gemm_flops(run) == _gemm_flops(counted)
    assert run.measured and all(op.measured_s >= 0 for op in run.ops) and run.measured_s() > 0
    assert any(op.name.startswith("triton.") for op in run.ops) == fused
    p = P.Profile("tiny", 2, "bfloat16", P.gpu_spec("h100"), None, run, {"image_size": 28})
    assert "measured ms" in p.table() and "roofline %" in p.table()
    d = p.to_dict()
    assert d["eager"] is None and d["fused"]["measured_s"] == pytest.approx(run.measured_s())
    pytest.importorskip("matplotlib")
    P.plot(p, str(tmp_path / "where.png"))
    assert (tmp_path / "where.png").read_bytes()[:4] == b"\x89PNG"
