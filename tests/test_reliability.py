"""Reliability (issue 16): the classes of failure found by adversarial probes, one section per class.

Every model is TINY (random weights, CPU; the Triton kernels run under TRITON_INTERPRET=1, see conftest.py).
Fused-vs-eager comparisons in fp32 use 1e-5 (the fused path only reorders fp32 reductions; measured ~1e-6), float64
ones 1e-12 (float64 end to end: measured ~1e-15; any fp32 step would show as ~1e-7).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import fastvit_kernels as K
import pytest
import torch
import torch.nn.functional as F

import fastvit
from fastvit.fused.base import FusedForward
from fastvit.loading import CheckpointError
from fastvit.models import build_model

REPO = Path(__file__).resolve().parents[1]
try:
    import transformers as _transformers

    _HF5 = int(_transformers.__version__.split(".")[0]) >= 5
except ImportError:  # pragma: no cover - the HF comparisons skip themselves
    _HF5 = False
# fastvit's models mirror the transformers 4.50 layout (and 5.x has no ViT-Hybrid, no prune_heads on DINOv2)
needs_hf4 = pytest.mark.skipif(_HF5, reason="compares with transformers 4.50 models")

# ------------------------------------------------------------------------------------------------ tiny models
CNX = dict(model_type="convnext", num_channels=3, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=3)
CNX2 = dict(CNX, model_type="convnextv2")
# head dim 32: the attention kernel runs (it takes D in {32, 64, 80, 96, 128})
DINO = dict(
    model_type="dinov2", hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
    num_labels=3,
)  # fmt: skip
DINO_SWIGLU = dict(DINO, use_swiglu_ffn=True)
TEXT = dict(
    vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
    max_position_embeddings=40, project_dim=16,
)  # fmt: skip
VISION = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
)
ALT = dict(model_type="altclip", text_config=TEXT, vision_config=VISION, projection_dim=16)
BIT = dict(
    global_padding="same", layer_type="bottleneck", depths=[1, 1], out_features=["stage1", "stage2"],
    embedding_dynamic_padding=True, hidden_sizes=[8, 16], num_groups=2, embedding_size=8,
)  # fmt: skip
VITH = dict(
    model_type="vit-hybrid", image_size=32, patch_size=1, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=96, backbone_config=BIT, backbone_featmap_shape=[1, 16, 4, 4], num_labels=3,
)  # fmt: skip
SIZES = {"convnext": 32, "convnextv2": 32, "dinov2": 28, "vit-hybrid": 32, "altclip": 28}

# (id, config, task): every family and head
MODELS = [
    ("convnext-features", CNX, "features"),
    ("convnext-classification", CNX, "classification"),
    ("convnext-backbone", CNX, "backbone"),
    ("convnextv2-classification", CNX2, "classification"),
    ("dinov2-features", DINO, "features"),
    ("dinov2-classification", DINO, "classification"),
    ("dinov2-backbone", DINO, "backbone"),
    ("dinov2-swiglu", DINO_SWIGLU, "features"),
    ("vit-hybrid-features", VITH, "features"),
    ("vit-hybrid-classification", VITH, "classification"),
    ("altclip-features", ALT, "features"),
    ("altclip-vision", ALT, "vision"),
    ("altclip-text", ALT, "text"),
]
MODEL_PARAMS = [pytest.param(cfg, task, id=name) for name, cfg, task in MODELS]


def tiny(config: dict, task: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = build_model(config, task)
    model.init_weights()
    return model.eval().to(dtype)


def inputs(config: dict, task: str, batch: int = 2, dtype: torch.dtype = torch.float32) -> dict:
    """Model inputs; text has a padded row (a real key padding mask) when batch >= 2."""
    out = {}
    if task != "text":
        size = SIZES[config["model_type"]]
        out["pixel_values"] = torch.randn(batch, 3, size, size, dtype=dtype)
    if config["model_type"] == "altclip" and task in ("features", "text"):
        out["input_ids"] = torch.randint(3, 99, (batch, 7))
        mask = torch.ones(batch, 7, dtype=torch.long)
        mask[1:, 5:] = 0
        out["attention_mask"] = mask
    return out


def tensors(out) -> dict[str, torch.Tensor]:
    """The tensors of a model output by name (tuples of tensors flattened as name[i]; nested outputs skipped)."""
    flat = {}
    for key in out.keys():
        value = out[key]
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, tuple):
            flat.update({f"{key}[{i}]": v for i, v in enumerate(value) if isinstance(v, torch.Tensor)})
    return flat


def assert_same_outputs(a, b, atol: float) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape, k
        err = (ta[k].double() - tb[k].double()).abs().max().item() if ta[k].numel() else 0.0
        assert err <= atol, f"{k}: max |a - b| = {err:.3e} > {atol:g}"


# ------------------------------------------------------------------------ 3. dropout in training mode, as HF


def _hf_twin(name: str, impl: str):
    """(HF model, fastvit model with the same weights, inputs) with every dropout probability non-zero."""
    transformers = pytest.importorskip("transformers")
    drops = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    strip = lambda c: {k: v for k, v in c.items() if k != "model_type"}  # noqa: E731
    if name == "dinov2":
        cfg, task = dict(DINO, **drops, drop_path_rate=0.1), "classification"
        hf = transformers.Dinov2ForImageClassification(
            transformers.Dinov2Config(**strip(cfg), attn_implementation=impl)
        )
    elif name == "vit-hybrid":
        cfg, task = dict(VITH, **drops), "classification"
        hf = transformers.ViTHybridForImageClassification(
            transformers.ViTHybridConfig(**strip(cfg), attn_implementation=impl)
        )
    else:
        cfg = dict(ALT, text_config=dict(TEXT, **drops), vision_config=dict(VISION, attention_dropout=0.25))
        task = "features"
        hf = transformers.AltCLIPModel(transformers.AltCLIPConfig(**strip(cfg), attn_implementation=impl))
    ours = build_model(cfg, task)
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not missing, missing
    return hf, ours, inputs(cfg, task)


@needs_hf4
@pytest.mark.parametrize(
    "name, impl",
    [("dinov2", "eager"), ("dinov2", "sdpa"), ("vit-hybrid", "eager"), ("vit-hybrid", "sdpa"), ("altclip", "eager")],
)
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "patched"])
def test_train_mode_dropout_matches_hf_with_the_same_seed(name, impl, fused):
    """Same seed -> the same dropout masks as HF (same RNG draws in the same order); eval stays deterministic."""
    hf, ours, x = _hf_twin(name, impl)
    if fused:
        fastvit.patch(ours)
    key = "logits_per_image" if name == "altclip" else "logits"
    with torch.no_grad():
        hf.train(), ours.train()
        torch.manual_seed(5)
        expected = hf(**x)[key]
        torch.manual_seed(5)
        got = ours(**x)[key]
        torch.manual_seed(6)
        other = ours(**x)[key]
        hf.eval(), ours.eval()
        eval_hf, eval_ours, eval_again = hf(**x)[key], ours(**x)[key], ours(**x)[key]
    assert (got - expected).abs().max().item() < 1e-5, "train-mode output differs from HF with the same seed"
    assert (other - got).abs().max().item() > 1e-3, "another seed gave the same output: dropout is not applied"
    assert (eval_ours - eval_hf).abs().max().item() < 1e-5
    assert torch.equal(eval_ours, eval_again), "eval mode must be deterministic (no dropout)"


def test_dropout_probabilities_reach_every_module():
    cfg = dict(DINO, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = build_model(cfg, "features")
    layer = model.encoder.layer[0]
    assert model.embeddings.dropout.p == 0.2
    assert layer.attention.attention.dropout_prob == 0.3
    assert layer.attention.output.dropout.p == 0.2
    text = build_model(dict(ALT, text_config=dict(TEXT, hidden_dropout_prob=0.15)), "text")
    assert text.roberta.embeddings.dropout.p == 0.15
    assert text.roberta.encoder.layer[0].output.dropout.p == 0.15


# ------------------------------------------------------------------- 4. float64 stays float64 (torch paths)


@pytest.mark.parametrize("cfg, task", [
    pytest.param(CNX, "classification", id="convnext"),
    pytest.param(CNX2, "classification", id="convnextv2"),
    pytest.param(DINO_SWIGLU, "features", id="dinov2-swiglu"),
    pytest.param(VITH, "classification", id="vit-hybrid"),
    pytest.param(ALT, "features", id="altclip"),
])  # fmt: skip
def test_float64_model_fused_equals_eager(cfg, task):
    eager = tiny(cfg, task, torch.float64)
    fused = copy.deepcopy(eager)
    fastvit.patch(fused)
    x = inputs(cfg, task, dtype=torch.float64)
    with torch.no_grad():
        assert_same_outputs(fused(**x), eager(**x), atol=1e-12)


def test_kernel_references_compute_float64_in_float64():
    """Every ``*_ref`` keeps float64 inputs in float64 (an fp32 step would leave errors of ~1e-7)."""
    torch.manual_seed(0)
    d = torch.float64
    x = torch.randn(2, 16, 9, 9, dtype=d)
    w, b, lw, lb = torch.randn(16, 1, 7, 7, dtype=d), torch.randn(16, dtype=d), torch.randn(16, dtype=d), None
    conv = F.conv2d(x, w, b, padding=3, groups=16)
    cases = {
        "dwconv2d_ref": (K.dwconv2d_ref(x, w, b), conv),
        "dwconv2d_layer_norm_ref": (
            K.dwconv2d_layer_norm_ref(x, w, b, lw, lb, 1e-6),
            F.layer_norm(conv.permute(0, 2, 3, 1), (16,), lw, lb, 1e-6),
        ),
        "layer_norm_ref": (K.layer_norm_ref(x, x[0, 0, 0], None, 1e-6), F.layer_norm(x, (9,), x[0, 0, 0], None, 1e-6)),
    }
    u = x.mean(1, keepdim=True)
    ln2d = (x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + 1e-6)
    cases["layer_norm_2d_ref"] = (K.layer_norm_2d_ref(x, None, None, 1e-6), ln2d)
    nhwc = x.permute(0, 2, 3, 1)
    gx = torch.linalg.vector_norm(nhwc, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
    cases["grn_ref"] = (K.grn_ref(nhwc, lw, b, 1e-6), lw * (nhwc * nx) + b + nhwc)
    a, g = nhwc.chunk(2, dim=-1)
    cases["swiglu_ref"] = (K.swiglu_ref(nhwc), F.silu(a) * g)
    q, k, v = torch.randn(3, 2, 2, 5, 8, dtype=d).unbind(0)
    keep = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])  # row 1: every key padded -> mean of V (HF semantics)
    exp = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=keep[:1, None, None].bool())
    exp = torch.cat([exp, v[1:].mean(-2, keepdim=True).expand(-1, -1, 5, -1)])
    cases["attention_ref"] = (K.attention_ref(q, k, v, key_padding_mask=keep), exp)
    for name, (got, expected) in cases.items():
        assert got.dtype == d, name
        err = (got - expected).abs().max().item()
        assert err < 1e-12, f"{name}: max error {err:.3e} against float64 math"


# -------------------------------------------------- 5. non-finite inputs: the kernels are non-finite where eager is


def _finite_masks_equal(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    fg, fe = torch.isfinite(got), torch.isfinite(expected)
    assert torch.equal(fg, fe), f"{name}: {int((fg != fe).sum())} positions finite in one and not the other"
    assert torch.equal(torch.isnan(got), torch.isnan(expected)), f"{name}: NaN positions differ"


def _nonfinite_inputs() -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 64)
    special = torch.randn(2, 5, 6, 64)
    special[0, 1, 1, 3], special[1, 2, 2, 2], special[1, 4, 0, 0] = float("inf"), float("nan"), float("-inf")
    const = torch.full((2, 5, 6, 64), 1e30)
    return [("1e30", x * 1e30), ("3e38", x.clamp(-1, 1) * 3e38), ("inf-nan", special), ("const-1e30", const)]


@pytest.mark.parametrize("case", range(4), ids=["1e30", "3e38", "inf-nan", "const-1e30"])
def test_norm_kernels_nonfinite_like_their_reference(case):
    name, x = _nonfinite_inputs()[case]
    assert K.use_triton(x), "these tests are about the Triton path (TRITON_INTERPRET=1 on CPU)"
    C = x.shape[-1]
    w, b = torch.randn(C), torch.randn(C)
    _finite_masks_equal(K.layer_norm(x, w, b, 1e-6), F.layer_norm(x, (C,), w, b, 1e-6), f"layer_norm {name}")
    nchw = x.permute(0, 3, 1, 2)
    for layout in (nchw, nchw.contiguous()):  # channels_last (row kernel) and NCHW (2-D kernel)
        _finite_masks_equal(K.layer_norm_2d(layout, w, b, 1e-6), K.layer_norm_2d_ref(layout, w, b, 1e-6), name)
    dw, db = torch.randn(C, 1, 3, 3), torch.randn(C)
    eager = F.layer_norm(F.conv2d(nchw, dw, db, padding=1, groups=C).permute(0, 2, 3, 1), (C,), w, b, 1e-6)
    _finite_masks_equal(K.dwconv2d_layer_norm(nchw, dw, db, w, b, 1e-6), eager, f"dwconv2d_layer_norm {name}")
    _finite_masks_equal(K.grn(x, w, b, 1e-6), K.grn_ref(x, w, b, 1e-6), f"grn {name}")


def test_norm_kernels_still_exact_for_large_finite_inputs():
    """The non-finite rule only fires where eager's statistics overflow: 1e15-scaled rows normalise as usual."""
    x = torch.randn(4, 96) * 1e15 + 3e15
    w, b = torch.randn(96), torch.randn(96)
    torch.testing.assert_close(K.layer_norm(x, w, b, 1e-6), F.layer_norm(x, (96,), w, b, 1e-6), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ 8. a batch of 0


@pytest.mark.parametrize("cfg, task", MODEL_PARAMS)
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_empty_batch_gives_empty_outputs(cfg, task, fused):
    model = tiny(cfg, task)
    with torch.no_grad():
        full = tensors(model(**inputs(cfg, task, batch=2)))  # the shapes (eager: fast)
        if fused:
            fastvit.patch(model)
        empty = tensors(model(**inputs(cfg, task, batch=0)))
    assert empty.keys() == full.keys()
    for k, v in empty.items():
        expected = [0 if d == 2 and i < 2 and k.startswith("logits_per") else d for i, d in enumerate(full[k].shape)]
        expected[0] = 0
        assert list(v.shape) == expected, f"{k}: {list(v.shape)} vs {expected}"


# ------------------------------------------------------------------------- 9. interpreter thread safety


def test_interpreted_launches_from_many_threads():
    """Several threads running one fused model under the interpreter: no crash, every result right."""
    model = tiny(DINO, "features")
    eager = copy.deepcopy(model)
    fastvit.patch(model)
    xs = [torch.randn(1, 3, 28, 28) for _ in range(4)]
    with torch.no_grad():
        expected = [eager(pixel_values=x).last_hidden_state for x in xs]
    results, errors = [None] * len(xs), []

    def work(i: int) -> None:
        try:
            with torch.no_grad():
                for _ in range(2):
                    results[i] = model(pixel_values=xs[i]).last_hidden_state
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, exp in zip(results, expected, strict=True):
        assert (got - exp).abs().max().item() < 1e-5


def test_compiled_launches_take_no_lock(monkeypatch):
    from fastvit_kernels import _dispatch

    class NoLock:
        def __enter__(self):
            raise AssertionError("the compiled path must not take the interpreter lock")

        def __exit__(self, *exc):
            return False

    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args))

    monkeypatch.setattr(_dispatch, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "_INTERPRETER_LOCK", NoLock())
    monkeypatch.setattr(torch.library, "wrap_triton", lambda k: k, raising=False)
    _dispatch.launch(Kernel(), (1,), 7)
    assert calls == [((1,), (7,))]


