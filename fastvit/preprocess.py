"""Image preprocessing equal to HF transformers 4.50's image processors: ``pixel_values`` from images.

    processor = fastvit.processor_for(model)              # the checkpoint's preprocessor_config.json, or the
    pixel_values = processor(["cat.jpg", pil_image])      # registered model's published values
    pixel_values = processor.preprocess_tensors(uint8_images, device="cuda")   # batched torch path on the GPU

Three HF processors, one class (:class:`ImageProcessor`, ``kind`` says which):
  * ``convnext`` (``ConvNextImageProcessor``; ConvNeXt, ConvNeXt V2): ``size["shortest_edge"] < 384``: resize the
    shortest edge to ``int(shortest_edge / crop_pct)`` then center-crop ``shortest_edge`` square; ``>= 384``: resize
    (warp) straight to ``shortest_edge`` square, no crop. No RGB conversion in HF (we always convert, see below).
  * ``bit`` (``BitImageProcessor``, ``ViTHybridImageProcessor``; DINOv2, ViT-Hybrid) and ``clip``
    (``CLIPImageProcessor``; AltCLIP): resize the shortest edge to ``size["shortest_edge"]`` (or to
    ``size["height"/"width"]``), center-crop ``crop_size`` (zero padding when the image is smaller), as HF.
Then rescale (``x.astype(float64) * rescale_factor`` cast to float32), normalise (``(x - mean) / std`` in float32)
and channels first, exactly HF's order and arithmetic: the PIL path equals HF's output (tested to <= 1e-6).

Decoding (:func:`load_image`) always returns an 8-bit RGB image: palette, grayscale, CMYK, RGBA/LA (alpha dropped,
as PIL's and HF's ``convert("RGB")``), 16/32-bit integer images (scaled to 8 bits; PIL's ``convert`` would clip them
to white), the first frame of animations (GIF, WebP).

The tensor path (:meth:`ImageProcessor.preprocess_tensors`) resizes with ``torch.nn.functional.interpolate(...,
antialias=True)`` (torch's antialiased bilinear/bicubic follow PIL's filters) in PIL's order (horizontal pass, round
to uint8, vertical pass, round to uint8); it differs from PIL's integer-arithmetic resampling by at most
``TENSOR_PATH_MAX_LEVELS`` levels of 255 per pixel (tested), i.e. ``TENSOR_PATH_MAX_LEVELS / 255 / min(image_std)``
after normalisation.

Registry defaults (no preprocessor_config.json): :func:`default_config` from the model config; provenance per family
in ``PROVENANCE``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ImageProcessor",
    "processor_for",
    "default_config",
    "load_image",
    "to_rgb",
    "PROVENANCE",
    "TENSOR_PATH_MAX_LEVELS",
]

PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes (PILImageResampling) -> torch interpolate mode for the tensor path (None: PIL path only)
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_TORCH_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
TENSOR_PATH_MAX_LEVELS = 2  # max |tensor path - PIL path| per pixel, in uint8 levels, after the resize (tested)

# HF processor class name -> kind
_KINDS = {
    "ConvNextImageProcessor": "convnext",
    "ConvNextFeatureExtractor": "convnext",
    "ConvNextImageProcessorFast": "convnext",
    "BitImageProcessor": "bit",
    "BitImageProcessorFast": "bit",
    "ViTHybridImageProcessor": "bit",
    "CLIPImageProcessor": "clip",
    "CLIPImageProcessorFast": "clip",
    "CLIPFeatureExtractor": "clip",
}
_CLASS_NAMES = {"convnext": "ConvNextImageProcessor", "bit": "BitImageProcessor", "clip": "CLIPImageProcessor"}

# HF 4.50's constructor defaults per kind (what a key missing from preprocessor_config.json means)
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "convnext": {
        "size": {"shortest_edge": 384},
        "crop_pct": 224 / 256,
        "resample": 2,
        "image_mean": IMAGENET_STANDARD_MEAN,
        "image_std": IMAGENET_STANDARD_STD,
    },
    "bit": {
        "size": {"shortest_edge": 224},
        "resample": 3,
        "crop_size": {"height": 224, "width": 224},
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
    },
}
_HF_DEFAULTS["clip"] = dict(_HF_DEFAULTS["bit"])


# -------------------------------------------------------------------------------------------------------- decoding


def to_rgb(image) -> Any:
    """An 8-bit RGB copy of a PIL image (first frame; 16/32-bit integer modes scaled down, alpha dropped)."""
    from PIL import Image

    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(image, dtype=np.int64)
        top = 65535 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr = np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when converting transparent palettes straight to RGB
    return image.convert("RGB")


def load_image(source: str | os.PathLike | bytes) -> Any:
    """Decode a file path or encoded bytes to an 8-bit RGB PIL image; raises ``ValueError`` naming the file."""
    import io

    from PIL import Image, UnidentifiedImageError

    name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    if (len(source) if name == "<bytes>" else os.path.getsize(source)) == 0:
        raise ValueError(f"{name}: empty file (0 bytes)")
    try:
        fp = io.BytesIO(source) if name == "<bytes>" else open(source, "rb")  # noqa: SIM115
        with fp, Image.open(fp) as image:
            image.load()
            return to_rgb(image).copy()
    except UnidentifiedImageError as e:
        raise ValueError(f"{name}: not an image PIL can read") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name}: unreadable or truncated image ({type(e).__name__}: {e})") from e


def _as_pil(image) -> Any:
    """PIL RGB image from a path, bytes, PIL image, or uint8 HWC / HW array or tensor (CHW tensors too)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return Image.fromarray(_as_hwc_uint8(image)).convert("RGB")


