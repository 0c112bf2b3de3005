"""Registry: names for every public checkpoint of the five families, configs that HF 4.50 accepts, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fastvit
from fastvit import registry
from fastvit.models import build_model, infer_task
from tests.hf_utils import params_on_meta

transformers = pytest.importorskip("transformers")
from transformers.modeling_utils import no_init_weights  # noqa: E402

EXPECTED = {  # family prefix -> number of published checkpoints
    "convnext-*": 15,
    "convnextv2-*": 18,
    "dinov2-[sblg]*": 8,
    "dinov2-with-registers-*": 8,
    "vit-hybrid-*": 1,
    "altclip": 1,
}
# parameter counts (millions, 1k head) published with the papers / timm: an independent check of depths and widths
PUBLISHED_MPARAMS = {
    "convnext-tiny-224": 28.59,
    "convnext-small-224": 50.22,
    "convnext-base-224": 88.59,
    "convnext-large-224": 197.77,
    "convnext-xlarge-224-22k-1k": 350.20,
    "convnextv2-atto-1k-224": 3.71,
    "convnextv2-femto-1k-224": 5.23,
    "convnextv2-pico-1k-224": 9.07,
    "convnextv2-nano-1k-224": 15.62,
    "convnextv2-tiny-1k-224": 28.64,
    "convnextv2-base-1k-224": 88.72,
    "convnextv2-large-1k-224": 197.96,
    "convnextv2-huge-1k-224": 660.29,
}


def _hf_config(config: dict):
    config = dict(config)
    model_type = config.pop("model_type")
    if model_type == "vit-hybrid":  # registered under "vit_hybrid" in the auto mapping
        return transformers.ViTHybridConfig(**config)
    return transformers.AutoConfig.for_model(model_type, **config)


def test_names_cover_every_family():
    names = fastvit.list_models()
    assert names == sorted(names) and len(names) == len(set(names)) == sum(EXPECTED.values())
    for pattern, count in EXPECTED.items():
        assert len(fastvit.list_models(pattern)) == count, pattern
    assert fastvit.list_models("convnextv2-*-22k-384") == [
        f"convnextv2-{s}-22k-384" for s in ("base", "huge", "large", "nano", "tiny")
    ]
    assert fastvit.list_models("no-such-*") == []


@pytest.mark.parametrize("name", fastvit.list_models())
def test_entry_is_consistent(name):
    info = fastvit.get_model_info(name)
    assert info.name == name and info.repo_id.split("/")[1].lower() == name
    assert info.provenance in (registry.VERIFIED, registry.CONVERSION_SCRIPT, registry.HF_DEFAULTS, registry.INFERRED)
    assert info.task == infer_task(info.config)
    assert (
        info.config["architectures"][0] in ("AltCLIPModel",)
        or info.config.get("num_labels", 0) > 0
        or (info.task == "features")
    )
    hf = _hf_config(info.config)  # HF 4.50 accepts the config
    for key in ("hidden_sizes", "depths", "hidden_size", "num_hidden_layers", "image_size", "patch_size"):
        if key in info.config:
            assert getattr(hf, key) == info.config[key]


@pytest.mark.parametrize("name", fastvit.list_models("convnext*"))
def test_convnext_entries_build_like_hf(name):
    """Our model for each ConvNeXt entry has HF's parameter names and shapes (both on the meta device)."""
    info = fastvit.get_model_info(name)
    with torch.device("meta"):
        ours = build_model(info.config)
    with params_on_meta(), no_init_weights():  # HF's encoder needs real tensors for its drop-path schedule
        theirs = getattr(transformers, info.config["architectures"][0])(_hf_config(info.config))
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in theirs.named_parameters()}
    if name in PUBLISHED_MPARAMS:
        mparams = sum(p.numel() for p in ours.parameters()) / 1e6
        assert abs(mparams - PUBLISHED_MPARAMS[name]) < 0.01, f"{name}: {mparams:.2f}M"


def test_aliases_and_repo_ids():
    assert fastvit.get_model_info(registry.DEFAULT_MODEL).repo_id == "facebook/convnext-tiny-224"
    assert fastvit.get_model_info("convnextv2-huge").name == "convnextv2-huge-1k-224"
    assert fastvit.get_model_info("convnext-xlarge").name == "convnext-xlarge-224-22k-1k"
    assert fastvit.get_model_info("BAAI/AltCLIP").name == "altclip"
    assert fastvit.get_model_info("Facebook/DINOv2-Small").name == "dinov2-small"
    for alias, target in registry.aliases().items():
        assert target in fastvit.list_models() and alias not in fastvit.list_models()


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match=r"unknown model name 'convnxt-tiny'.*Did you mean: .*convnext-tiny"):
        fastvit.get_model_info("convnxt-tiny")
    with pytest.raises(ValueError, match="list_models") as info:
        fastvit.get_model_info("zzzz")
    assert "Did you mean" not in str(info.value)


def test_info_is_immutable_and_copied():
    info = fastvit.get_model_info("dinov2-small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"
    info.config["hidden_size"] = 1
    assert fastvit.get_model_info("dinov2-small").config["hidden_size"] == 384
