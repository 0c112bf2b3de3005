"""Eager DINOv2 vs HF transformers 4.50: same keys, same module classes, same outputs (fp32, CPU).

Each case builds a small HF model with random weights (every parameter perturbed, so layer scale, mask token and
position embeddings are not at their init values), saves it with ``save_pretrained`` (safetensors or .bin), loads it
with ``fastvit.load(dir, fused=False)`` and compares every output field: plain (SDPA path), with
``output_hidden_states`` + ``output_attentions`` (explicit path), and with ``return_dict=False``.
"""

from __future__ import annotations

import pytest
import torch

from fastvit.models import dinov2
from tests.hf_utils import (
    assert_mask_token_used,
    assert_matches_hf_calls,
    assert_outputs_close,
    assert_same_module_tree,
    backbone_kwargs,
    hf_model,
    load_like_hf,
)

transformers = pytest.importorskip("transformers")

ATOL, RTOL = 2e-5, 1e-5  # fp32; SDPA vs matmul-softmax and bicubic in a different op order: rounding noise only

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7)
# (id, config kwargs, (H, W))
CASES = [
    ("configured-size", dict(SMALL, layerscale_value=0.5, num_labels=5), (28, 28)),
    (  # giant-style SwiGLU FFN (HF's width rounding: 32*4 -> 88), interpolated to a larger non-square image
        "swiglu-interp",
        dict(SMALL, use_swiglu_ffn=True, layerscale_value=1e-2, num_labels=3),
        (42, 35),
    ),
    (  # no qkv bias, other act / eps / mlp ratio, image not a multiple of the patch (floor), smaller than configured
        "noqkvbias-odd",
        dict(
            hidden_size=24,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=20,
            patch_size=5,
            qkv_bias=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            mlp_ratio=2.5,
            num_labels=4,
        ),
        (23, 31),
    ),
    (  # same number of patches as configured but not square: HF interpolates anyway (4x4 grid -> 2x8)
        "same-count-nonsquare",
        dict(SMALL, layerscale_value=2.0),
        (14, 56),
    ),
    (  # 2 input channels, no classifier head (Identity), no mask token, 1 layer
        "2ch-nohead",
        dict(SMALL, num_hidden_layers=1, num_channels=2, num_labels=0, use_mask_token=False, mlp_ratio=3),
        (21, 35),
    ),
]
HEADS = {  # task -> (HF class, output fields)
    "features": ("Dinov2Model", ("last_hidden_state", "pooler_output", "hidden_states", "attentions")),
    "classification": ("Dinov2ForImageClassification", ("logits", "hidden_states", "attentions")),
    "backbone": ("Dinov2Backbone", ("feature_maps", "hidden_states", "attentions")),
}
# backbone variants, cycled over the cases: (out_features, out_indices, apply_layernorm, reshape_hidden_states)
BACKBONE = [
    (None, None, True, True),
    (["stem", "stage2"], None, True, False),
    (None, [0, -1], False, True),
    (["stage1"], None, False, False),
    (["stem", "stage1", "stage2"], None, True, True),
]


def _hf_model(task: str, kwargs: dict, backbone=None, attn_implementation: str | None = None):
    config = transformers.Dinov2Config(**backbone_kwargs(kwargs, backbone if task == "backbone" else None))
    return hf_model(config, getattr(transformers, HEADS[task][0]), attn_implementation=attn_implementation)


@pytest.mark.parametrize("task", list(HEADS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_hf(case, task, tmp_path):
    name, kwargs, (h, w) = case
    index = [c[0] for c in CASES].index(name)
    backbone = BACKBONE[index % len(BACKBONE)] if task == "backbone" else None
    hf = _hf_model(task, kwargs, backbone)
    ours = load_like_hf(hf, tmp_path, safetensors=(index + len(task)) % 2 == 0)
    fields = HEADS[task][1]
    x = torch.randn(2, kwargs.get("num_channels", 3), h, w)
    assert_matches_hf_calls(ours, hf, x, fields, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_bool_masked_pos(case, tmp_path):
    name, kwargs, (h, w) = case
    hf = _hf_model("features", kwargs)
    ours = load_like_hf(hf, tmp_path)
    assert_mask_token_used(ours, hf, torch.randn(3, 3, h, w), kwargs["patch_size"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("task", ["features", "classification"])
@pytest.mark.parametrize("head_mask_shape", [(4,), (2, 4)], ids=["per-head", "per-layer"])
def test_head_mask(task, head_mask_shape, tmp_path):
    # HF 4.50 applies the head mask multiplicatively only in its eager attention (SDPA would add it to the scores)
    hf = _hf_model(task, dict(SMALL, num_labels=2), attn_implementation="eager")
    ours = load_like_hf(hf, tmp_path)
    x = torch.randn(2, 3, 35, 28)
    head_mask = (torch.rand(head_mask_shape) > 0.5).float()
    head_mask.view(-1)[0] = 0.5
    with torch.no_grad():
        for attn in (False, True):
            a, e = (
                ours(x, head_mask=head_mask, output_attentions=attn),
                hf(x, head_mask=head_mask, output_attentions=attn),
            )
            fields = HEADS[task][1][:1] + (("attentions",) if attn else ())
            assert_outputs_close(a, e, fields, atol=ATOL, rtol=RTOL)


def test_module_tree_matches_hf():
    """Same module names and class names as HF (dropout and HF's activation classes aside: no state)."""
    for task in HEADS:
        for swiglu in (False, True):
            hf = _hf_model(task, dict(SMALL, use_swiglu_ffn=swiglu, drop_path_rate=0.1))
            ours = dinov2.build(hf.config.to_dict(), task)
            assert_same_module_tree(ours, hf, skip=("dropout", "activation"))
            assert type(ours).base_model_prefix == type(hf).base_model_prefix == "dinov2"


def test_config_from_dict_follows_hf():
    hf = transformers.Dinov2Config(id2label={0: "a", 1: "b", 2: "c"}, num_hidden_layers=4, out_indices=[1, -1], foo=3)
    cfg = dinov2.Dinov2Config.from_dict(hf.to_dict())
    assert cfg.num_labels == 3 and cfg.num_hidden_layers == 4 and cfg.model_type == "dinov2"
    assert cfg.out_features == hf.out_features == ["stage1", "stage4"] and cfg.stage_names == hf.stage_names
    default = dinov2.Dinov2Config()
    for field in ("hidden_size", "patch_size", "image_size", "layer_norm_eps", "layerscale_value", "mlp_ratio"):
        assert getattr(default, field) == getattr(transformers.Dinov2Config(), field), field
    assert default.out_features == ["stage12"]
    with pytest.raises(ValueError, match="out_features"):
        dinov2.Dinov2Config(out_features=["stage13"])


@pytest.mark.parametrize("task", list(HEADS))
def test_bad_pixel_values(task):
    model = dinov2.build({"model_type": "dinov2", **SMALL}, task)
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[1, 4, 28, 28\]"):
        model(torch.randn(1, 4, 28, 28))
    with pytest.raises(ValueError, match=r"got shape \[3, 28, 28\]"):
        model(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="pixel_values"):
        model()
