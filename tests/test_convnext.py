"""Eager ConvNeXt / ConvNeXt V2 vs HF transformers 4.50: same keys, same module classes, same outputs (fp32, CPU).

Each case builds a small HF model with random weights (all parameters, so GRN and layer scale are not trivial), saves
it with ``save_pretrained`` (safetensors, .bin or sharded), loads it with ``fastvit.load(dir, fused=False)`` and
compares every output field, with ``output_hidden_states`` and with ``return_dict=False``.
"""

from __future__ import annotations

import pytest
import torch

import fastvit
from fastvit.models import convnext
from tests.hf_utils import assert_outputs_close, assert_same_module_tree, assert_tuples_close, perturb_, save_hf

transformers = pytest.importorskip("transformers")

ATOL, RTOL = 1e-5, 1e-5  # fp32, same op order as HF: differences are reduction-order noise

# (id, v2, config kwargs, (H, W))
CASES = [
    ("v1-basic", False, dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=5), (32, 32)),
    (  # no layer scale, odd non-square input, tanh gelu
        "v1-nols-odd",
        False,
        dict(hidden_sizes=[8, 12, 16, 20], depths=[2, 1, 1, 1], layer_scale_init_value=0.0, hidden_act="gelu_new"),
        (37, 53),
    ),
    (  # 3 stages, patch 2, eps and drop-path rate (identity at eval) from the config
        "v1-3stage-p2",
        False,
        dict(
            num_stages=3,
            hidden_sizes=[8, 16, 24],
            depths=[1, 2, 1],
            patch_size=2,
            layer_norm_eps=1e-5,
            drop_path_rate=0.3,
            num_labels=3,
        ),
        (29, 41),
    ),
    ("v2-basic", True, dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=4), (45, 61)),
    (
        "v2-2ch-nohead",
        True,
        dict(num_channels=2, hidden_sizes=[12, 16, 20, 24], depths=[1, 1, 1, 2], num_labels=0),
        (33, 35),
    ),
]
HEADS = {  # task -> (HF class suffix, output fields)
    "features": ("Model", ("last_hidden_state", "pooler_output", "hidden_states")),
    "classification": ("ForImageClassification", ("logits", "hidden_states")),
    "backbone": ("Backbone", ("feature_maps", "hidden_states")),
}
BACKBONE_OUT = [None, ["stem", "stage2", "stage4"], ["stage1", "stage3"]]


def _hf_model(v2: bool, task: str, kwargs: dict, out_features=None):
    prefix = "ConvNextV2" if v2 else "ConvNext"
    kwargs = dict(kwargs)
    if not v2:
        kwargs.setdefault("layer_scale_init_value", 0.5)
    if task == "backbone" and out_features is not None:
        stages = len(kwargs.get("depths", [3, 3, 9, 3]))
        kwargs["out_features"] = [f for f in out_features if f == "stem" or int(f[5:]) <= stages]
    config = getattr(transformers, prefix + "Config")(**kwargs)
    return perturb_(getattr(transformers, prefix + HEADS[task][0])(config).eval(), jump=0.5)


def _compare(ours, theirs, x: torch.Tensor, fields: tuple[str, ...]) -> None:
    with torch.no_grad():
        a, e = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
        assert_outputs_close(a, e, fields, atol=ATOL, rtol=RTOL)
        a_t, e_t = ours(pixel_values=x, return_dict=False), theirs(pixel_values=x, return_dict=False)
    assert_tuples_close(a_t, e_t, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("task", list(HEADS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_hf(case, task, tmp_path):
    name, v2, kwargs, (h, w) = case
    out_features = BACKBONE_OUT[len(name) % len(BACKBONE_OUT)] if task == "backbone" else None
    fmt = ["safetensors", "bin", "sharded"][(len(name) + len(task)) % 3]
    hf = _hf_model(v2, task, kwargs, out_features)
    save_hf(hf, tmp_path, safetensors=fmt != "bin", max_shard_size="20KB" if fmt == "sharded" else None)
    ours = fastvit.load(tmp_path, fused=False)
    assert type(ours).__name__ == type(hf).__name__
    assert list(ours.state_dict()) == list(hf.state_dict())
    assert not ours.training
    x = torch.randn(2, kwargs.get("num_channels", 3), h, w)
    _compare(ours, hf, x, HEADS[task][1])


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_module_tree_matches_hf(v2):
    """Same module names and class names as HF (activations aside: HF uses its own GELUActivation class)."""
    hf = _hf_model(v2, "classification", dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], drop_path_rate=0.1))
    ours = convnext.build(hf.config.to_dict(), "classification")
    assert_same_module_tree(ours, hf, skip=(".act",))
    assert type(ours).base_model_prefix == type(hf).base_model_prefix


def test_backbone_out_indices_and_defaults():
    cfg = convnext.ConvNextConfig(out_indices=[0, 2])
    assert cfg.out_features == ["stem", "stage2"] and cfg.stage_names[-1] == "stage4"
    assert convnext.ConvNextConfig().out_features == ["stage4"]
    with pytest.raises(ValueError, match="out_features"):
        convnext.ConvNextConfig(out_features=["stage9"])
    with pytest.raises(ValueError):
        convnext.ConvNextConfig(out_features=["stage2"], out_indices=[1])


def test_config_from_dict_follows_hf():
    hf = transformers.ConvNextV2Config(id2label={0: "a", 1: "b", 2: "c"}, depths=[1, 1, 1, 1], foo=3)
    cfg = convnext.ConvNextV2Config.from_dict(hf.to_dict())
    assert cfg.num_labels == 3 and cfg.depths == [1, 1, 1, 1] and cfg.use_grn
    assert cfg.layer_norm_eps == hf.layer_norm_eps and cfg.out_features == hf.out_features


@pytest.mark.parametrize("task", list(HEADS))
def test_bad_pixel_values(task):
    model = convnext.build({"model_type": "convnext", "hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1]}, task)
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[1, 4, 32, 32\]"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \[3, 32, 32\]"):
        model(torch.randn(3, 32, 32))