# --------------------------------------------------------------------------- 10-12. load(): clear errors


def _checkpoint(tmp_path: Path, config: dict, task: str, **extra) -> Path:
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    model = tiny(config, task)
    (tmp_path / "config.json").write_text(json.dumps({**config, **extra}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float64", torch.float64),
        ("half", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (None, torch.float32),
    ],
)
def test_load_accepts_hf_dtype_strings(tmp_path, dtype, expected):
    model = fastvit.load(_checkpoint(tmp_path, CNX, "features"), dtype=dtype, fused=False)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_load_dtype_auto_is_the_checkpoints(tmp_path):
    d = _checkpoint(tmp_path, CNX, "classification", torch_dtype="bfloat16")
    assert next(fastvit.load(d, dtype="auto", fused=False).parameters()).dtype == torch.bfloat16
    config = json.loads((d / "config.json").read_text())
    del config["torch_dtype"]
    (d / "config.json").write_text(json.dumps(config))  # no torch_dtype: the weights' dtype (fp32 here)
    assert next(fastvit.load(d, dtype="auto", fused=False).parameters()).dtype == torch.float32


@pytest.mark.parametrize("bad", ["int8", "fp17", torch.int64, 16])
def test_load_bad_dtype_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"not a floating-point dtype.*'auto'.*'float16'.*'bfloat16'"):
        fastvit.load("convnextv2-atto", dtype=bad, pretrained=False, fused=False)


