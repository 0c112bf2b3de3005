"""fastvit.load: checkpoint formats, bad inputs with clear errors, HF-cache lookup, task/prefix rules, dtype/device."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastvit
from fastvit import hub
from fastvit.loading import CheckpointError
from tests.hf_utils import assert_outputs_close, save_hf

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=3, layer_scale_init_value=0.5)
ATOL = 1e-5


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    """A saved HF ConvNextForImageClassification (safetensors)."""
    model = _randomize(transformers.ConvNextForImageClassification(transformers.ConvNextConfig(**TINY)))
    return save_hf(model, tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved HF ConvNextModel (no head)."""
    model = _randomize(transformers.ConvNextModel(transformers.ConvNextConfig(**TINY)))
    return save_hf(model, tmp_path_factory.mktemp("base"))


@pytest.fixture()
def ckpt(cls_dir, tmp_path) -> Path:
    """A private copy of the classification checkpoint that a test may damage."""
    return Path(shutil.copytree(cls_dir, tmp_path / "ckpt"))


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """An empty HF cache and no network."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _x(n=2, c=3, h=35, w=42):
    return torch.randn(n, c, h, w)


# ---------------------------------------------------------------------------------------------------------- bad input


def test_unknown_name_suggests(offline):
    with pytest.raises(ValueError, match=r"unknown model name 'convnext-tiny-22'.*Did you mean: .*convnext-tiny-224"):
        fastvit.load("convnext-tiny-22", pretrained=False)
    with pytest.raises(ValueError, match="Did you mean: .*dinov2-small"):
        fastvit.load("dinov2-smal", fused=False)


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        fastvit.load("./no/such/checkpoint")


def test_empty_dir(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        fastvit.load(tmp_path, fused=False)


def test_config_without_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors"):
        fastvit.load(ckpt, fused=False)


def test_bad_config_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot parse .*config.json"):
        fastvit.load(ckpt, fused=False)


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors.*truncated"):
        fastvit.load(ckpt, fused=False)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_bin(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match=r"cannot read .*pytorch_model\.bin"):
        fastvit.load(ckpt, fused=False)


def test_bin_with_code_is_refused(ckpt):
    """weights_only=True: a pickle that would run code is rejected, never executed."""
    (ckpt / "model.safetensors").unlink()
    torch.save({"x": types.SimpleNamespace(a=1)}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        fastvit.load(ckpt, fused=False)


def test_missing_shard(cls_dir, tmp_path):
    model = transformers.ConvNextForImageClassification.from_pretrained(cls_dir)
    save_hf(model, tmp_path, max_shard_size="10KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=f"shard .*{shards[-1].name}.* does not exist"):
        fastvit.load(tmp_path, fused=False)


def test_shape_mismatch_names_key_and_shapes(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["hidden_sizes"][-1] = 40
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*classifier\.weight: checkpoint \[3, 32\] vs model \[3, 40\]"
    ):
        fastvit.load(ckpt, fused=False)


def test_missing_and_unexpected_keys(ckpt):
    f = ckpt / "model.safetensors"
    state = load_file(f)
    del state["convnext.encoder.stages.1.layers.0.pwconv1.weight"]
    state["convnext.extra.weight"] = torch.zeros(2)
    save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        fastvit.load(ckpt, fused=False)
    msg = str(info.value)
    assert "missing keys: convnext.encoder.stages.1.layers.0.pwconv1.weight" in msg
    assert "unexpected keys: convnext.extra.weight" in msg


def test_wrong_channels_and_rank(cls_dir):
    model = fastvit.load(cls_dir, fused=False)
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[2, 1, 35, 42\]"):
        model(_x(c=1))
    with pytest.raises(ValueError, match="got shape"):
        model(torch.randn(3, 32, 32))


def test_bad_task_and_dtype(cls_dir):
    with pytest.raises(ValueError, match="unknown task"):
        fastvit.load(cls_dir, task="segmentation", fused=False)
    with pytest.raises(ValueError, match="not available for convnext"):
        fastvit.load(cls_dir, task="text", fused=False)
    with pytest.raises(ValueError, match="floating-point"):
        fastvit.load(cls_dir, dtype=torch.int32, fused=False)


# ---------------------------------------------------------------------------------------------- formats, dtype, task


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_device_eval(cls_dir, dtype):
    model = fastvit.load(cls_dir, fused=False, dtype=dtype, device="cpu")
    assert not model.training
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)
    hf = transformers.ConvNextForImageClassification.from_pretrained(cls_dir).eval().to(dtype)
    x = _x().to(dtype)
    with torch.no_grad():
        # same ops -> same numbers; float64: HF's channels-first LayerNorm rounds its statistics to fp32, fastvit's
        # keeps float64 (issue 16), so HF is off by its own fp32 rounding there
        atol = {torch.float32: ATOL, torch.float64: 1e-6, torch.bfloat16: 0.0}[dtype]
        assert_outputs_close(model(x), hf(x), ("logits",), atol=atol, rtol=atol)


def test_bin_and_task_inference(cls_dir, tmp_path):
    hf = transformers.ConvNextForImageClassification.from_pretrained(cls_dir).eval()
    save_hf(hf, tmp_path, safetensors=False)
    assert (tmp_path / "pytorch_model.bin").is_file()
    model = fastvit.load(tmp_path, fused=False)
    assert type(model).__name__ == "ConvNextForImageClassification"
    x = _x()
    with torch.no_grad():
        assert_outputs_close(model(x), hf(x), ("logits",), atol=ATOL, rtol=ATOL)


def test_sharded_bin(cls_dir, tmp_path):
    hf = transformers.ConvNextForImageClassification.from_pretrained(cls_dir).eval()
    save_hf(hf, tmp_path, safetensors=False, max_shard_size="10KB")
    assert (tmp_path / "pytorch_model.bin.index.json").is_file() and len(list(tmp_path.glob("pytorch_model-*"))) > 1
    model = fastvit.load(tmp_path, fused=False)
    x = _x()
    with torch.no_grad():
        assert_outputs_close(model(x), hf(x), ("logits",), atol=ATOL, rtol=ATOL)


def test_head_checkpoint_as_features(cls_dir):
    with pytest.warns(UserWarning, match=r"not used: classifier\.bias, classifier\.weight"):
        model = fastvit.load(cls_dir, task="features", fused=False)
    assert type(model).__name__ == "ConvNextModel"
    hf = transformers.ConvNextModel.from_pretrained(cls_dir).eval()
    x = _x()
    with torch.no_grad():
        assert_outputs_close(model(x), hf(x), ("last_hidden_state", "pooler_output"), atol=ATOL, rtol=ATOL)


def test_head_checkpoint_as_backbone_inits_norms_like_hf(cls_dir):
    with pytest.warns(UserWarning, match=r"newly initialized hidden_states_norms\.stage4\.bias"):
        model = fastvit.load(cls_dir, task="backbone", fused=False)
    hf = transformers.ConvNextBackbone.from_pretrained(cls_dir).eval()
    x = _x()
    with torch.no_grad():
        assert_outputs_close(model(x), hf(x), ("feature_maps",), atol=ATOL, rtol=ATOL)


def test_base_checkpoint(base_dir):
    model = fastvit.load(base_dir, fused=False)
    assert type(model).__name__ == "ConvNextModel"
    with pytest.raises(CheckpointError, match=r"missing keys: classifier\.bias, classifier\.weight.*task='features'"):
        fastvit.load(base_dir, task="classification", fused=False)


def test_base_checkpoint_into_head_model_adds_prefix(base_dir, tmp_path):
    """A base checkpoint whose head was saved separately: prefix added, every key found."""
    state = load_file(base_dir / "model.safetensors")
    state["classifier.weight"], state["classifier.bias"] = torch.randn(3, 32), torch.randn(3)
    shutil.copy(base_dir / "config.json", tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = fastvit.load(tmp_path, task="classification", fused=False)
    assert torch.equal(model.classifier.bias, state["classifier.bias"])
    assert torch.equal(model.convnext.layernorm.weight, state["layernorm.weight"])


def test_pretrained_false_local_and_name(cls_dir, offline):
    model = fastvit.load(cls_dir, pretrained=False, fused=False)
    assert type(model).__name__ == "ConvNextForImageClassification"
    model = fastvit.load("convnextv2-atto", pretrained=False, fused=False, task="features")
    assert type(model).__name__ == "ConvNextV2Model" and not model.training
    weight = model.encoder.stages[0].layers[0].pwconv1.weight
    assert weight.device.type == "cpu" and 0.015 < weight.std().item() < 0.025  # HF init: normal(0, 0.02)
    hf = transformers.ConvNextV2Model(transformers.ConvNextV2Config(**fastvit.get_model_info("convnextv2-atto").config))
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in hf.named_parameters()}
    with torch.no_grad():
        assert model(_x(1, 3, 64, 64)).pooler_output.shape == (1, 320)


# ----------------------------------------------------------------------------------------------------------- fusing


def test_fused_calls_patch(cls_dir, monkeypatch):
    calls = []
    fake = types.ModuleType("fastvit.patching")
    fake.patch = lambda model, **options: calls.append(model)  # load passes cuda_graphs=
    monkeypatch.setitem(sys.modules, "fastvit.patching", fake)
    model = fastvit.load(cls_dir, fused=True)
    assert calls == [model]


# -------------------------------------------------------------------------------------------------------- HF cache


def _fake_cache(root: Path, repo_id: str, src: Path, ref: bool = True) -> Path:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    shutil.copytree(src, snap)
    if ref:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abcd")
    return snap


@pytest.mark.parametrize("layout", ["HF_HUB_CACHE", "HF_HOME", "no-ref"])
def test_hf_cache_lookup(cls_dir, tmp_path, monkeypatch, layout):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if layout == "HF_HOME":
        monkeypatch.setenv("HF_HOME", str(tmp_path))
        cache = tmp_path / "hub"
    else:
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
        cache = tmp_path / "c"
    snap = _fake_cache(cache, "facebook/convnext-tiny-224", cls_dir, ref=layout != "no-ref")
    assert hub.find_cached("facebook/convnext-tiny-224") == snap
    model = fastvit.load("convnext-tiny", fused=False)  # the snapshot's own config.json is used
    assert model.config.hidden_sizes == TINY["hidden_sizes"]
    hf = transformers.ConvNextForImageClassification.from_pretrained(cls_dir).eval()
    x = _x()
    with torch.no_grad():
        assert_outputs_close(model(x), hf(x), ("logits",), atol=ATOL, rtol=ATOL)


def test_no_cache_offline_says_how(offline):
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE.*fastvit\[hub\].*pretrained=False"):
        fastvit.load("convnext-tiny", fused=False)


def test_no_cache_no_hub_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError, match=r"huggingface_hub is not installed.*pip install 'fastvit\[hub\]'"):
        fastvit.load("facebook/convnext-tiny-224", fused=False)