def _as_hwc_uint8(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3, 4):
            image = image.permute(1, 2, 0)  # CHW (torchvision's decode_image) -> HWC
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"expected an image as a PIL image, a file path, or a uint8 HWC numpy array / torch tensor; got "
            f"{type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0..255), got dtype {image.dtype} (shape {list(image.shape)})")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(f"image arrays must be HW or HWC with 1, 3 or 4 channels, got shape {list(image.shape)}")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------------------- geometry


def _shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """HF's ``get_resize_output_image_size(default_to_square=False)``: (height, width) with the short edge ``size``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _crop_box(length: int, crop: int) -> tuple[int, int, int]:
    """(source start, source end, destination offset) of HF's center crop along one axis (zero padding if needed)."""
    if crop <= length:
        start = (length - crop) // 2
        return start, start + crop, 0
    return 0, length, math.ceil((crop - length) / 2)


def _center_crop(image, height: int, width: int):
    """HF's ``center_crop`` of a [..., H, W] array or tensor (zero padding where the crop exceeds the image)."""
    (y0, y1, dy), (x0, x1, dx) = _crop_box(image.shape[-2], height), _crop_box(image.shape[-1], width)
    part = image[..., y0:y1, x0:x1]
    if dy == 0 and dx == 0:
        return part
    if isinstance(image, torch.Tensor):
        out = image.new_zeros((*image.shape[:-2], height, width))
    else:
        out = np.zeros((*image.shape[:-2], height, width), dtype=image.dtype)
    out[..., dy : dy + part.shape[-2], dx : dx + part.shape[-1]] = part
    return out


# -------------------------------------------------------------------------------------------------------- processor


def _size_dict(size: Any, square: bool, what: str) -> dict[str, int]:
    """HF's ``get_size_dict`` for the forms configs use: an int, [h, w], or a dict."""
    if isinstance(size, dict):
        if set(size) in ({"shortest_edge"}, {"height", "width"}) or "shortest_edge" in size:
            return {k: int(v) for k, v in size.items()}
        raise ValueError(f"{what} must have 'shortest_edge' or 'height' and 'width', got {size}")
    if isinstance(size, int):
        return {"height": size, "width": size} if square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"{what} must be an int, a [height, width] pair or a dict, got {size!r}")