@pytest.mark.parametrize(
    "config, field",
    [
        pytest.param(dict(DINO, hidden_size="64"), "hidden_size", id="str-for-int"),  # the probe
        pytest.param(dict(DINO, num_hidden_layers=2.5), "num_hidden_layers", id="float-for-int"),
        pytest.param(dict(DINO, qkv_bias="yes"), "qkv_bias", id="str-for-bool"),
        pytest.param(dict(DINO, hidden_size=True), "hidden_size", id="bool-for-int"),
        pytest.param(dict(CNX, hidden_sizes=[32, "64"]), "hidden_sizes", id="list-item"),
        pytest.param(dict(ALT, text_config=dict(TEXT, hidden_size=[64])), "hidden_size", id="sub-config"),
        pytest.param(dict(VITH, backbone_config=dict(BIT, depths="11")), "depths", id="backbone-config"),
    ],
)
def test_config_field_of_wrong_type_names_field_and_file(tmp_path, config, field):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        fastvit.load(tmp_path, pretrained=False, fused=False)
    message = str(info.value)
    assert f"config field '{field}'" in message and str(tmp_path / "config.json") in message, message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_load_on_cuda_without_cuda_fails_before_building(monkeypatch):
    import fastvit.loading as loading

    monkeypatch.setattr(loading, "_resolve", lambda *a: pytest.fail("the model was looked up / built first"))
    with pytest.raises(RuntimeError, match=r"device='cuda'.*no CUDA GPU.*device='cpu'"):
        fastvit.load("convnextv2-atto", device="cuda", pretrained=False)


