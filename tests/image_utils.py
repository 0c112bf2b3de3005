"""Shared by the pipeline tests (preprocess, embed, predict, save): a generated image folder and tiny checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# tiny configs of the five families (HF config.json dicts)
TINY = {
    "convnext": {
        "model_type": "convnext",
        "architectures": ["ConvNextForImageClassification"],
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [8, 16, 24, 32],
        "num_labels": 7,
        "image_size": 64,
    },
    "convnextv2": {
        "model_type": "convnextv2",
        "architectures": ["ConvNextV2Model"],
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [8, 16, 24, 32],
        "image_size": 64,
    },
    "dinov2": {
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    },
    "vit-hybrid": {
        "model_type": "vit-hybrid",
        "architectures": ["ViTHybridForImageClassification"],
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "num_labels": 3,
        "backbone_config": {
            "model_type": "bit",
            "embedding_size": 8,
            "hidden_sizes": [8, 16, 32],
            "depths": [1, 1, 1],
            "layer_type": "bottleneck",
            "global_padding": "same",
            "out_features": ["stage3"],
            "embedding_dynamic_padding": True,
            "num_groups": 2,
        },
        "backbone_featmap_shape": [1, 32, 4, 4],
    },
    "altclip": {
        "model_type": "altclip",
        "architectures": ["AltCLIPModel"],
        "projection_dim": 16,
        "text_config": {
            "vocab_size": 40,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 40,
            "project_dim": 16,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "projection_dim": 16,
        },
    },
}


def tiny_model(family: str, **overrides):
    """A randomly initialised eager fastvit model of the tiny ``family`` config (eval mode)."""
    from fastvit.models import build_model

    model = build_model({**TINY[family], **overrides})
    model.init_weights()
    return model.eval()


def _noise(rng, h: int, w: int, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.clip(base + 40 * np.sin((xx + yy) / 21.0)[..., None], 0, 255).astype(np.uint8)


def sample_images(seed: int = 0) -> list[Image.Image]:
    """RGB PIL images of mixed sizes (down- and upscaled by the processors), noise and smooth content."""
    rng = np.random.default_rng(seed)
    sizes = [(50, 70), (121, 90), (33, 33), (300, 200), (9, 14)]
    out = [Image.fromarray(_noise(rng, h, w)) for h, w in sizes]
    return out + [Image.fromarray(_smooth(180, 240)), Image.fromarray(_smooth(64, 64))]


def make_image_folder(root: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """A folder of images in many formats and modes (one subfolder deep) plus bad files.

    Returns (good paths, bad paths), sorted as ``fastvit.embedding.collect_inputs`` lists them.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    good = {
        "a_rgb.jpg": lambda p: Image.fromarray(_noise(rng, 48, 64)).save(p, quality=90),
        "b_smooth.jpg": lambda p: Image.fromarray(_smooth(90, 60)).save(p),
        "c_gray.png": lambda p: Image.fromarray(_noise(rng, 40, 30, 1)).save(p),
        "d_rgba.png": lambda p: Image.fromarray(_noise(rng, 30, 50, 4)).save(p),
        "e_palette.png": lambda p: (
            Image.fromarray(_smooth(40, 40)).convert("P", palette=Image.ADAPTIVE).save(p, transparency=0)
        ),
        "f_16bit.png": lambda p: Image.fromarray((rng.integers(0, 65536, (36, 44))).astype(np.uint16)).save(p),
        "g_cmyk.jpg": lambda p: Image.fromarray(_smooth(50, 50)).convert("CMYK").save(p),
        "h_image.webp": lambda p: Image.fromarray(_smooth(45, 70)).save(p, lossless=True),
        "sub/i_anim.gif": lambda p: Image.fromarray(_smooth(32, 48)).save(
            p, save_all=True, append_images=[Image.fromarray(_noise(rng, 32, 48))]
        ),
        "sub/j_large.png": lambda p: Image.fromarray(_noise(rng, 130, 97)).save(p),
    }
    for name, write in good.items():
        write(root / name)
    buf = io.BytesIO()
    Image.fromarray(_noise(rng, 64, 64)).save(buf, format="JPEG")
    (root / "x_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "y_empty.jpg").write_bytes(b"")
    (root / "z_text.jpg").write_text("this is not an image\n")
    bad = ["x_truncated.jpg", "y_empty.jpg", "z_text.jpg"]
    return sorted(str(root / n) for n in good), sorted(str(root / n) for n in bad)
