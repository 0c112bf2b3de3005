"""Eager DINOv2 with registers vs HF transformers 4.50: same keys, same module classes, same outputs (fp32, CPU).

Each case builds a small HF model with random weights (every parameter perturbed, so register tokens, layer scale,
mask token and position embeddings are not at their init values), saves it with ``save_pretrained`` (safetensors or
.bin), loads it with ``fastvit.load(dir, fused=False)`` and compares every output field: plain (SDPA path), with
``output_hidden_states`` + ``output_attentions`` (explicit path), and with ``return_dict=False``.

The one intended difference: the classifier averages the patch tokens without the registers (HF >= 4.52, the
DINOv2 repository's linear heads); HF 4.50 averages the registers in. The classification reference is therefore
HF 4.50's own classifier applied to ``[CLS, mean of HF's patch tokens]``, and a test pins the difference.
"""

from __future__ import annotations

import pytest
import torch

import fastvit
from fastvit.models import build_model
from fastvit.models import dinov2_with_registers as reg
from tests.hf_utils import (
    assert_close,
    assert_mask_token_used,
    assert_matches_hf_calls,
    assert_outputs_close,
    assert_same_module_tree,
    backbone_kwargs,
    hf_model,
    load_like_hf,
    params_on_meta,
    save_hf,
)

transformers = pytest.importorskip("transformers")
from transformers.modeling_utils import no_init_weights  # noqa: E402

ATOL, RTOL = 2e-5, 1e-5  # fp32; SDPA vs matmul-softmax and bicubic in a different op order: rounding noise only

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7)
# (id, config kwargs, batch, (H, W))
CASES = [
    (  # the published geometry: 224 with patch 14 at the configured size (stored position embeddings, no resize)
        "224",
        dict(SMALL, image_size=224, patch_size=14, layerscale_value=0.5, num_labels=5),
        1,
        (224, 224),
    ),
    (  # giant-style SwiGLU FFN (HF's width rounding), 2 registers, upsampled to a larger non-square image
        "swiglu-interp",
        dict(SMALL, use_swiglu_ffn=True, num_register_tokens=2, layerscale_value=1e-2, num_labels=3),
        3,
        (42, 35),
    ),
    (  # downsampled (where antialiasing matters most), not a multiple of the patch, no qkv bias, other act / eps
        "downsample-odd",
        dict(
            hidden_size=24,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=7,
            num_register_tokens=1,
            qkv_bias=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            mlp_ratio=2.5,
            num_labels=4,
        ),
        3,
        (23, 31),
    ),
    (  # same number of patches as configured but not square: HF interpolates anyway (4x4 grid -> 2x8)
        "same-count-nonsquare",
        dict(SMALL, layerscale_value=2.0),
        1,
        (14, 56),
    ),
    (  # no registers (then the classifier is HF 4.50's exactly), no classifier head (Identity), 2 channels, 1 layer
        "noreg-2ch-nohead",
        dict(SMALL, num_hidden_layers=1, num_register_tokens=0, num_channels=2, num_labels=0, mlp_ratio=3),
        1,
        (21, 35),
    ),
]
HEADS = {  # task -> (HF class, output fields)
    "features": ("Dinov2WithRegistersModel", ("last_hidden_state", "pooler_output", "hidden_states", "attentions")),
    "classification": ("Dinov2WithRegistersForImageClassification", ("logits", "hidden_states", "attentions")),
    "backbone": ("Dinov2WithRegistersBackbone", ("feature_maps", "hidden_states", "attentions")),
}
# backbone variants, cycled over the cases: (out_features, out_indices, apply_layernorm, reshape_hidden_states)
BACKBONE = [
    (None, None, True, True),
    (["stem", "stage2"], None, True, False),
    (None, [0, -1], False, True),
    (["stage1"], None, False, False),
    (["stem", "stage1"], None, True, True),
]


