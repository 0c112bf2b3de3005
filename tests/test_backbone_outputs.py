"""Backbone outputs chosen at load time: ``fastvit.load(..., task="backbone", out_features=... | out_indices=...)``
vs HF 4.50's ``<Family>Backbone.from_pretrained(dir, out_features=... | out_indices=...)`` on the same checkpoint.

Every backbone family (ConvNeXt, ConvNeXt V2, DINOv2, DINOv2 with registers), from a backbone checkpoint saved with
other outputs and from a classifier checkpoint, several out_features / out_indices combinations; feature maps in
HF's layout (contiguous NCHW) on the eager and the fused path (torch fallbacks and the Triton interpreter).
"""

from __future__ import annotations

import copy
import warnings

import fastvit_kernels
import pytest
import torch

import fastvit
from tests.hf_utils import assert_close, save_hf

transformers = pytest.importorskip("transformers")
T = transformers

ATOL, RTOL = 2e-5, 1e-5

CNX = dict(num_channels=3, hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1], num_labels=3)
DINO = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=7, num_labels=3)
# id -> (config class, config, HF class prefix, input (H, W))
FAMILIES = {
    "convnext": ("ConvNextConfig", dict(CNX, layer_scale_init_value=0.5), "ConvNext", (32, 40)),
    "convnextv2": ("ConvNextV2Config", CNX, "ConvNextV2", (40, 32)),
    "dinov2": ("Dinov2Config", DINO, "Dinov2", (28, 35)),
    "dinov2-registers": ("Dinov2WithRegistersConfig", dict(DINO, num_register_tokens=2), "Dinov2WithRegisters",
                         (35, 28)),
}  # fmt: skip
# (out_features, out_indices): one list, the other, both naming the same stages
CHOICES = [
    (["stem"], None),
    (["stage1", "stage3"], None),
    (None, [0, -1]),
    (None, [2]),
    (["stage2", "stage3"], [2, 3]),
]


def _save(family: str, head: str, tmp_path, **config_kwargs):
    cfg_cls, cfg, prefix, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(T, prefix + head)(getattr(T, cfg_cls)(**copy.deepcopy(cfg), **config_kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_hf(model, tmp_path)


def _hf_backbone(family: str, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(T, FAMILIES[family][2] + "Backbone").from_pretrained(path, **kwargs).eval()


def _x(family: str) -> torch.Tensor:
    return torch.randn(2, 3, *FAMILIES[family][3])


def _kwargs(out_features, out_indices) -> dict:
    return {k: v for k, v in (("out_features", out_features), ("out_indices", out_indices)) if v is not None}


def _compare(ours, hf, x: torch.Tensor) -> None:
    assert ours.out_features == hf.out_features and ours.out_indices == list(hf.out_indices)
    with torch.no_grad():
        got, expected = ours(x).feature_maps, hf(x).feature_maps
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected, strict=True)):
        assert a.is_contiguous(), f"feature map {i} is not contiguous NCHW (strides {a.stride()})"
        assert_close(a, e, atol=ATOL, rtol=RTOL, name=f"feature_maps[{i}]")


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_backbone_checkpoint(family, choice, tmp_path):
    """A backbone saved with the default output (last stage), loaded with other outputs."""
    path = _save(family, "Backbone", tmp_path)
    kwargs = _kwargs(*choice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvNeXt: stage norms of the new outputs initialized (HF warns too)
        ours = fastvit.load(path, task="backbone", fused=False, **kwargs)
    _compare(ours, _hf_backbone(family, path, **kwargs), _x(family))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_classifier_checkpoint(family, tmp_path):
    path = _save(family, "ForImageClassification", tmp_path)
    kwargs = {"out_indices": [1, 2]}
    with pytest.warns(UserWarning):
        ours = fastvit.load(path, task="backbone", fused=False, **kwargs)
    _compare(ours, _hf_backbone(family, path, **kwargs), _x(family))


def test_convnext_stage_norms_follow_the_outputs(tmp_path):
    """Kept stages keep their trained norms; new ones are initialized (ones/zeros, as HF) with a warning."""
    path = _save("convnextv2", "Backbone", tmp_path, out_features=["stage2", "stage4"])
    with pytest.warns(UserWarning, match=r"other backbone outputs: .*newly initialized hidden_states_norms\.stage1"):
        ours = fastvit.load(path, task="backbone", fused=False, out_features=["stage1", "stage2"])
    assert torch.equal(ours.hidden_states_norms.stage1.weight, torch.ones(16))
    assert not torch.equal(ours.hidden_states_norms.stage2.weight, torch.ones(24))
    _compare(ours, _hf_backbone("convnextv2", path, out_features=["stage1", "stage2"]), _x("convnextv2"))


@pytest.mark.parametrize("backend", ["torch", "auto"], ids=["fallback", "triton"])
@pytest.mark.parametrize("family", ["convnextv2", "dinov2-registers"])
def test_fused_backbone(family, backend, tmp_path):
    """The fused path returns HF's layout (contiguous NCHW; the fused ConvNeXt blocks run channels_last inside)."""
    path = _save(family, "Backbone", tmp_path)
    kwargs = {"out_features": ["stem", "stage1", "stage3"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvNeXt: the new outputs' stage norms initialized
        ours = fastvit.load(path, task="backbone", fused=True, **kwargs)
        eager = fastvit.load(path, task="backbone", fused=False, **kwargs)
    x = _x(family)[:1] if backend == "auto" else _x(family)  # the interpreter is slow: one image
    with torch.no_grad(), fastvit_kernels.backend(backend):
        out = ours(x, output_hidden_states=True)
    got, hidden = out.feature_maps, out.hidden_states
    with torch.no_grad():
        expected = eager(x).feature_maps
    if family.startswith("convnext"):  # the blocks did run channels_last
        assert hidden[-1].is_contiguous(memory_format=torch.channels_last)
    for i, (a, e) in enumerate(zip(got, expected, strict=True)):
        assert a.is_contiguous(), f"feature map {i}: strides {a.stride()}"
        assert_close(a, e, atol=1e-4, rtol=1e-4, name=f"fused feature_maps[{i}]")


def test_registry_name_random_weights():
    model = fastvit.load("convnextv2-atto", pretrained=False, fused=False, task="backbone", out_indices=[1, 3])
    assert model.out_features == ["stage1", "stage3"]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 40, 16, 16), (1, 160, 4, 4)]


def test_bad_choices(tmp_path):
    path = _save("dinov2", "Backbone", tmp_path)
    with pytest.raises(ValueError, match="task='backbone'"):
        fastvit.load(path, task="features", fused=False, out_features=["stage1"])
    with pytest.raises(ValueError, match=r"stage_names \['stem', 'stage1', 'stage2', 'stage3'\]"):
        fastvit.load(path, task="backbone", fused=False, out_features=["stage9"])
    with pytest.raises(ValueError, match="name different stages"):
        fastvit.load(path, task="backbone", fused=False, out_features=["stage1"], out_indices=[2])
    with pytest.raises(ValueError, match="out_indices"):
        fastvit.load(path, task="backbone", fused=False, out_indices=[2, 1])
