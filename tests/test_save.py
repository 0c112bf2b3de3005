"""save_pretrained: fastvit -> HF transformers 4.50 and HF -> fastvit round trips with identical outputs."""

from __future__ import annotations

import json

import pytest
import torch

import fastvit
from fastvit.preprocess import ImageProcessor
from fastvit.saving import config_dict
from tests.image_utils import TINY, tiny_model

transformers = pytest.importorskip("transformers")

HF_CLASSES = {  # HF 4.50's AutoConfig cannot read model_type "vit-hybrid" (its mapping key is "vit_hybrid")
    "convnext": transformers.AutoModelForImageClassification,
    "convnextv2": transformers.AutoModel,
    "dinov2": transformers.AutoModel,
    "vit-hybrid": transformers.ViTHybridForImageClassification,
    "altclip": transformers.AutoModel,
}


def _inputs(family: str) -> dict:
    config = TINY[family]
    size = config.get("image_size") or config["vision_config"]["image_size"]
    out = {"pixel_values": torch.randn(2, 3, size, size)}
    if family == "altclip":
        out["input_ids"] = torch.tensor([[0, 5, 6, 7, 2], [0, 9, 2, 1, 1]])
        out["attention_mask"] = (out["input_ids"] != 1).long()
    return out


def _main(output) -> torch.Tensor:
    return output.logits_per_image if hasattr(output, "logits_per_image") else output[0]


@pytest.mark.parametrize("family", list(TINY))
def test_fastvit_to_hf_and_back(family, tmp_path):
    model = tiny_model(family)
    directory = model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == TINY[family]["model_type"]
    assert config["architectures"] == [type(model).__name__] and config["torch_dtype"] == "float32"

    inputs = _inputs(family)
    with torch.no_grad():
        expected = _main(model(**inputs))
        hf = HF_CLASSES[family].from_pretrained(directory).eval()
        assert type(hf).__name__ == type(model).__name__
        theirs = _main(hf(**inputs))
        reloaded = _main(fastvit.load(directory, fused=False)(**inputs))
    assert torch.equal(reloaded, expected)
    err = (theirs - expected).abs().max().item()
    assert err <= 1e-5, f"{family}: HF from our save differs by {err:.3g}"
    assert transformers.AutoImageProcessor.from_pretrained(directory) is not None


@pytest.mark.parametrize("family", ["convnext", "dinov2", "altclip"])
def test_hf_to_fastvit_to_hf(family, tmp_path):
    config = transformers.AutoConfig.for_model(**TINY[family])
    hf = getattr(transformers, TINY[family]["architectures"][0])(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = fastvit.load(tmp_path / "hf", fused=False)
    ours.save_pretrained(tmp_path / "ours")
    back = HF_CLASSES[family].from_pretrained(tmp_path / "ours").eval()
    inputs = _inputs(family)
    with torch.no_grad():
        a, b, c = _main(hf(**inputs)), _main(ours(**inputs)), _main(back(**inputs))
    assert torch.equal(a, c), "HF -> fastvit -> HF changed the weights"
    assert (a - b).abs().max().item() <= 1e-5
    _assert_config_kept(hf.config.to_dict(), back.config.to_dict())


_RUNTIME_KEYS = {"_name_or_path", "transformers_version", "_attn_implementation_autoset", "torch_dtype"}


def _assert_config_kept(before: dict, after: dict, where: str = "config") -> None:
    """Every field HF wrote is read back by HF with the same value (nested configs too)."""
    for key, value in before.items():
        if key in _RUNTIME_KEYS:
            continue
        assert key in after, f"{where}.{key} lost"
        if isinstance(value, dict) and isinstance(after[key], dict):
            _assert_config_kept(value, after[key], f"{where}.{key}")
        else:
            assert after[key] == value, f"{where}.{key}: {value!r} -> {after[key]!r}"


def test_sharded_save_loads_both_ways(tmp_path):
    model = tiny_model("dinov2")
    directory = model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (directory / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in model.state_dict().values())
    x = _inputs("dinov2")
    with torch.no_grad():
        expected = model(**x).last_hidden_state
        assert torch.equal(fastvit.load(directory, fused=False)(**x).last_hidden_state, expected)
        hf = transformers.AutoModel.from_pretrained(directory).eval()
        assert (hf(**x).last_hidden_state - expected).abs().max().item() <= 1e-5
    model.save_pretrained(directory)  # re-saving unsharded removes the old shards
    assert sorted(p.name for p in directory.glob("model*")) == ["model.safetensors"]
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(directory, max_shard_size="lots")


def test_config_keeps_every_field(tmp_path):
    model = tiny_model("convnext", id2label={0: "zero", 1: "one"})
    model.save_pretrained(tmp_path / "a")
    source = json.loads((tmp_path / "a" / "config.json").read_text())
    source["custom_field"] = {"kept": True}
    (tmp_path / "a" / "config.json").write_text(json.dumps(source))
    loaded = fastvit.load(tmp_path / "a", fused=False)
    written = config_dict(loaded)
    assert written["custom_field"] == {"kept": True}  # fields fastvit does not model survive a round trip
    assert written["id2label"] == {"0": "zero", "1": "one"} and written["label2id"] == {"zero": 0, "one": 1}
    import dataclasses

    for f in dataclasses.fields(loaded.config):
        if f.init and f.name != "id2label":
            assert f.name in written, f.name
    hf = transformers.AutoConfig.from_pretrained(tmp_path / "a")
    assert hf.depths == TINY["convnext"]["depths"] and hf.id2label == {0: "zero", 1: "one"}


def test_fused_bf16_and_processor(tmp_path):
    model = fastvit.load(tiny_model("dinov2").save_pretrained(tmp_path / "src"), dtype=torch.bfloat16)  # fused
    custom = ImageProcessor(kind="bit", size={"shortest_edge": 40}, crop_size=32)
    fastvit.save_pretrained(model, tmp_path / "out", processor=custom)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    again = fastvit.load(tmp_path / "out", fused=False, dtype=torch.bfloat16)
    assert set(again.state_dict()) == set(model.state_dict())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert fastvit.processor_for(again) == custom


def test_cli_save(tmp_path, capsys):
    from fastvit.cli import main

    assert main(["save", "convnextv2-atto", str(tmp_path), "--random"]) == 0
    assert "saved" in capsys.readouterr().out
    model = fastvit.load(tmp_path, fused=False)
    assert type(model).__name__ == "ConvNextV2ForImageClassification"
    assert fastvit.processor_for(model).output_size == (224, 224)