@dataclass
class ImageProcessor:
    """HF-exact image preprocessing (see the module docstring); build with :meth:`from_dict` / :meth:`from_pretrained`.

    ``__call__`` (PIL path, CPU) and :meth:`preprocess_tensors` (torch path, any device) both return float32
    ``pixel_values`` of shape [B, 3, H, W].
    """

    kind: str = "bit"  # "convnext" | "bit" | "clip"
    do_resize: bool = True
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3
    crop_pct: float | None = None  # convnext only
    do_center_crop: bool = True  # bit / clip
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    do_convert_rgb: bool = True
    processor_class: str = field(default="", compare=False)  # HF class name written back (default: by kind)

    def __post_init__(self) -> None:
        if self.kind not in _CLASS_NAMES:
            raise ValueError(f"unknown processor kind {self.kind!r}; expected one of {sorted(_CLASS_NAMES)}")
        if self.resample not in RESAMPLE_NAMES:
            raise ValueError(f"resample must be a PIL resampling code {sorted(RESAMPLE_NAMES)}, got {self.resample!r}")
        self.size = _size_dict(self.size, square=False, what="size")
        self.crop_size = _size_dict(self.crop_size, square=True, what="crop_size")
        if self.kind == "convnext":
            if "shortest_edge" not in self.size:
                raise ValueError(f"ConvNextImageProcessor needs size['shortest_edge'], got size={self.size}")
            self.crop_pct = 224 / 256 if self.crop_pct is None else float(self.crop_pct)
        self.image_mean = tuple(float(m) for m in np.broadcast_to(self.image_mean, (3,)))
        self.image_std = tuple(float(s) for s in np.broadcast_to(self.image_std, (3,)))

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, config: dict[str, Any], kind: str | None = None) -> ImageProcessor:
        """From a preprocessor_config.json dict; missing keys take HF 4.50's defaults of that processor class.

        ``kind`` is used when the dict names no processor class (``image_processor_type``/``feature_extractor_type``).
        """
        type_name = config.get("image_processor_type") or config.get("feature_extractor_type")
        if type_name is not None:
            if type_name not in _KINDS:
                raise ValueError(
                    f"preprocessor_config.json names {type_name!r}; fastvit reproduces {', '.join(sorted(_KINDS))}"
                )
            kind = _KINDS[type_name]
        if kind is None:
            raise ValueError("preprocessor config names no image_processor_type; pass kind='convnext'|'bit'|'clip'")
        values = {**_HF_DEFAULTS[kind], **config}
        names = {f.name for f in fields(cls)} - {"kind", "processor_class"}
        name = type_name if type_name and type_name.endswith("ImageProcessor") else ""
        return cls(kind=kind, processor_class=name, **{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, kind: str | None = None) -> ImageProcessor:
        """From ``directory/preprocessor_config.json``."""
        path = Path(directory) / PREPROCESSOR_FILE
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from e
        return cls.from_dict(config, kind)

    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json content HF's ``AutoImageProcessor`` reads back to the same processor."""
        out: dict[str, Any] = {
            "image_processor_type": self.processor_class or _CLASS_NAMES[self.kind],
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        if self.kind == "convnext":
            out["crop_pct"] = self.crop_pct
        else:
            out.update(do_center_crop=self.do_center_crop, crop_size=dict(self.crop_size))
            out["do_convert_rgb"] = self.do_convert_rgb
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/preprocessor_config.json``; returns its path."""
        path = Path(directory) / PREPROCESSOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    # ---------------------------------------------------------------------------------------------------- geometry

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None when it depends on the input (no crop, shortest-edge resize)."""
        if self.kind == "convnext":
            se = self.size["shortest_edge"]
            return (se, se) if self.do_resize else None
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    def _plan(self, height: int, width: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(resize to (h, w) or None, center crop to (h, w) or None) for an input of ``height`` x ``width``."""
        if self.kind == "convnext":
            if not self.do_resize:
                return None, None
            se = self.size["shortest_edge"]
            if se < 384:
                return _shortest_edge_size(height, width, int(se / self.crop_pct)), (se, se)
            return (se, se), None
        resize = None
        if self.do_resize:
            if "shortest_edge" in self.size:
                resize = _shortest_edge_size(height, width, self.size["shortest_edge"])
            else:
                resize = (self.size["height"], self.size["width"])
        crop = (self.crop_size["height"], self.crop_size["width"]) if self.do_center_crop else None
        return resize, crop

    # -------------------------------------------------------------------------------------------------- PIL path

    def resize_and_crop(self, image) -> np.ndarray:
        """The uint8 [3, H, W] array after RGB conversion, resize and crop (PIL path), before rescale/normalise."""
        image = _as_pil(image)
        resize, crop = self._plan(image.height, image.width)
        if resize is not None:
            image = image.resize((resize[1], resize[0]), resample=self.resample, reducing_gap=None)
        arr = np.asarray(image).transpose(2, 0, 1)
        return _center_crop(arr, *crop) if crop is not None else arr

    def _finish(self, arr: np.ndarray) -> np.ndarray:
        """HF's rescale (float64 product, float32 result) and normalise (float32), on a [3, H, W] array."""
        out = arr.astype(np.float32)
        if self.do_rescale:
            out = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            out = (out - mean) / std
        return out

    def preprocess_one(self, image) -> torch.Tensor:
        """One image (PIL, path, bytes, uint8 array/tensor) -> float32 [3, H, W] on CPU, exactly as HF."""
        return torch.from_numpy(np.ascontiguousarray(self._finish(self.resize_and_crop(image))))

    def __call__(self, images) -> torch.Tensor:
        """One image or a list (mixed sizes allowed) -> float32 ``pixel_values`` [B, 3, H, W] (PIL path, CPU)."""
        images = _as_list(images)
        outs = [self.preprocess_one(im) for im in images]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) > 1:
            raise ValueError(
                f"the processed images have different shapes {sorted(shapes)} (this config has no fixed output size: "
                "set do_center_crop or a height/width size); use preprocess_one per image"
            )
        return torch.stack(outs)

    # ----------------------------------------------------------------------------------------------- tensor path

    def preprocess_tensors(self, images, device: str | torch.device | None = None) -> torch.Tensor:
        """Batched torch path: uint8 images (list of HWC/CHW tensors or arrays, or a [B, H, W, C] / [B, C, H, W]
        uint8 tensor; PIL images and paths are decoded first) -> float32 [B, 3, H, W] on ``device``.

        Resize with ``interpolate(antialias=True)``, rounded to uint8 as PIL does; within ``TENSOR_PATH_MAX_LEVELS``
        of the PIL path before rescale/normalise. Resample filters other than nearest/bilinear/bicubic: ValueError.
        """
        if self.do_resize and self.resample not in _TORCH_MODES:
            raise ValueError(
                f"the tensor path supports resample nearest/bilinear/bicubic, not {RESAMPLE_NAMES[self.resample]}; "
                "use the PIL path (calling the processor)"
            )
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batch = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
            chw = list(batch.unbind(0))
        else:
            chw = [_as_chw_tensor(im) for im in _as_list(images)]
        device = torch.device(device) if device is not None else (chw[0].device if chw else torch.device("cpu"))
        outs = [self._resize_crop_tensor(x.to(device, non_blocking=True)) for x in chw]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) > 1:
            raise ValueError(f"the processed images have different shapes {sorted(shapes)}; set a crop size")
        x = torch.stack(outs).float()
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def _resize_crop_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> uint8 [3, h, w]: resize (antialiased, rounded) and center crop."""
        if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a uint8 [3, H, W] image, got {x.dtype} {list(x.shape)}")
        resize, crop = self._plan(x.shape[-2], x.shape[-1])
        if resize is not None and tuple(resize) != tuple(x.shape[-2:]):
            x = _resize_like_pil(x, resize, self.resample)
        return _center_crop(x, *crop) if crop is not None else x


def _resize_like_pil(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, *size] as PIL resamples: horizontal pass, rounded to uint8, then vertical pass."""
    mode = _TORCH_MODES[resample]
    if mode == "nearest-exact":  # an exact gather of PIL's source pixels
        rows, cols = (_nearest_index(n, m, x.device) for n, m in zip(x.shape[-2:], size, strict=True))
        return x[:, rows][:, :, cols]
    kwargs = {"antialias": True, "align_corners": False}
    y = x[None].float()
    for target in ((y.shape[-2], size[1]), tuple(size)):
        if target != tuple(y.shape[-2:]):
            y = torch.nn.functional.interpolate(y, size=target, mode=mode, **kwargs).round_().clamp_(0, 255)
    return y[0].to(torch.uint8)


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """PIL's nearest source indices: it walks ``0.5 * scale + i * scale`` by repeated float64 addition."""
    scale = n_in / n_out
    steps = np.full(n_out, scale)
    steps[0] = 0.5 * scale
    idx = np.clip(np.floor(np.cumsum(steps)).astype(np.int64), 0, n_in - 1)
    return torch.from_numpy(idx).to(device)


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def _as_chw_tensor(image) -> torch.Tensor:
    """uint8 [3, H, W] tensor (device kept for tensors) from any accepted image input."""
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        if image.shape[0] == 3 and image.shape[-1] not in (3, 4):
            return image
        if image.shape[-1] == 3:
            return image.permute(2, 0, 1)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return torch.from_numpy(np.asarray(_as_pil(image))).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------- registry defaults

# Published preprocessor_config.json values per family (used when a checkpoint has none, e.g. pretrained=False).
PROVENANCE = {
    "convnext": "HF convert_convnext_to_pytorch.py: ConvNextFeatureExtractor(size=224|384) with its defaults "
    "(crop_pct 224/256, BICUBIC, ImageNet default mean/std); the published files read {size: 224, crop_pct: 0.875, "
    "resample: 3, image_mean [0.485, 0.456, 0.406], image_std [0.229, 0.224, 0.225]}",
    "convnextv2": "HF convert_convnextv2_to_pytorch.py convert_preprocessor(): size 224 with crop_pct 224/256, "
    "384/512 with crop_pct None (HF default 0.875, unused at >= 384), BICUBIC, ImageNet default mean/std",
    "dinov2": "HF convert_dinov2_to_hf.py: BitImageProcessor(size={shortest_edge: 256}, BICUBIC, "
    "IMAGENET_DEFAULT_MEAN/STD), crop 224 (BitImageProcessor default)",
    "dinov2_with_registers": "HF convert_dinov2_with_registers_to_hf.py: the same BitImageProcessor as dinov2",
    "vit-hybrid": "HF convert_vit_hybrid_timm_to_pytorch.py: ViTHybridImageProcessor from timm's eval transform of "
    "vit_base_r50_s16_384 (crop_pct 1.0 -> shortest_edge 384, crop 384, bicubic, mean/std 0.5)",
    "altclip": "BAAI/AltCLIP uses CLIP's processor: CLIPImageProcessor defaults (shortest_edge 224, crop 224, "
    "BICUBIC, OpenAI CLIP mean/std), the image size from vision_config",
}


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def default_config(config: Any) -> dict[str, Any]:
    """The published preprocessor_config.json of a family (see ``PROVENANCE``) for a model config (dict or object)."""
    model_type = _get(config, "model_type") or ""
    if model_type in ("convnext", "convnextv2"):
        image_size = int(_get(config, "image_size", 224) or 224)
        return {
            "image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": image_size},
            "crop_pct": 224 / 256,
            "resample": 3,
            "image_mean": list(IMAGENET_DEFAULT_MEAN),
            "image_std": list(IMAGENET_DEFAULT_STD),
        }
    if model_type in ("dinov2", "dinov2_with_registers"):
        return {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": 256},
            "crop_size": {"height": 224, "width": 224},
            "resample": 3,
            "image_mean": list(IMAGENET_DEFAULT_MEAN),
            "image_std": list(IMAGENET_DEFAULT_STD),
        }
    if model_type == "vit-hybrid":
        image_size = int(_get(config, "image_size", 384) or 384)
        return {
            "image_processor_type": "ViTHybridImageProcessor",
            "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "resample": 3,
            "image_mean": list(IMAGENET_STANDARD_MEAN),
            "image_std": list(IMAGENET_STANDARD_STD),
        }
    if model_type.startswith("altclip"):
        vision = _get(config, "vision_config") or config
        image_size = int(_get(vision, "image_size", 224) or 224)
        return {
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "resample": 3,
            "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD),
        }
    raise ValueError(f"no default preprocessing for model_type {model_type!r}")


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return _get(config, "model_type") or getattr(type(config), "model_type", "") or ""


def processor_for(model: nn.Module) -> ImageProcessor:
    """The :class:`ImageProcessor` of a model: its checkpoint's preprocessor_config.json when ``fastvit.load`` found
    one, else the family's published values (``default_config``). Works for HF transformers models too."""
    source = getattr(model, "fastvit_source", None)
    if source is not None and source.preprocessor_config is not None:
        return ImageProcessor.from_dict(source.preprocessor_config)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config: cannot choose its preprocessing")
    values = {"model_type": _model_type(model)}
    for key in ("image_size", "vision_config"):
        if _get(config, key) is not None:
            values[key] = _get(config, key)
    return ImageProcessor.from_dict(default_config(values))
