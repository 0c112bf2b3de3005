"""End-to-end embedding throughput from a folder of JPEG files: decode + preprocess + model (fastvit.embed).

    python -m bench.bench_embed                                   # CPU: 64 JPEGs, convnextv2-atto + dinov2-small
    python -m bench.bench_embed --images 2048 --models dinov2-base --device cuda --batch-size 256 --num-workers 8

For each model: the input pipeline alone (DataLoader workers decoding + preprocessing, no model), the model alone
(eager, fused), then ``fastvit.embed`` end to end with the eager and the fused model (on CUDA also with nvJPEG
decode on the GPU when torchvision imports). Random weights (speed does not depend on them). Prints a Markdown
table; an untimed pass over one batch warms up each variant. Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_jpegs(directory: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` JPEG photos-like images (smooth gradients + noise) of typical camera-ish sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [(375, 500), (480, 640), (333, 500), (500, 375)]
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = 128 + 80 * np.sin(xx / rng.uniform(8, 40) + yy / rng.uniform(8, 40))
        img = np.clip(base[..., None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        path = directory / f"img_{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(str(path))
    return paths


def time_pipeline(paths, processor, batch_size: int, num_workers: int) -> float:
    """Images/s of decode + preprocess alone (the DataLoader of fastvit.embed, no model)."""
    from fastvit.embedding import _Collate, _Images

    loader = torch.utils.data.DataLoader(
        _Images(paths, processor, raw_jpeg=False),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_Collate(batch_size, processor.output_size),
    )
    t0 = time.perf_counter()
    n = sum(len(b.indices) for b in loader)
    return n / (time.perf_counter() - t0)


def time_model(model, processor, batch_size: int, iters: int = 3) -> float:
    """Images/s of the model alone on ready pixel values (median of ``iters`` calls after one warm-up)."""
    param = next(model.parameters())
    x = torch.randn(batch_size, 3, *processor.output_size, device=param.device, dtype=param.dtype)
    times = []
    with torch.inference_mode():
        for i in range(iters + 1):
            if param.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(pixel_values=x)
            if param.device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return batch_size / float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--models", default="convnextv2-atto,dinov2-small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    args = p.parse_args()

    import fastvit
    from fastvit.embedding import DTYPES, _gpu_decode_available

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        print(
            f"fastvit embed end to end · {args.images} JPEGs (375x500..480x640) · {device} {dtype} · batch "
            f"{args.batch_size} · {args.num_workers} workers · torch {torch.__version__} · {os.cpu_count()} CPUs"
        )
        print("\n| model | variant | images/s |\n| --- | --- | ---: |")
        for name in args.models.split(","):
            models = {
                variant: fastvit.load(name, pretrained=False, fused=fused, device=device, dtype=dtype)
                for variant, fused in (("eager", False), ("fused", True))
            }
            processor = fastvit.processor_for(models["eager"])
            rate = time_pipeline(paths, processor, args.batch_size, args.num_workers)
            print(f"| {name} | decode + preprocess only | {rate:.1f} |")
            for variant, model in models.items():
                rate = time_model(model, processor, args.batch_size)
                print(f"| {name} | {variant} model only (no I/O) | {rate:.1f} |")
            runs = [(v, m, False) for v, m in models.items()]
            if _gpu_decode_available(device, processor):
                runs.append(("fused + GPU JPEG decode", models["fused"], True))
            for variant, model, gpu in runs:
                kw = dict(batch_size=args.batch_size, num_workers=args.num_workers, gpu_decode=gpu)
                fastvit.embed(model, paths[: args.batch_size], **kw)  # warm-up
                result = fastvit.embed(model, paths, **kw)
                print(f"| {name} | embed end to end, {variant} | {result.images_per_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