def test_load_bad_device_string():
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device"):
        fastvit.load("convnextv2-atto", device="gpu0", pretrained=False)


# --------------------------------------------------------------- 14. numpy, `fastvit list` "?", `fastvit info`

# what a missing numpy does to Triton under TRITON_INTERPRET=1: its interpreter module (numpy is its first import)
# fails; the rest of fastvit imports numpy for itself, so only that module is blocked here
_BLOCK_IMPORT = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == sys.argv[1]:
            raise ModuleNotFoundError("No module named 'numpy'", name="numpy")
sys.meta_path.insert(0, Block())
from fastvit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_numpy_is_a_declared_dependency():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "numpy" for d in deps), deps


@pytest.mark.parametrize("blocked", ["triton.runtime.interpreter", "triton"])
def test_info_says_why_triton_cannot_be_used(blocked):
    """Triton installed but failing to import (numpy missing, TRITON_INTERPRET=1): ``fastvit info`` gives that
    reason, never "not installed", and the kernels fall back to torch."""
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", _BLOCK_IMPORT, blocked, "info"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    versions, kernels = proc.stdout.splitlines()[1], proc.stdout.split("kernels for cpu tensors:")[1]
    assert "No module named 'numpy'" in kernels and "torch fallback" in kernels, proc.stdout
    assert "not installed" not in kernels and "triton not installed" not in versions, proc.stdout


