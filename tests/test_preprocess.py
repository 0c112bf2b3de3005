"""fastvit.ImageProcessor against HF transformers 4.50's image processors (ConvNext, Bit / ViTHybrid, CLIP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fastvit
from fastvit.preprocess import TENSOR_PATH_MAX_LEVELS, ImageProcessor, default_config, load_image, processor_for
from tests.image_utils import make_image_folder, sample_images

transformers = pytest.importorskip("transformers")

# each family's published config (registry defaults) plus variants that exercise the other code paths
CONFIGS = {
    "convnext-224": default_config({"model_type": "convnext", "image_size": 224}),
    "convnextv2-384": default_config({"model_type": "convnextv2", "image_size": 384}),  # >= 384: warp, no crop
    "convnext-bilinear-no-crop-pct": {"image_processor_type": "ConvNextImageProcessor", "size": 96},  # HF defaults
    "dinov2": default_config({"model_type": "dinov2"}),
    "vit-hybrid": default_config({"model_type": "vit-hybrid"}),
    "altclip": default_config({"model_type": "altclip"}),
    "clip-crop-larger-than-resize": {  # center crop pads with zeros
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 40},
        "crop_size": {"height": 48, "width": 36},
        "resample": 2,
    },
    "bit-height-width-nearest": {
        "image_processor_type": "BitImageProcessor",
        "size": {"height": 50, "width": 70},
        "do_center_crop": False,
        "resample": 0,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.9, 0.8, 0.7],
    },
}


def hf_processor(config: dict, tmp_path):
    """HF's processor for ``config``, read by AutoImageProcessor from the file fastvit writes (tests to_dict too)."""
    ImageProcessor.from_dict(config).save_pretrained(tmp_path)
    return transformers.AutoImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pil_path_equals_hf(name, tmp_path):
    ours = ImageProcessor.from_dict(CONFIGS[name])
    hf = hf_processor(CONFIGS[name], tmp_path)
    assert type(hf).__name__ == CONFIGS[name]["image_processor_type"]  # the class name is kept
    for image in sample_images():
        expected = hf(image, return_tensors="pt").pixel_values
        actual = ours(image)
        assert actual.shape == expected.shape and actual.dtype == torch.float32
        err = (actual - expected).abs().max().item()
        assert err <= 1e-6, f"{name} {image.size}: max |ours - HF| = {err:.3g}"


def test_inputs_paths_arrays_tensors_mixed_sizes(tmp_path):
    p = ImageProcessor.from_dict(CONFIGS["dinov2"])
    images = sample_images()[:3]
    expected = torch.stack([p(im)[0] for im in images])
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    arrays = [np.asarray(im) for im in images]
    assert torch.equal(p(paths), expected)  # a list of mixed sizes -> one batch
    assert torch.equal(p([str(q) for q in paths]), expected)
    assert torch.equal(p(arrays), expected)
    assert torch.equal(p([torch.from_numpy(a.copy()) for a in arrays]), expected)  # HWC tensors
    assert torch.equal(p([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]), expected)  # CHW tensors
    assert torch.equal(p(images[0]), expected[:1])  # a single image
    assert p(images).shape == (3, 3, 224, 224)


@pytest.mark.parametrize("name", ["convnext-224", "convnextv2-384", "dinov2", "altclip", "bit-height-width-nearest"])
def test_tensor_path_close_to_pil_path(name):
    p = ImageProcessor.from_dict(CONFIGS[name])
    images = sample_images(seed=1)
    levels, total, count = 0, 0.0, 0
    for image in images:
        pil = torch.from_numpy(p.resize_and_crop(image).astype(np.int32))
        tensor = p._resize_crop_tensor(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)).int()
        diff = (tensor - pil).abs()
        levels, total, count = max(levels, diff.max().item()), total + diff.sum().item(), count + diff.numel()
    assert levels <= TENSOR_PATH_MAX_LEVELS, f"{name}: {levels} uint8 levels from the PIL path"
    assert total / count < 0.02, f"{name}: mean {total / count:.4f} levels from the PIL path"
    # normalised output: the same bound, scaled by 1/255/std
    batch = p.preprocess_tensors([torch.from_numpy(np.asarray(im).copy()) for im in images], device="cpu")
    expected = p(images) if p.output_size is not None else None
    if expected is not None:
        bound = TENSOR_PATH_MAX_LEVELS / 255 / min(p.image_std) + 1e-6
        assert (batch - expected).abs().max().item() <= bound


def test_tensor_path_takes_uint8_batches():
    p = ImageProcessor.from_dict(CONFIGS["altclip"])
    batch = torch.from_numpy(np.stack([np.asarray(im) for im in sample_images()[5:6] * 2]))  # [2, H, W, 3]
    out_hwc = p.preprocess_tensors(batch)
    out_chw = p.preprocess_tensors(batch.permute(0, 3, 1, 2))
    assert out_hwc.shape == (2, 3, 224, 224) and torch.equal(out_hwc, out_chw)