def _hf_model(task: str, kwargs: dict, backbone=None, attn_implementation: str | None = None):
    kwargs = backbone_kwargs(kwargs, backbone if task == "backbone" else None)
    config = transformers.Dinov2WithRegistersConfig(**kwargs)
    return hf_model(config, getattr(transformers, HEADS[task][0]), attn_implementation=attn_implementation)


def _reference_logits(hf, x: torch.Tensor) -> torch.Tensor:
    """HF 4.50's classifier on ``[CLS, mean of the patch tokens]``, registers excluded (the HF >= 4.52 fix)."""
    seq = hf.dinov2_with_registers(x).last_hidden_state  # [B, 1 + R + N, D]
    patches = seq[:, 1 + hf.config.num_register_tokens :]
    return hf.classifier(torch.cat([seq[:, 0], patches.mean(dim=1)], dim=1))


def _expected(hf, task: str, x: torch.Tensor, **kwargs):
    """HF's output for the call, with the classifier's logits replaced by :func:`_reference_logits`."""
    out = hf(x, **kwargs)
    if task != "classification":
        return out
    logits = _reference_logits(hf, x)
    if isinstance(out, tuple):
        return (logits,) + out[1:]
    out.logits = logits
    return out


@pytest.mark.parametrize("task", list(HEADS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_hf(case, task, tmp_path):
    name, kwargs, batch, (h, w) = case
    index = [c[0] for c in CASES].index(name)
    backbone = BACKBONE[index % len(BACKBONE)] if task == "backbone" else None
    hf = _hf_model(task, kwargs, backbone)
    ours = load_like_hf(hf, tmp_path, safetensors=(index + len(task)) % 2 == 0)
    fields = HEADS[task][1]
    x = torch.randn(batch, kwargs.get("num_channels", 3), h, w)
    expected = lambda **kw: _expected(hf, task, x, **kw)  # noqa: E731
    a = assert_matches_hf_calls(ours, hf, x, fields, atol=ATOL, rtol=RTOL, expected=expected)
    num_tokens = 1 + kwargs.get("num_register_tokens", 4) + (h // kwargs["patch_size"]) * (w // kwargs["patch_size"])
    assert a.hidden_states[0].shape == (batch, num_tokens, kwargs["hidden_size"])


def test_classifier_excludes_registers_unlike_hf_4_50():
    """With registers, HF 4.50's logits (registers averaged in) differ from ours; without registers, or from HF 4.52
    on (PR #37836), they are equal."""
    fixed = tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 52)
    x = torch.randn(2, 3, 28, 28)
    for registers, differs in ((3, not fixed), (0, False)):
        hf = _hf_model("classification", dict(SMALL, num_register_tokens=registers, num_labels=4))
        ours = reg.build(hf.config.to_dict(), "classification").eval()
        ours.load_state_dict(hf.state_dict())
        with torch.no_grad():
            mine, theirs = ours(x).logits, hf(x).logits
            assert_close(mine, _reference_logits(hf, x), atol=ATOL, rtol=RTOL, name="logits")
        assert ((mine - theirs).abs().max() > 1e-3) == differs


def test_interpolation_is_antialiased(tmp_path):
    """HF interpolates the position embeddings with antialias=True: a plain bicubic resize would not match."""
    hf = _hf_model("features", dict(SMALL, image_size=56))
    ours = load_like_hf(hf, tmp_path)
    x = torch.randn(1, 3, 23, 31)  # 8x8 grid -> 3x4: downsampling
    with torch.no_grad():
        expected = hf(x).last_hidden_state
        assert_close(ours(x).last_hidden_state, expected, atol=ATOL, rtol=RTOL, name="antialiased")
        ours.embeddings.interpolate_antialias = False  # instance override: DINOv2's interpolation
        assert (ours(x).last_hidden_state - expected).abs().max() > 1e-3


def test_registers_sit_after_cls(tmp_path):
    """Sequence layout ``[CLS, registers, patches]``: the registers carry no position embedding."""
    hf = _hf_model("features", dict(SMALL, num_register_tokens=3))
    ours = load_like_hf(hf, tmp_path)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = ours.embeddings(x)
    registers = ours.embeddings.register_tokens.expand(2, -1, -1)
    assert torch.equal(tokens[:, 1:4], registers)
    assert tokens.shape == (2, 1 + 3 + 16, 32)


@pytest.mark.parametrize("case", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_bool_masked_pos(case, tmp_path):
    name, kwargs, batch, (h, w) = case
    hf = _hf_model("features", kwargs)
    ours = load_like_hf(hf, tmp_path)
    assert_mask_token_used(ours, hf, torch.randn(3, 3, h, w), kwargs["patch_size"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("task", ["features", "classification"])
def test_head_mask(task, tmp_path):
    # HF 4.50 applies the head mask multiplicatively only in its eager attention
    hf = _hf_model(task, dict(SMALL, num_labels=2), attn_implementation="eager")
    ours = load_like_hf(hf, tmp_path)
    x = torch.randn(2, 3, 35, 28)
    head_mask = (torch.rand(2, 4) > 0.5).float()
    head_mask.view(-1)[0] = 0.5
    with torch.no_grad():
        a = ours(x, head_mask=head_mask, output_attentions=True)
        e = _expected(hf, task, x, head_mask=head_mask, output_attentions=True)
        if task == "classification":  # the reference logits need the head mask too
            seq = hf.dinov2_with_registers(x, head_mask=head_mask).last_hidden_state
            e.logits = hf.classifier(torch.cat([seq[:, 0], seq[:, 5:].mean(dim=1)], dim=1))
    assert_outputs_close(a, e, HEADS[task][1][:1] + ("attentions",), atol=ATOL, rtol=RTOL)


def test_cross_task_loading(tmp_path):
    """A classifier checkpoint loads as features and as a backbone (HF's prefix rule), values as HF's base model."""
    hf = _hf_model("classification", dict(SMALL, num_labels=3))
    save_hf(hf, tmp_path)
    x = torch.randn(1, 3, 28, 35)
    with pytest.warns(UserWarning, match="classifier"):
        features = fastvit.load(tmp_path, task="features", fused=False)
    with pytest.warns(UserWarning, match="classifier"):
        backbone = fastvit.load(tmp_path, task="backbone", fused=False)
    with torch.no_grad():
        e = hf.dinov2_with_registers(x, output_hidden_states=True)
        assert_close(features(x).last_hidden_state, e.last_hidden_state, atol=ATOL, rtol=RTOL)
        maps = backbone(x).feature_maps
    last = hf.dinov2_with_registers.layernorm(e.hidden_states[-1])[:, 5:]  # CLS + 4 registers dropped
    assert_close(maps[-1], last.reshape(1, 4, 5, 32).permute(0, 3, 1, 2), atol=ATOL, rtol=RTOL)


def test_module_tree_matches_hf():
    """Same module names and class names as HF (dropout and HF's activation classes aside: no state)."""
    for task in HEADS:
        for swiglu in (False, True):
            hf = _hf_model(task, dict(SMALL, use_swiglu_ffn=swiglu, drop_path_rate=0.1))
            ours = reg.build(hf.config.to_dict(), task)
            assert_same_module_tree(ours, hf, skip=("dropout", "activation"))
            assert type(ours).base_model_prefix == type(hf).base_model_prefix == "dinov2_with_registers"


def test_config_follows_hf():
    hf = transformers.Dinov2WithRegistersConfig(num_register_tokens=2, num_hidden_layers=3, out_indices=[1, -1])
    cfg = reg.Dinov2WithRegistersConfig.from_dict(hf.to_dict())
    assert cfg.model_type == "dinov2_with_registers" and cfg.num_register_tokens == 2 and cfg.num_prefix_tokens == 3
    assert cfg.out_features == hf.out_features == ["stage1", "stage3"] and cfg.stage_names == hf.stage_names
    default, hf_default = reg.Dinov2WithRegistersConfig(), transformers.Dinov2WithRegistersConfig()
    for field in ("hidden_size", "patch_size", "image_size", "layer_norm_eps", "num_register_tokens", "mlp_ratio"):
        assert getattr(default, field) == getattr(hf_default, field), field
    assert default.patch_size == 16  # differs from DINOv2's default (14)
    # HF's registers config has no use_mask_token: the mask token always exists
    assert reg.Dinov2WithRegistersConfig.from_dict({"use_mask_token": False}).use_mask_token


@pytest.mark.parametrize("name", fastvit.list_models("dinov2-with-registers-*"))
def test_registry_entries_build_like_hf(name):
    info = fastvit.get_model_info(name)
    assert info.config["model_type"] == "dinov2_with_registers" and info.config["num_register_tokens"] == 4
    with torch.device("meta"):
        ours = build_model(info.config)
    config = dict(info.config)
    config.pop("model_type")
    with params_on_meta(), no_init_weights():
        theirs = getattr(transformers, info.config["architectures"][0])(
            transformers.Dinov2WithRegistersConfig(**config)
        )
    assert type(ours).__name__ == type(theirs).__name__
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in theirs.named_parameters()}


def test_random_init_from_name():
    model = fastvit.load("dinov2-with-registers-small", pretrained=False, fused=False)
    assert type(model).__name__ == "Dinov2WithRegistersModel" and not model.training
    assert torch.equal(model.embeddings.register_tokens, torch.zeros(1, 4, 384))  # HF leaves them at zero
    with torch.no_grad():
        out = model(torch.randn(1, 3, 28, 42))
    assert out.last_hidden_state.shape == (1, 1 + 4 + 6, 384)


@pytest.mark.parametrize("task", list(HEADS))
def test_bad_pixel_values(task):
    model = reg.build({"model_type": "dinov2_with_registers", **SMALL}, task)
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[1, 4, 28, 28\]"):
        model(torch.randn(1, 4, 28, 28))
    with pytest.raises(ValueError, match="pixel_values"):
        model()


@pytest.mark.parametrize(  # the interpreter is slow: one head on the Triton path (the layers are the same)
    "task,backend",
    [("features", "torch"), ("classification", "torch"), ("backbone", "torch"), ("backbone", "auto")],
    ids=["features-fallback", "classification-fallback", "backbone-fallback", "backbone-triton"],
)
def test_fused_load_matches_hf(task, backend, tmp_path):
    """``fastvit.load(dir, fused=True)``: every Dinov2WithRegistersLayer fused (SwiGLU too), HF's numbers.

    Tolerance: the fused layer reorders fp32 reductions (LayerNorm, online softmax); tests/test_patch.py bounds it
    against float64 (~1e-6 measured); 1e-4 here on O(1) outputs."""
    import fastvit_kernels

    from fastvit.patching import patched_blocks

    hf = _hf_model(task, dict(SMALL, hidden_size=64, num_attention_heads=2, use_swiglu_ffn=True, num_labels=3))
    save_hf(hf, tmp_path)
    ours = fastvit.load(tmp_path, fused=True)
    fused = [type(ours.get_submodule(path)).__name__ for path in patched_blocks(ours)]
    assert fused.count("Dinov2WithRegistersLayer") == 2, fused
    x = torch.randn(3, 3, 35, 42) if backend == "torch" else torch.randn(1, 3, 28, 35)
    field = HEADS[task][1][0]
    with torch.no_grad(), fastvit_kernels.backend(backend):
        a = getattr(ours(x), field)
    e = getattr(_expected(hf, task, x), field)
    for i, (ai, ei) in enumerate(zip(a, e, strict=True) if isinstance(e, tuple) else [(a, e)]):
        assert_close(ai, ei.detach(), atol=1e-4, rtol=1e-4, name=f"{field}[{i}]")
