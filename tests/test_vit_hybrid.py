"""Eager ViT-Hybrid (BiT backbone + ViT encoder) vs HF transformers 4.50: same keys, same outputs (fp32, CPU).

Each case builds a small HF model with every parameter randomized, saves it (safetensors or .bin), loads it with
``fastvit.load(dir, fused=False)`` and compares every output field with ``output_hidden_states`` (and attentions),
and the tuple form. Position-embedding interpolation is checked against a hand-computed reference (HF 4.50's own
interpolation is wrong for this model), the full-size registry entry against HF's module tree on the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastvit
from fastvit import registry
from fastvit.models import build_model, vit_hybrid
from tests.hf_utils import assert_close, assert_outputs_close, assert_tuples_close, perturb_, save_hf

transformers = pytest.importorskip("transformers")

ATOL, RTOL = 1e-5, 1e-4  # fp32; differences are reduction-order noise (SDPA vs matmul-softmax)

BIT_SAME = dict(  # google/vit-hybrid-base-bit-384's backbone topology, narrow
    global_padding="same",
    layer_type="bottleneck",
    embedding_dynamic_padding=True,
    embedding_size=16,
    num_groups=4,
)
# (id, backbone kwargs, ViT kwargs, image (H, W))
CASES = [
    (  # the published topology at a small width, non-square image
        "bottleneck-same",
        dict(BIT_SAME, depths=[1, 1, 1], hidden_sizes=[32, 64, 128], out_features=["stage3"]),
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=5),
        (48, 64),
    ),
    (  # pre-activation BiT, static padding, no dynamic stem pool, patch 2, no qkv bias, gelu_new, eps
        "preact-p2",
        dict(layer_type="preactivation", depths=[1, 2], hidden_sizes=[16, 32], embedding_size=8, num_groups=2),
        dict(
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=40,
            patch_size=2,
            qkv_bias=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-6,
            num_labels=3,
        ),
        (43, 43),
    ),
    (  # features from an inner stage, gelu BiT, output_stride (dilation), 2 channels, no classifier
        "inner-stage-dilated",
        dict(
            BIT_SAME,
            depths=[1, 1, 2],
            hidden_sizes=[16, 32, 48],
            out_features=["stage2"],
            hidden_act="gelu",
            output_stride=8,
            num_channels=2,
        ),
        dict(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_channels=2,
            num_labels=0,
        ),
        (35, 35),
    ),
]
HEADS = {"features": ("ViTHybridModel", ("last_hidden_state", "pooler_output", "hidden_states", "attentions")),
         "classification": ("ViTHybridForImageClassification", ("logits", "hidden_states", "attentions"))}  # fmt: skip


def _featmap(backbone: dict, image: tuple[int, int]) -> list[int]:
    """The shape of the backbone's last feature map for ``image`` (what config.backbone_featmap_shape must say)."""
    bb = transformers.BitBackbone(transformers.BitConfig(**backbone)).eval()
    with torch.no_grad():
        return list(bb(torch.zeros(1, backbone.get("num_channels", 3), *image)).feature_maps[-1].shape)


def _hf_model(task: str, backbone: dict, vit: dict, image: tuple[int, int], featmap: list[int] | None = None):
    config = transformers.ViTHybridConfig(
        backbone_config=backbone,
        image_size=list(image),
        backbone_featmap_shape=featmap or _featmap(backbone, image),
        attn_implementation="eager",  # so HF returns attention probabilities
        **vit,
    )
    model = getattr(transformers, HEADS[task][0])(config).eval()
    perturb_(model, jump=0.5)
    return model