def test_list_explains_unknown_parameter_counts(monkeypatch, capsys):
    import fastvit.models as models
    from fastvit.cli import main

    real = models.build_model

    def build(config, task=None):
        if config.get("model_type") == "vit-hybrid":
            raise ModuleNotFoundError("No module named 'numpy'", name="numpy")
        return real(config, task)

    monkeypatch.setattr(models, "build_model", build)
    assert main(["list", "vit-hybrid*"]) == 0
    out = capsys.readouterr().out
    assert " ? " in out
    assert "params ?: vit-hybrid" in out and "numpy" in out, out


# ------------------------------------------- 1. fused weights can never go stale (+ the property test, below)


def _pair(cfg: dict = DINO, task: str = "features"):
    eager = tiny(cfg, task)
    fused = copy.deepcopy(eager)
    fastvit.patch(fused)
    return eager, fused


def _max_diff(eager, fused, x: dict) -> float:
    with torch.no_grad():
        a, b = tensors(eager(**x)), tensors(fused(**x))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_qkv_parameters_are_views_of_the_fused_weight():
    eager, fused = _pair()
    layer = fused.encoder.layer[0]
    fl = FusedForward.installed(layer).qkv
    w, b = fl.get()
    attn = layer.attention.attention
    for i, lin in enumerate((attn.query, attn.key, attn.value)):
        assert lin.weight.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
        assert torch.equal(w[64 * i : 64 * (i + 1)], lin.weight) and torch.equal(b[64 * i : 64 * (i + 1)], lin.bias)
    assert set(fused.state_dict()) == set(eager.state_dict())  # no extra keys
    assert not any("fastvit" in name for name, _ in fused.named_buffers())
    fastvit.unpatch(fused)  # unpatched: independent tensors again (safetensors refuses shared storage)
    ptrs = {p.untyped_storage().data_ptr() for p in (attn.query.weight, attn.key.weight, attn.value.weight)}
    assert len(ptrs) == 3


@pytest.mark.parametrize(
    "update",
    ["data_write", "copy_", "load", "load_assign", "load_inference_mode", "assign_inference_mode", "double", "half"],
)
def test_every_weight_update_reaches_the_fused_path(update):
    """The probes of issue 16 item 1, one per way of writing weights (DINOv2: q|k|v; ConvNeXt: the dwconv weight)."""
    for cfg in (DINO, CNX2):
        task = "features"
        eager, fused = _pair(cfg, task)
        x = inputs(cfg, task)
        torch.manual_seed(1)
        sd = {k: v + 0.05 * torch.randn_like(v) for k, v in eager.state_dict().items()}
        infer = torch.inference_mode() if "inference" in update else torch.no_grad()
        for model in (eager, fused):
            with infer:
                if update == "data_write":
                    for name, p in model.named_parameters():
                        if name.endswith(("value.weight", "dwconv.weight")):
                            p.data.mul_(1.5)
                elif update == "copy_":
                    for name, p in model.named_parameters():
                        p.copy_(sd[name])
                elif update in ("load", "load_inference_mode"):
                    model.load_state_dict(sd)
                elif update in ("load_assign", "assign_inference_mode"):
                    model.load_state_dict({k: v.clone() for k, v in sd.items()}, assign=True)
                elif update == "double":
                    model.double()
                else:
                    model.half().float()  # through fp16 and back: the rounded values must reach the fused path
        if update == "double":
            x = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
        with torch.inference_mode():
            err = _max_diff(eager, fused, x)
        assert err < (1e-12 if update == "double" else 1e-5), f"{cfg['model_type']} after {update}: {err:.3e}"


