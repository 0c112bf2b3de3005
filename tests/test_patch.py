"""fastvit.patch / unpatch / patch_transformers / run, on HF transformers models and on fastvit's own models.

Runs under transformers 4.50 (all five families) and 5.x (ConvNeXt, ConvNeXt V2, DINOv2, AltCLIP; the 4.50-only
cases skip). Every model is TINY (the Triton interpreter runs the kernels on CPU) with random weights.

Tolerance (fp32): the fused model's error against a float64 run of the same eager model must be at most twice
eager fp32's own error against it, plus 1e-6 absolute (for outputs where eager fp32 happens to be exact). The
fused path only reorders fp32 reductions (LayerNorm, online softmax, conv in channels_last), so this is the
"no worse than torch's own rounding" bound; measured max |fused - eager| is ~1e-6 on these models.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import fastvit_kernels
import pytest
import torch

from fastvit.fused import _ops
from fastvit.fused.graphs import CUDAGraphForward, disable_cuda_graphs, enable_cuda_graphs, flatten_tensors
from fastvit.patching import PatchReport, patch, patch_transformers, patched_blocks, unpatch, unpatch_transformers

transformers = pytest.importorskip("transformers")
T = transformers
HF5 = int(T.__version__.split(".")[0]) >= 5
needs_hf4 = pytest.mark.skipif(HF5, reason="model or module layout only in transformers 4.x")
REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ tiny models
CNX = dict(num_channels=3, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=3)
CNX_BB = dict(CNX, out_features=["stem", "stage1", "stage2"])
# head dim 32: the attention kernel runs (it takes D in {32, 64, 80, 96, 128})
DINO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, num_labels=3)
TEXT = dict(
    vocab_size=99,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=96,
    max_position_embeddings=40,
    project_dim=16,
)
VISION = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
)
BIT = dict(
    global_padding="same",
    layer_type="bottleneck",
    depths=[1, 1],
    out_features=["stage1", "stage2"],
    embedding_dynamic_padding=True,
    hidden_sizes=[8, 16],
    num_groups=2,
    embedding_size=8,
)
VITH = dict(
    image_size=32,
    patch_size=1,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=96,
    backbone_config=BIT,
    backbone_featmap_shape=[1, 16, 4, 4],
    num_labels=3,
)


def _pixels(size: int) -> dict:
    return {"pixel_values": torch.randn(2, 3, size, size)}


def _text() -> dict:
    ids = torch.randint(5, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0  # second sequence padded
    return {"input_ids": ids, "attention_mask": mask}


# id -> (HF class name, config class name, config kwargs, inputs, only on transformers 4.x)
CASES = {
    "convnext": ("ConvNextModel", "ConvNextConfig", dict(CNX, layer_scale_init_value=0.5), lambda: _pixels(16), False),
    "convnext-cls": ("ConvNextForImageClassification", "ConvNextConfig", CNX, lambda: _pixels(16), False),
    "convnext-backbone": ("ConvNextBackbone", "ConvNextConfig", CNX_BB, lambda: _pixels(16), False),
    "convnextv2": ("ConvNextV2Model", "ConvNextV2Config", CNX, lambda: _pixels(16), False),
    "convnextv2-cls": ("ConvNextV2ForImageClassification", "ConvNextV2Config", CNX, lambda: _pixels(16), False),
    "convnextv2-backbone": ("ConvNextV2Backbone", "ConvNextV2Config", CNX_BB, lambda: _pixels(16), False),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(DINO, layerscale_value=0.5), lambda: _pixels(28), False),
    "dinov2-swiglu-cls": (
        "Dinov2ForImageClassification",
        "Dinov2Config",
        dict(DINO, use_swiglu_ffn=True, layerscale_value=0.5),
        lambda: _pixels(28),
        False,
    ),
    "dinov2-backbone": (
        "Dinov2Backbone",
        "Dinov2Config",
        dict(DINO, out_features=["stage1", "stage2"]),
        lambda: _pixels(28),
        False,
    ),
    "dinov2-registers-swiglu-cls": (
        "Dinov2WithRegistersForImageClassification",
        "Dinov2WithRegistersConfig",
        dict(DINO, use_swiglu_ffn=True, num_register_tokens=2, layerscale_value=0.5),
        lambda: _pixels(28),
        False,
    ),
    "dinov2-registers-backbone": (
        "Dinov2WithRegistersBackbone",
        "Dinov2WithRegistersConfig",
        dict(DINO, out_features=["stage1", "stage2"]),
        lambda: _pixels(28),
        False,
    ),
    "vit-hybrid": ("ViTHybridModel", "ViTHybridConfig", VITH, lambda: _pixels(32), True),
    "vit-hybrid-cls": ("ViTHybridForImageClassification", "ViTHybridConfig", VITH, lambda: _pixels(32), True),
    "altclip": (
        "AltCLIPModel",
        "AltCLIPConfig",
        dict(text_config=TEXT, vision_config=VISION, projection_dim=16),
        lambda: {**_text(), **_pixels(28)},
        False,
    ),
    "altclip-vision": ("AltCLIPVisionModel", "AltCLIPVisionConfig", VISION, lambda: _pixels(28), False),
    "altclip-text": ("AltCLIPTextModel", "AltCLIPTextConfig", TEXT, _text, False),
}
# the kernel each family's fused blocks must call
EXPECTED_KERNEL = {"convnext": "dwconv2d_layer_norm", "convnextv2": "dwconv2d_layer_norm"}  # default: attention
# kernels only the Triton path calls (none left: ConvNeXt V2's GRN is folded into the two fused_linear GEMMs on both
# paths, pwconv1's sums of squares -> gamma * nx + 1 -> pwconv2's prologue)
TRITON_ONLY_KERNEL: dict[str, str] = {}


def hf_model(case: str, **overrides) -> tuple[torch.nn.Module, dict]:
    cls_name, cfg_name, cfg, inputs, hf4_only = CASES[case]
    if hf4_only and HF5:
        pytest.skip(f"{cls_name} was removed in transformers 5")
    torch.manual_seed(0)
    model = getattr(T, cls_name)(getattr(T, cfg_name)(**copy.deepcopy(cfg), **overrides))
    with torch.no_grad():  # perturb every parameter: no layer scale / LN / GRN stuck at its init value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), inputs()


def ours_model(case: str) -> tuple[torch.nn.Module, dict]:
    """fastvit's eager model for the same config, loaded with the HF model's weights."""
    if HF5:
        pytest.skip("fastvit's models mirror the transformers 4.50 layout")
    hf, inputs = hf_model(case)
    from fastvit.models import build_model, family

    cfg = hf.config.to_dict()
    model_type = cfg["model_type"]
    try:
        fam = family(model_type)
    except ImportError as e:
        pytest.skip(f"fastvit.models family for {model_type} not available: {e}")
    task = fam.ARCHITECTURES.get(CASES[case][0])
    if task is None:
        pytest.skip(f"fastvit has no {CASES[case][0]}")
    model = build_model(cfg, task)
    model.load_state_dict(hf.state_dict())
    return model.eval(), inputs


class Spy:
    """Counts the kernel entry points the fused blocks call (all of them go through ``fastvit.fused._ops``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter = Counter()
        for name in _ops.__all__:
            fn = getattr(_ops, name)
            monkeypatch.setattr(_ops, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return counted


def run(model: torch.nn.Module, inputs: dict, **kwargs) -> list[torch.Tensor]:
    with torch.no_grad():
        return flatten_tensors(model(**inputs, **kwargs))


def as_double(inputs: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


def assert_fused_close(fused: list, eager: list, ref64: list, what: str) -> float:
    """fused within 2x eager's own error against float64 (+1e-6); returns max |fused - eager|."""
    assert len(fused) == len(eager) == len(ref64), f"{what}: {len(fused)} vs {len(eager)} output tensors"
    worst = 0.0
    for i, (f, e, r) in enumerate(zip(fused, eager, ref64, strict=True)):
        assert f.shape == e.shape, f"{what}[{i}]: shape {tuple(f.shape)} != {tuple(e.shape)}"
        if not f.is_floating_point():
            assert torch.equal(f, e), f"{what}[{i}]"
            continue
        err_f = (f.double() - r).abs().max().item() if f.numel() else 0.0
        err_e = (e.double() - r).abs().max().item() if e.numel() else 0.0
        assert err_f <= 2 * err_e + 1e-6, f"{what}[{i}]: fused err {err_f:.3e} vs eager fp32 err {err_e:.3e} (fp64 ref)"
        worst = max(worst, (f - e).abs().max().item() if f.numel() else 0.0)
    return worst


def check_patch(model: torch.nn.Module, inputs: dict, monkeypatch, family: str, backend: str) -> PatchReport:
    kwargs = {"output_hidden_states": True}
    eager = run(model, inputs, **kwargs)
    ref64 = run(copy.deepcopy(model).double(), as_double(inputs), **kwargs)
    keys = list(model.state_dict())
    report = patch(model)
    assert report.num_fused > 0, str(report)
    assert list(model.state_dict()) == keys, "patching changed the state-dict keys"
    spy = Spy(monkeypatch)
    with fastvit_kernels.backend(backend):
        fused = run(model, inputs, **kwargs)
    assert spy.calls[EXPECTED_KERNEL.get(family, "attention")] > 0, f"fused path not taken: {dict(spy.calls)}"
    assert spy.calls["fused_linear"] > 0, f"the GEMMs did not take fused_linear: {dict(spy.calls)}"
    if backend == "auto" and family in TRITON_ONLY_KERNEL:
        assert spy.calls[TRITON_ONLY_KERNEL[family]] > 0, dict(spy.calls)
    assert_fused_close(fused, eager, ref64, family)
    assert unpatch(model) == report.num_fused
    assert not patched_blocks(model)
    again = run(model, inputs, **kwargs)
    for i, (a, e) in enumerate(zip(again, eager, strict=True)):
        assert torch.equal(a, e), f"unpatch is not bit-exact at output {i}: {(a - e).abs().max().item():.3e}"
    return report


@pytest.fixture
def fallback():
    """Tests of the patching logic (not of the kernels) run the torch fallbacks: fast on CPU."""
    with fastvit_kernels.backend("torch"):
        yield


def _family(case: str) -> str:
    return case.split("-")[0]


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("backend", ["torch", "auto"], ids=["fallback", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_hf_patched_matches_eager(case, backend, monkeypatch):
    model, inputs = hf_model(case)
    report = check_patch(model, inputs, monkeypatch, _family(case), backend)
    assert not [s for s in report.skipped if "Layer" in s[1]], str(report)


OURS = ["convnext-cls", "convnextv2-backbone", "dinov2-swiglu-cls", "dinov2-registers-swiglu-cls", "vit-hybrid-cls",
        "altclip", "altclip-text"]  # fmt: skip
OURS_TRITON = ["convnextv2-backbone", "dinov2-swiglu-cls", "altclip"]  # the interpreter is slow: one per kind


@pytest.mark.parametrize(
    "case,backend", [(c, "torch") for c in OURS] + [(c, "auto") for c in OURS_TRITON], ids=lambda v: str(v)
)
def test_fastvit_patched_matches_eager(case, backend, monkeypatch):
    model, inputs = ours_model(case)
    check_patch(model, inputs, monkeypatch, _family(case), backend)


@pytest.mark.parametrize("case", ["convnextv2-cls", "dinov2-swiglu-cls", "altclip-vision"])
def test_fastvit_load_fused(case, tmp_path, fallback):
    """``fastvit.load(dir, fused=True)`` = load + patch, matching the HF model the checkpoint came from."""
    if HF5:
        pytest.skip("fastvit's models mirror the transformers 4.50 layout")
    import fastvit

    hf, inputs = hf_model(case)
    hf.save_pretrained(tmp_path / case)
    model = fastvit.load(tmp_path / case, fused=True)
    assert patched_blocks(model) and not patched_blocks(fastvit.load(tmp_path / case, fused=False))
    ref64 = run(copy.deepcopy(hf).double(), as_double(inputs))
    assert_fused_close(run(model, inputs), run(hf, inputs), ref64, case)


def test_channels_last_between_blocks(fallback):
    model, inputs = hf_model("convnextv2")
    patch(model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    for h in out.hidden_states[1:]:  # stage outputs: HF shapes, channels_last strides
        assert h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ state dict
@pytest.mark.parametrize("case", ["convnext", "dinov2-swiglu-cls", "altclip"])
def test_state_dict_round_trip(case, fallback):
    patched, inputs = hf_model(case)
    plain = copy.deepcopy(patched)
    other, _ = hf_model(case)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    patch(patched)
    run(patched, inputs)  # builds the concatenated QKV cache from the current weights
    assert patched.state_dict().keys() == plain.state_dict().keys()
    # patched -> unpatched: identical weights, identical (eager) outputs
    fresh = copy.deepcopy(other)
    fresh.load_state_dict(patched.state_dict())
    for a, e in zip(run(fresh, inputs), run(plain, inputs), strict=True):
        assert torch.equal(a, e)
    # unpatched -> patched: the fused blocks pick up the new weights (QKV cache refreshed)
    patched.load_state_dict(other.state_dict())
    ref64 = run(copy.deepcopy(other).double(), as_double(inputs))
    assert_fused_close(run(patched, inputs), run(other, inputs), ref64, case)


def test_weights_replaced_by_assign(fallback):
    model, inputs = hf_model("dinov2")
    other, _ = hf_model("dinov2")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    patch(model)
    run(model, inputs)
    model.load_state_dict(other.state_dict(), assign=True)
    ref64 = run(copy.deepcopy(other).double(), as_double(inputs))
    assert_fused_close(run(model, inputs), run(other, inputs), ref64, "assign")


# ------------------------------------------------------------------------------------------------ eager fallbacks
@pytest.mark.parametrize("case", ["dinov2", "vit-hybrid", "altclip-vision", "altclip-text"])
def test_output_attentions_runs_eager(case, monkeypatch, fallback):
    model, inputs = hf_model(case, attn_implementation="eager")  # SDPA layers return no attention weights
    eager_model = copy.deepcopy(model)
    patch(model)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
        eager = eager_model(**inputs, output_attentions=True)
    assert spy.calls["attention"] == 0 and len(out.attentions) == 2
    for a, e in zip(out.attentions, eager.attentions, strict=True):  # every layer ran eager: bit-exact
        assert torch.equal(a, e)
    ref64 = run(eager_model.double(), as_double(inputs), output_attentions=True)
    assert_fused_close(flatten_tensors(out), flatten_tensors(eager), ref64, case)  # final norms are fused


@needs_hf4
def test_head_mask_runs_eager(monkeypatch, fallback):
    model, inputs = hf_model("dinov2")
    head_mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    eager = run(model, inputs, head_mask=head_mask)
    patch(model)
    spy = Spy(monkeypatch)
    out = run(model, inputs, head_mask=head_mask)
    assert spy.calls["attention"] == 0  # any head mask -> the layers run eager
    assert_fused_close(out, eager, run(copy.deepcopy(model).double(), as_double(inputs), head_mask=head_mask), "hm")


@pytest.mark.parametrize("case", ["convnextv2", "dinov2"])
def test_training_and_grad_run_eager(case, monkeypatch):
    model, inputs = hf_model(case)
    eager_train = model.train()(**inputs)[0]
    eager_grad = model.eval()(**inputs)[0]
    patch(model)
    spy = Spy(monkeypatch)
    assert torch.equal(model.train()(**inputs)[0], eager_train)
    out = model.eval()(**inputs)[0]  # grad enabled, parameters require grad -> eager, backward works
    assert torch.equal(out, eager_grad)
    out.sum().backward()
    assert any(p.grad is not None for p in model.parameters())
    model.requires_grad_(False)  # frozen weights, gradients w.r.t. the input (saliency maps): still eager
    pixels = inputs["pixel_values"].clone().requires_grad_()
    model(pixel_values=pixels)[0].sum().backward()
    assert pixels.grad is not None
    assert not spy.calls


@needs_hf4
def test_relative_positions_are_skipped():
    cfg = T.AltCLIPTextConfig(**TEXT, position_embedding_type="relative_key")
    model = T.AltCLIPTextModel(cfg).eval()
    report = patch(model)
    reasons = [r for _, cls, r in report.skipped if cls == "AltRobertaLayer"]
    assert len(reasons) == 2 and "relative" in reasons[0], str(report)
    assert "skipped 2" in str(report) and "relative" in str(report)


def test_flags_and_report(monkeypatch, fallback):
    model, inputs = hf_model("dinov2-swiglu-cls")
    eager = run(model, inputs)
    report = patch(model, attention=False)
    text = str(report)
    assert "Dinov2Layer" in text and "x2" in text and "attention" not in dict(report.kernels)
    assert report.kernels["swiglu"] == 2 and report.kernels["layer_norm"] == 2 * 2 + 1
    spy = Spy(monkeypatch)
    out = run(model, inputs)
    assert spy.calls["attention"] == 0 and spy.calls["attention_ref"] == 2 and spy.calls["swiglu"] == 2
    assert_fused_close(out, eager, run(copy.deepcopy(model).double(), as_double(inputs)), "flags")
    report = patch(model, attention=False, layer_norm=False, swiglu=False, fused_linear=False)  # nothing left to fuse
    assert report.num_fused == 0 and all("disabled" in r for _, _, r in report.skipped), str(report)
    assert not patched_blocks(model)


# ------------------------------------------------------------------------------------------------ transformers API
def _tiny_dinov2_dir(tmp_path: Path) -> Path:
    model, _ = hf_model("dinov2-swiglu-cls")
    model.save_pretrained(tmp_path / "tiny-dinov2")
    return tmp_path / "tiny-dinov2"


def test_patch_transformers_from_pretrained(tmp_path, fallback):
    path = _tiny_dinov2_dir(tmp_path)
    inputs = _pixels(28)
    plain = T.AutoModelForImageClassification.from_pretrained(path).eval()
    patch_transformers()
    try:
        fused = T.AutoModelForImageClassification.from_pretrained(path).eval()
        assert len(patched_blocks(fused)) == 3  # 2 layers + final LayerNorm
        ref64 = run(copy.deepcopy(plain).double(), as_double(inputs))
        assert_fused_close(run(fused, inputs), run(plain, inputs), ref64, "from_pretrained")
    finally:
        unpatch_transformers()
    assert not patched_blocks(T.AutoModelForImageClassification.from_pretrained(path))


def test_run_script(tmp_path):
    path = _tiny_dinov2_dir(tmp_path)
    script = tmp_path / "classify.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            import torch
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained({str(path)!r}).eval()
            fused = type(model.dinov2.encoder.layer[0].__dict__.get("forward")).__name__
            with torch.no_grad():
                logits = model(pixel_values=torch.randn(1, 3, 28, 28)).logits
            print("argv", sys.argv[1:], "name", __name__, "fused", fused, "logits", tuple(logits.shape))
            sys.exit(int(sys.argv[2]))
            """
        )
    )
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "fastvit", "run", str(script), "--flag", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 3, res.stderr[-2000:]
    assert "argv ['--flag', '3'] name __main__ fused FusedTransformerLayer logits (1, 3)" in res.stdout, res.stdout


def test_run_script_errors(tmp_path, capsys):
    from fastvit.runner import run_script

    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint(sys.argv)\nraise RuntimeError('boom')\n")
    assert run_script(str(bad), ["x"]) == 1
    captured = capsys.readouterr()
    assert "boom" in captured.err and "'x'" in captured.out
    msg = tmp_path / "msg.py"
    msg.write_text("import sys\nsys.exit('bye')\n")
    assert run_script(str(msg), []) == 1
    assert run_script(str(tmp_path / "missing.py"), []) == 2
    from transformers import PreTrainedModel

    assert not hasattr(PreTrainedModel.post_init, "__wrapped__")  # transformers restored


# ------------------------------------------------------------------------------------------------ compile, graphs
@pytest.mark.parametrize("case", ["convnextv2", "dinov2-swiglu-cls", "altclip-text"])
def test_compile_fullgraph(case):
    model, inputs = hf_model(case)
    eager = run(model, inputs)
    patch(model)
    run(model, inputs)  # eager call first: builds the QKV cache
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = run(compiled, inputs)
    assert_fused_close(out, eager, run(copy.deepcopy(model).double(), as_double(inputs)), "compiled")


@pytest.mark.slow
def test_compile_inductor_fullgraph():
    model, inputs = hf_model("dinov2")
    eager = run(model, inputs)
    patch(model)
    torch._dynamo.reset()
    out = run(torch.compile(model, fullgraph=True), inputs)  # no eager call before: QKV concat traced
    assert_fused_close(out, eager, run(copy.deepcopy(model).double(), as_double(inputs)), "inductor")


def test_graph_runner_falls_back_on_cpu(fallback):
    model, inputs = hf_model("convnextv2-cls")
    eager = run(model, inputs)
    report = patch(model, cuda_graphs=True)
    assert report.cuda_graphs and "cuda graphs" in str(report)
    runner = model.forward
    assert isinstance(runner, CUDAGraphForward)
    out = run(model, inputs)
    assert runner.last_fallback in ("CUDA is not available", "inputs are not all CUDA tensors")
    assert runner.captures == 0 and not runner.graphs
    assert_fused_close(out, eager, run(copy.deepcopy(model).double(), as_double(inputs)), "graph-cpu")
    unpatch(model)
    assert "forward" not in model.__dict__
    for a, e in zip(run(model, inputs), eager, strict=True):
        assert torch.equal(a, e)


def test_weights_created_in_inference_mode(fallback):
    """``with torch.inference_mode(): model = load(...); model(x)`` (inference tensors have no version counter)."""
    with torch.inference_mode():
        model, inputs = hf_model("dinov2-swiglu-cls")
        eager = flatten_tensors(model(**inputs))
        patch(model)
        out = flatten_tensors(model(**inputs))
        ref64 = flatten_tensors(copy.deepcopy(model).double()(**as_double(inputs)))
    assert_fused_close(out, eager, ref64, "inference-mode weights")


def test_repatch_drops_captured_graphs(fallback):
    """Re-patching rebuilds the fused blocks (and frees their QKV buffers): graphs captured before must not replay."""
    model, inputs = hf_model("dinov2-swiglu-cls")
    runner = enable_cuda_graphs(model, max_graphs=3)
    patch(model)
    runner.graphs["stale"], runner.failed["other"] = object(), "capture error"  # as after captures on a GPU
    patch(model, attention=False)
    assert model.forward is runner and not runner.graphs and not runner.failed and runner.max_graphs == 3


def test_graph_runner_forgets_graphs_when_weights_change(fallback):
    """Graphs read the weights' memory: load_state_dict drops them, and moved/converted weights change the key."""
    model, _ = hf_model("convnextv2-cls")
    runner = enable_cuda_graphs(model)
    key = runner._weights_key()
    runner.graphs["captured"], runner.failed["other"] = object(), "capture error"  # as after captures on a GPU
    model.load_state_dict(model.state_dict())
    assert not runner.graphs and not runner.failed
    model.double()
    assert runner._weights_key() != key  # new storage and dtype: a new signature, captured afresh
    assert disable_cuda_graphs(model) and not model._load_state_dict_post_hooks


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["convnextv2-cls", "dinov2-swiglu-cls", "altclip-text"])
def test_graph_runner_capture_replay(case):
    model, inputs = hf_model(case)
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    eager = run(model, inputs)
    patch(model)
    runner = enable_cuda_graphs(model, max_graphs=2)
    with torch.inference_mode():
        for _ in range(3):
            out = flatten_tensors(model(**inputs))
            assert runner.last_fallback is None and runner.captures == 1
            for a, e in zip(out, eager, strict=True):
                torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
        new = {k: torch.cat([v, v]) for k, v in inputs.items()}  # batch 4
        model(**new)
        assert runner.captures == 2 and len(runner.graphs) == 2  # shape change -> a new capture
        model(**inputs)
        assert runner.captures == 2  # cached
        model(**{k: v[:1] for k, v in inputs.items()})
        assert runner.captures == 3 and len(runner.graphs) == 2  # bounded cache: LRU evicted
    # grad enabled -> eager, no capture
    model(**inputs)
    assert runner.last_fallback and "autograd" in runner.last_fallback


@pytest.mark.parametrize("case", ["convnextv2-cls", "dinov2-swiglu-cls", "altclip-text"])
def test_bf16(case, monkeypatch):
    """bf16 weights and activations: fused error against fp64 within 2x eager bf16's own (+ one bf16 ulp at 1)."""
    model, inputs = hf_model(case)
    ref64 = run(copy.deepcopy(model).double(), as_double(inputs))
    model = model.to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    eager = run(model, inputs)
    patch(model)
    spy = Spy(monkeypatch)
    fused = run(model, inputs)
    assert spy.calls[EXPECTED_KERNEL.get(_family(case), "attention")] > 0
    for i, (f, e, r) in enumerate(zip(fused, eager, ref64, strict=True)):
        err_f, err_e = (f.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        assert err_f <= 2 * err_e + 2**-7, f"{case}[{i}]: fused err {err_f:.3e} vs eager bf16 err {err_e:.3e}"


def test_copy_pickle_and_dtype_change(tmp_path, fallback):
    """A patched model deep-copies and pickles as a patched model; ``.to(dtype)`` refreshes the fused QKV cache."""
    model, inputs = hf_model("dinov2-swiglu-cls")
    eager = copy.deepcopy(model)
    patch(model)
    run(model, inputs)
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    for m in (clone, loaded):
        assert patched_blocks(m) == patched_blocks(model)
        for a, e in zip(run(m, inputs), run(model, inputs), strict=True):
            assert torch.equal(a, e)
    model.double()  # the cached q|k|v must follow
    for a, e in zip(run(model, as_double(inputs)), run(eager.double(), as_double(inputs)), strict=True):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------------------------------------------ GEMM epilogues
def test_kernel_activation_names():
    """HF's and fastvit's activation modules -> the fused_linear epilogue that computes the same function."""
    from transformers.activations import ACT2FN

    from fastvit.fused.matching import kernel_activation
    from fastvit.models.common import get_activation

    for name, expected in [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"),
                           ("quick_gelu", "quick_gelu"), ("silu", "silu"), ("relu", None), ("tanh", None)]:  # fmt: skip
        assert kernel_activation(ACT2FN[name]) == expected, f"HF {name}"
        assert kernel_activation(get_activation(name)) == expected, f"fastvit {name}"
    assert kernel_activation(torch.nn.functional.gelu) == "gelu"


@pytest.mark.parametrize("case", ["convnextv2-cls", "dinov2"])
def test_activation_without_epilogue_runs_as_its_own_op(case, monkeypatch, fallback):
    """An activation the GEMM epilogue does not have (relu6) runs after a plain GEMM; the rest stays fused."""
    model, inputs = hf_model(case, hidden_act="relu6")
    eager, ref64 = run(model, inputs), run(copy.deepcopy(model).double(), as_double(inputs))
    report = patch(model)
    assert report.num_fused > 0, str(report)
    spy = Spy(monkeypatch)
    fused = run(model, inputs)
    if case.startswith("convnext"):  # pwconv1 + relu6 + GRN + pwconv2 stay torch ops
        assert "fused_linear" not in report.kernels and spy.calls["fused_linear"] == 0
    else:  # q|k|v, out-proj and fc2 fused; fc1 + relu6 not
        assert spy.calls["fused_linear"] == 3 * 2, dict(spy.calls)
    assert_fused_close(fused, eager, ref64, case)


@pytest.mark.parametrize("case", ["convnextv2-cls", "dinov2", "altclip-text"])
def test_fused_linear_off_fuses_residuals_into_the_norms(case, monkeypatch, fallback):
    """``patch(fused_linear=False)``: cuBLAS GEMMs; pre-norm LN2 and both post-norm LNs take the residual add
    (``add_layer_norm``); ConvNeXt keeps its torch GEMMs and the one-pass GRN."""
    model, inputs = hf_model(case)
    eager, ref64 = run(model, inputs), run(copy.deepcopy(model).double(), as_double(inputs))
    report = patch(model, fused_linear=False)
    assert "fused_linear" not in report.kernels, str(report)
    spy = Spy(monkeypatch)
    fused = run(model, inputs)
    assert spy.calls["fused_linear"] == 0
    if not case.startswith("convnext"):
        per_layer = 2 if case == "altclip-text" else 1  # post-norm: both LayerNorms; pre-norm: LN2
        assert spy.calls["add_layer_norm"] == per_layer * 2 == report.kernels["add_layer_norm"], dict(spy.calls)
    assert_fused_close(fused, eager, ref64, case)