def _compare(ours, theirs, x: torch.Tensor, fields: tuple[str, ...], **kwargs) -> None:
    with torch.no_grad():
        a = ours(x, output_hidden_states=True, output_attentions=True, **kwargs)
        e = theirs(x, output_hidden_states=True, output_attentions=True, **kwargs)
        assert_outputs_close(a, e, fields, atol=ATOL, rtol=RTOL)
        a_t, e_t = (
            ours(pixel_values=x, return_dict=False, **kwargs),
            theirs(pixel_values=x, return_dict=False, **kwargs),
        )
    assert_tuples_close(a_t, e_t, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("task", list(HEADS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_hf(case, task, tmp_path):
    name, backbone, vit, image = case
    theirs = _hf_model(task, backbone, vit, image)
    save_hf(theirs, tmp_path, safetensors=name != "preact-p2")  # one case from pytorch_model.bin
    ours = fastvit.load(tmp_path, fused=False, task=task)
    assert type(ours).__name__ == HEADS[task][0]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, vit.get("num_channels", 3), *image)
    _compare(ours, theirs, x, HEADS[task][1])
    head_mask = torch.ones(vit["num_hidden_layers"], vit["num_attention_heads"])
    head_mask[0, 0] = 0.0  # drop head 0 of layer 0
    _compare(ours, theirs, x, HEADS[task][1][:1], head_mask=head_mask)


def test_configured_size_and_task_inference(tmp_path):
    """The published topology (BiT-R50 stem, 3 stages, SAME padding) at 384x384 -> 24x24 tokens; task from config."""
    backbone = dict(BIT_SAME, depths=[3, 4, 9], hidden_sizes=[32, 64, 128], out_features=["stage3"])
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32, num_labels=7)
    theirs = _hf_model("classification", backbone, vit, (384, 384), featmap=[1, 128, 24, 24])
    save_hf(theirs, tmp_path)
    ours = fastvit.load(tmp_path, fused=False)
    assert isinstance(ours, vit_hybrid.ViTHybridForImageClassification)
    assert ours.vit.embeddings.position_embeddings.shape == (1, 1 + 24 * 24, 32)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        a, e = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
    assert_outputs_close(a, e, ("logits", "hidden_states"), atol=ATOL, rtol=RTOL)
    with pytest.warns(UserWarning) as record:  # as HF: the classifier is dropped, the pooler newly initialized
        features = fastvit.load(tmp_path, fused=False, task="features")
    messages = " ".join(str(w.message) for w in record)
    assert "classifier.weight" in messages and "newly initialized pooler.dense" in messages, messages
    assert isinstance(features, vit_hybrid.ViTHybridModel)
    with torch.no_grad():
        expected = theirs.vit.layernorm(e.hidden_states[-1])  # the base model's output inside HF's classifier
        assert_close(features(x).last_hidden_state, expected, atol=ATOL, rtol=RTOL, name="last_hidden_state")


@pytest.mark.parametrize("size", [(64, 80), (40, 40)])
def test_interpolate_pos_encoding_uses_backbone_grid(size):
    """Other image sizes: position embeddings resized (bicubic) to the backbone's token grid. Reference: an HF model
    built for that size whose position embeddings are the hand-interpolated ones, run without interpolation."""
    backbone = dict(BIT_SAME, depths=[1, 1, 1], hidden_sizes=[16, 32, 64], out_features=["stage3"])
    vit = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    base = _hf_model("features", backbone, vit, (48, 48))  # 3x3 grid
    ours = build_model(base.config.to_dict(), "features").eval()
    ours.load_state_dict(base.state_dict())

    grid = _featmap(backbone, size)[-2:]  # stride 16 with SAME padding: ceil(size / 16)
    pos = base.embeddings.position_embeddings.detach()  # [1, 1 + 9, D]
    patch = pos[:, 1:].reshape(1, 3, 3, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    reference = _hf_model("features", backbone, vit, size, featmap=[1, 64, *grid])
    state = dict(base.state_dict(), **{"embeddings.position_embeddings": torch.cat([pos[:, :1], patch], dim=1)})
    reference.load_state_dict(state)

    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a = ours(x, interpolate_pos_encoding=True, output_hidden_states=True)
        e = reference(x, output_hidden_states=True)
    assert a.last_hidden_state.shape[1] == 1 + grid[0] * grid[1]
    assert_outputs_close(a, e, ("last_hidden_state", "pooler_output", "hidden_states"), atol=ATOL, rtol=RTOL)
    with torch.no_grad():  # at the configured size, interpolation is the identity
        x0 = torch.randn(1, 3, 48, 48)
        assert_close(ours(x0, interpolate_pos_encoding=True).last_hidden_state, ours(x0).last_hidden_state, atol=0)


def test_bad_inputs():
    backbone = dict(BIT_SAME, depths=[1, 1, 1], hidden_sizes=[16, 32, 64])
    config = dict(
        model_type="vit-hybrid",
        backbone_config=backbone,
        image_size=32,
        backbone_featmap_shape=[1, 64, 2, 2],
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    model = build_model(config, "features").eval()
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[1, 4, 32, 32\]"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="backbone"):
        build_model(dict(config, backbone_config=dict(backbone, model_type="resnet")), "features")
    with pytest.raises(ValueError, match="task"):
        build_model(config, "backbone")


@pytest.mark.parametrize("task", list(HEADS))
def test_registry_entry_matches_hf_tree(task):
    """The full-size registry config builds; keys, shapes and module classes equal HF's (both on the meta device)."""
    info = registry.get_model_info("vit-hybrid-base-bit-384")
    with torch.device("meta"):
        ours = build_model(info.config, task)
        theirs = getattr(transformers, HEADS[task][0])(transformers.ViTHybridConfig(**info.config))
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    e = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == e
    ours_cls = {n: type(m).__name__ for n, m in ours.named_modules()}
    for n, m in theirs.named_modules():
        if type(m).__module__.startswith("transformers.models") and n in ours_cls:
            assert ours_cls[n] == type(m).__name__.replace("Sdpa", ""), n