def test_weight_updates_under_torch_compile():
    """``cm = torch.compile(m); cm(x); m.load_state_dict(sd); cm(x)`` gives the new weights' output."""
    eager, fused = _pair()
    compiled = torch.compile(fused)
    x = inputs(DINO, "features")
    with torch.no_grad():
        compiled(**x)
    for step, scale in enumerate((1.3, 0.7, 1.1)):
        sd = {k: v * scale for k, v in eager.state_dict().items()}
        for model in (eager, fused):
            if step == 0:
                model.load_state_dict(sd)
            elif step == 1:
                model.load_state_dict(sd, assign=True)
            else:
                model.encoder.layer[0].attention.attention.value.weight.data.mul_(scale)
        with torch.no_grad():
            err = (compiled(**x).last_hidden_state - eager(**x).last_hidden_state).abs().max().item()
        assert err < 1e-5, f"step {step}: {err:.3e}"


# --------------------------------------------------------------- 2. attention masks are read whole


def _text_pair():
    cfg = dict(ALT, text_config=dict(TEXT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return _pair(cfg, "text")


def _block_mask(batch: int = 2, seq: int = 8) -> torch.Tensor:
    """[B, S, S]: tokens 0-3 and 4-7 attend only within their half (rows differ)."""
    m = torch.ones(batch, seq, seq, dtype=torch.long)
    m[:, :4, 4:] = 0
    m[:, 4:, :4] = 0
    return m


def test_mask_with_differing_rows_is_honoured():
    eager, fused = _text_pair()
    ids = torch.randint(3, 99, (2, 8))
    for mask in (_block_mask(), torch.tensor([[1] * 8, [1] * 5 + [0] * 3])):
        x = dict(input_ids=ids, attention_mask=mask)
        assert _max_diff(eager, fused, x) < 1e-5, mask.shape


@needs_hf4
def test_hf_text_model_block_mask_patched_equals_unpatched():
    transformers = pytest.importorskip("transformers")
    config = transformers.AltCLIPTextConfig(**TEXT)
    hf = transformers.AltCLIPTextModel(config).eval()
    patched = copy.deepcopy(hf)
    fastvit.patch(patched)
    x = dict(input_ids=torch.randint(3, 99, (2, 8)), attention_mask=_block_mask())
    with torch.no_grad():
        err = (hf(**x).last_hidden_state - patched(**x).last_hidden_state).abs().max().item()
    assert err < 1e-5, f"rows 4-7 wrong: {err:.3e}"


def test_key_padding_mask_only_when_pure_by_construction():
    from fastvit.fused.transformer import full_mask, key_padding_mask

    keep = torch.tensor([[True] * 6 + [False] * 2, [True] * 8])
    assert torch.equal(key_padding_mask(keep[:, None, None, :]), keep)
    assert torch.equal(key_padding_mask(keep[:, None, None, :].expand(2, 1, 8, 8)), keep)  # broadcast rows
    materialised = keep[:, None, None, :].expand(2, 1, 8, 8).clone()  # transformers 5.x: rows equal, read in full
    assert torch.equal(key_padding_mask(materialised), keep)
    rows_differ = materialised.clone()
    rows_differ[:, :, 3, 0] = False
    assert key_padding_mask(rows_differ) is False
    materialised[:, :, 5, 1] = False  # written in place after a check: checked again
    assert key_padding_mask(materialised) is False
    additive = (1.0 - keep.float())[:, None, None, :] * torch.finfo(torch.float32).min
    assert torch.equal(key_padding_mask(additive), additive[:, 0, 0])  # an additive row: the kernel adds it whole
    assert full_mask(additive, 2, 8) is additive
    assert full_mask(rows_differ, 2, 8) is rows_differ
    assert full_mask(torch.zeros(2, 1, 8, 7), 2, 8) is None  # wrong shape: eager raises its own error


@pytest.mark.parametrize("rows", [1, 8], ids=["key-bias-kernel", "full-mask-sdpa"])
def test_mask_values_are_not_reduced_to_keep_or_pad(rows):
    """An additive bias that is not 0 / min (a soft mask) changes the output exactly as in eager: as a [B, S] key
    bias in the kernel ([B, 1, 1, S]), or whole through SDPA ([B, 1, S, S] with rows of their own)."""
    eager, fused = _text_pair()
    layer_e, layer_f = eager.roberta.encoder.layer[0], fused.roberta.encoder.layer[0]
    h = torch.randn(2, 8, 64)
    bias = torch.randn(2, 1, rows, 8)
    bias[1, ..., 6:] = torch.finfo(torch.float32).min  # and padded keys
    with torch.no_grad():
        a, b = layer_e(h, bias)[0], layer_f(h, bias)[0]
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)], ids=["fp32", "fp16"])
def test_attention_kernel_key_bias_is_hf_additive_mask(dtype, tol):
    """``attention(key_bias=...)`` == softmax(q k^T * scale + bias) v, any bias values; a row padded everywhere
    (finfo.min) gives the mean of V, as HF eager."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 3, 2, 19, 32).to(dtype).unbind(0)
    bias = torch.randn(3, 19)
    bias[1, 10:] = torch.finfo(torch.float32).min
    bias[2] = torch.finfo(torch.float32).min  # every key padded
    assert K.use_triton(q)
    got = K.attention(q, k, v, key_bias=bias)
    ref = K.attention_ref(q, k, v, key_bias=bias)
    qf, kf, vf = q.double(), k.double(), v.double()
    probs = torch.softmax(qf @ kf.transpose(-1, -2) * 32**-0.5 + bias.double()[:, None, None, :], dim=-1)
    exact = probs @ vf
    assert (ref.double() - exact).abs().max().item() < tol
    assert (got.double() - exact).abs().max().item() < tol
    assert (got[2].double() - vf[2].mean(dim=-2, keepdim=True)).abs().max().item() < tol


# --------------------------------------------------- 6. module surgery after patching is re-resolved


@needs_hf4
def test_prune_heads_after_patch_matches_unpatched():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**{k: v for k, v in DINO.items() if k != "model_type"}))
    hf.eval()
    patched = copy.deepcopy(hf)
    fastvit.patch(patched)
    x = dict(pixel_values=torch.randn(2, 3, 28, 28))
    hf.prune_heads({0: [0]})
    patched.prune_heads({0: [0]})
    assert _max_diff(hf, patched, x) < 1e-5
    rep = fastvit.patching.report(patched)
    assert rep.blocks["Dinov2Layer"] == 2 and not rep.skipped, rep  # one head left: still fused
    assert FusedForward.installed(patched.encoder.layer[0]).spec.num_heads == 1


class _LoRA(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.a = torch.nn.Linear(base.in_features, 4, bias=False)
        self.b = torch.nn.Linear(4, base.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b(self.a(x))


def test_wrapped_linear_runs_the_original_forward_and_says_so():
    eager, fused = _pair()
    x = inputs(DINO, "features")
    torch.manual_seed(3)
    lora_e = _LoRA(eager.encoder.layer[1].attention.attention.query)
    lora_f = copy.deepcopy(lora_e)
    lora_f.base = fused.encoder.layer[1].attention.attention.query
    eager.encoder.layer[1].attention.attention.query = lora_e
    fused.encoder.layer[1].attention.attention.query = lora_f
    with pytest.warns(UserWarning, match="changed after patching.*original forward"):
        assert _max_diff(eager, fused, x) < 1e-5
    rep = fastvit.patching.report(fused)
    assert [p for p, _, _ in rep.skipped] == ["encoder.layer.1"], rep
    assert "no q/k/v Linear" in rep.skipped[0][2]
    # the adapter removed again: fused again
    fused.encoder.layer[1].attention.attention.query = lora_f.base
    eager.encoder.layer[1].attention.attention.query = lora_e.base
    assert _max_diff(eager, fused, x) < 1e-5
    assert not fastvit.patching.report(fused).skipped


def test_swapped_linear_is_the_one_used():
    """A module swapped for another of the same shape (new weights): the fused path reads the new one."""
    eager, fused = _pair(DINO_SWIGLU, "features")
    x = inputs(DINO_SWIGLU, "features")
    for model in (eager, fused):
        torch.manual_seed(4)
        mlp = model.encoder.layer[0].mlp
        mlp.weights_out = torch.nn.Linear(mlp.weights_out.in_features, 64)  # same shape as before
        torch.manual_seed(5)
        model.encoder.layer[1].attention.output.dense = torch.nn.Linear(64, 64)
    assert _max_diff(eager, fused, x) < 1e-5
    assert not fastvit.patching.report(fused).skipped


# ------------------------------------------------------- 7. pickle / torch.save of a cuda_graphs model


@pytest.mark.parametrize("how", ["pickle", "torch.save", "deepcopy"])
def test_cuda_graphs_model_pickles(how, tmp_path):
    import io
    import pickle

    model = tiny(DINO, "features")
    fastvit.patch(model, cuda_graphs=True)
    x = inputs(DINO, "features")
    if how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    elif how == "torch.save":
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        clone = torch.load(buf, weights_only=False)
    else:
        clone = copy.deepcopy(model)
    assert type(clone.forward).__name__ == "CUDAGraphForward"
    with torch.no_grad():
        assert torch.equal(clone(**x).last_hidden_state, model(**x).last_hidden_state)
    # the clone's fused weights follow the clone's updates (not the original's)
    clone.load_state_dict({k: v * 1.2 for k, v in clone.state_dict().items()})
    eager = copy.deepcopy(clone)
    fastvit.unpatch(eager)
    assert _max_diff(eager, clone, x) < 1e-5


# ------------------------------------------------ 13. a base checkpoint cannot fill a classification head


@pytest.mark.parametrize("cfg", [CNX, DINO, VITH], ids=["convnext", "dinov2", "vit-hybrid"])
def test_base_checkpoint_as_classification_raises(tmp_path, cfg):
    d = _checkpoint(tmp_path, cfg, "features")
    with pytest.raises(CheckpointError, match=r"missing keys: classifier\..*task='features'"):
        fastvit.load(d, task="classification", fused=False)


# ----------------------------------------------- property: any sequence of weight updates, fused == eager

DINO_1 = dict(DINO, num_hidden_layers=1)
_UPDATES = ("copy_", "data_write", "load", "load_assign", "load_inference_mode", "double", "float", "half_float")


def _apply_update(model: torch.nn.Module, update: str, sd: dict[str, torch.Tensor]) -> None:
    dtype = next(model.parameters()).dtype
    sd = {k: v.to(dtype) for k, v in sd.items()}
    with torch.inference_mode() if update == "load_inference_mode" else torch.no_grad():
        if update == "copy_":
            for name, p in model.named_parameters():
                p.copy_(sd[name])
        elif update == "data_write":
            for name, p in model.named_parameters():
                if name.endswith(("key.weight", "value.bias", "fc1.weight")):
                    p.data.mul_(1.25)
        elif update in ("load", "load_inference_mode"):
            model.load_state_dict(sd)
        elif update == "load_assign":
            model.load_state_dict({k: v.clone() for k, v in sd.items()}, assign=True)
        elif update == "double":
            model.double()
        elif update == "float":
            model.float()
        else:
            model.half().float()


def _check_updates(updates: list[str], seed: int, compiled: bool) -> None:
    eager, fused = _pair(DINO_1, "features")
    run = torch.compile(fused) if compiled else fused
    x = inputs(DINO_1, "features")
    for i, update in enumerate(updates):
        torch.manual_seed(seed + i)
        sd = {k: v + 0.05 * torch.randn_like(v) for k, v in eager.state_dict().items()}
        for model in (eager, fused):
            _apply_update(model, update, sd)
        dtype = next(eager.parameters()).dtype
        xi = {k: v.to(dtype) for k, v in x.items()}
        with torch.no_grad():
            err = (run(**xi).last_hidden_state - eager(**xi).last_hidden_state).abs().max().item()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert err <= tol, f"after {updates[: i + 1]} ({dtype}, compiled={compiled}): max error {err:.3e}"


def _check_any_updates(*, compiled: bool, max_examples: int, min_size: int, max_size: int) -> None:
    """:func:`_check_updates` over hypothesis-drawn lists of ``min_size..max_size`` updates (derandomized)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    updates = st.lists(st.sampled_from(_UPDATES), min_size=min_size, max_size=max_size)

    @hypothesis.settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)
    @hypothesis.given(updates=updates, seed=st.integers(0, 99))
    def check(updates, seed):
        _check_updates(updates, seed, compiled=compiled)

    check()