def test_decoding_modes_to_rgb(tmp_path):
    good, bad = make_image_folder(tmp_path)
    for path in good:
        image = load_image(path)
        assert image.mode == "RGB", path
    sixteen = load_image(next(p for p in good if p.endswith("16bit.png")))
    raw = np.asarray(Image.open(next(p for p in good if p.endswith("16bit.png"))), dtype=np.float64)
    expected = np.clip(np.rint(raw * 255 / 65535), 0, 255)
    assert np.array_equal(np.asarray(sixteen)[..., 0], expected)  # scaled, not clipped to white
    gif = load_image(next(p for p in good if p.endswith(".gif")))
    with Image.open(next(p for p in good if p.endswith(".gif"))) as first:
        assert np.array_equal(np.asarray(gif), np.asarray(first.convert("RGB")))  # first frame
    for path in bad:
        with pytest.raises(ValueError, match=path.rsplit("/", 1)[-1]):
            load_image(path)


def test_bad_inputs_and_configs():
    p = ImageProcessor()
    with pytest.raises(TypeError, match="uint8"):
        p(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        p(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(TypeError, match="PIL"):
        p(42)
    with pytest.raises(ValueError, match="ViTImageProcessor"):
        ImageProcessor.from_dict({"image_processor_type": "ViTImageProcessor"})
    with pytest.raises(ValueError, match="shortest_edge"):
        ImageProcessor.from_dict({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 4, "width": 4}})
    with pytest.raises(ValueError, match="lanczos"):
        ImageProcessor(resample=1).preprocess_tensors([torch.zeros(3, 8, 8, dtype=torch.uint8)])


def test_to_dict_round_trip():
    for config in CONFIGS.values():
        p = ImageProcessor.from_dict(config)
        assert ImageProcessor.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    "name, size, crop, mean0",
    [
        ("convnext-tiny", (224, 224), 0.875, 0.485),
        ("convnext-base-384", (384, 384), 0.875, 0.485),
        ("convnextv2-atto", (224, 224), 0.875, 0.485),
        ("dinov2-small", (224, 224), None, 0.485),
        ("altclip", (224, 224), None, 0.48145466),
    ],
)
def test_registry_defaults(name, size, crop, mean0):
    with torch.device("meta"):
        config = fastvit.get_model_info(name).config
        from fastvit.models import build_model

        model = build_model(config)
    p = processor_for(model)
    assert p.output_size == size and p.image_mean[0] == pytest.approx(mean0)
    if crop is not None:
        assert p.crop_pct == pytest.approx(crop) and p.resample == 3


def test_processor_for_reads_the_checkpoint_file(tmp_path):
    from tests.image_utils import tiny_model

    model = tiny_model("dinov2")
    custom = ImageProcessor(kind="bit", size={"shortest_edge": 40}, crop_size={"height": 28, "width": 28})
    model.save_pretrained(tmp_path, processor=custom)
    loaded = fastvit.load(tmp_path, fused=False)
    assert processor_for(loaded) == custom
    (tmp_path / "preprocessor_config.json").unlink()
    assert processor_for(fastvit.load(tmp_path, fused=False)) == ImageProcessor.from_dict(
        default_config({"model_type": "dinov2"})
    )
    hf = transformers.Dinov2Model.from_pretrained(tmp_path)  # HF models too
    assert processor_for(hf).output_size == (224, 224)


def test_hub_download_fetches_preprocessor_config(tmp_path, monkeypatch):
    """fastvit.load(name) without a cached snapshot downloads preprocessor_config.json with the weights."""
    import fnmatch
    import shutil

    from tests.image_utils import tiny_model

    huggingface_hub = pytest.importorskip("huggingface_hub")
    published = tiny_model("convnextv2").save_pretrained(
        tmp_path / "published", processor=ImageProcessor.from_dict(CONFIGS["convnext-bilinear-no-crop-pct"])
    )
    (published / "README.md").write_text("not downloaded")
    seen = []

    def snapshot_download(repo_id, revision="main", allow_patterns=None):
        seen.append((repo_id, list(allow_patterns)))
        target = tmp_path / "snapshot"
        target.mkdir(exist_ok=True)
        for f in published.iterdir():
            if any(fnmatch.fnmatch(f.name, pat) for pat in allow_patterns):
                shutil.copy(f, target / f.name)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = fastvit.load("convnextv2-atto", fused=False)
    assert seen[0][0] == "facebook/convnextv2-atto-1k-224" and "preprocessor_config.json" in seen[0][1]
    assert not (tmp_path / "snapshot" / "README.md").exists()
    assert processor_for(model) == ImageProcessor.from_dict(CONFIGS["convnext-bilinear-no-crop-pct"])
    assert model.fastvit_source.name == "convnextv2-atto"