def test_property_fused_equals_eager_after_any_weight_updates():
    _check_any_updates(compiled=False, max_examples=8, min_size=1, max_size=4)


def test_property_fused_equals_eager_after_any_weight_updates_compiled():
    _check_any_updates(compiled=True, max_examples=3, min_size=2, max_size=3)


def test_fused_model_saves_and_loads_back(tmp_path):
    """The q|k|v parameters of a fused model share one storage: ``fastvit.save_pretrained`` still writes them
    (safetensors refuses shared storage), and the checkpoint loads back to the same outputs."""
    model = fastvit.load(_checkpoint(tmp_path / "in", DINO, "features"), fused=True)
    x = dict(pixel_values=torch.randn(1, 3, 28, 28))
    fastvit.save_pretrained(model, tmp_path / "out")
    again = fastvit.load(tmp_path / "out", fused=False)
    assert _max_diff(again, model, x) < 1e-5


def test_a_new_parameter_keeps_its_attributes():
    """A parameter assigned to a fused Linear becomes a view of the fused weight, keeping the loader's marks on it
    (transformers 5.x sets ``_is_hf_initialized`` and re-initialises parameters without it)."""
    eager, fused = _pair()
    q = fused.encoder.layer[0].attention.attention.query
    new = torch.nn.Parameter(torch.randn(64, 64))
    new._is_hf_initialized = True
    q.weight = new
    assert q.weight._is_hf_initialized and torch.equal(q.weight, new)
    eager.encoder.layer[0].attention.attention.query.weight = torch.nn.Parameter(new.detach().clone())
    assert _max_diff(eager, fused, inputs(DINO, "features")) < 1e-5
