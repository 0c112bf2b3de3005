"""The ``embed``, ``predict`` and ``save`` subcommands of the ``fastvit`` CLI (registered by ``fastvit.cli``).

fastvit embed MODEL INPUT... --out FILE [--pool ...] [--batch-size N] [--device D] [--dtype T] [--num-workers N]
                                                     [--normalize]
fastvit predict MODEL INPUT... [--top-k 5] [--json] [--labels "a cat,a dog"] [--tokenizer tokenizer.json]
fastvit save NAME DIR [--random] [--max-shard-size 5GB]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from .embedding import DTYPES, POOLS


def _cli_error(message: str, code: int = 2) -> Exception:
    from .cli import CLIError

    return CLIError(message, code)


def _device(requested: str | None) -> str:
    from .cli import _resolve_device  # the CLI's one device check (cli imports this module lazily)

    return _resolve_device(requested)


def _load(name: str, device: str, dtype: torch.dtype | None, pretrained: bool = True, fused: bool = True):
    from .loading import load

    try:
        return load(name, device=device, dtype=dtype, pretrained=pretrained, fused=fused)
    except (ValueError, FileNotFoundError) as e:
        raise _cli_error(str(e).splitlines()[0]) from e


def _layers(text: str) -> list[int]:
    """``--layers 8,11`` -> [8, 11]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated block indices, got {text!r}") from None


def cmd_embed(args: argparse.Namespace) -> int:
    from .distributed import scale_out_requested

    if scale_out_requested(args):  # --ray or a torchrun rank (issue 19)
        from .distributed import cmd_embed as cmd_embed_scaled

        return cmd_embed_scaled(args)
    from .embedding import embed

    if not args.out.lower().endswith(".npy"):  # Parquet: check for pyarrow before loading the model
        from .embedding import _require_pyarrow

        try:
            _require_pyarrow()
        except ImportError as e:
            raise _cli_error(str(e)) from e
    device = _device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    model = _load(args.model, device, dtype, fused=not args.eager)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped files are listed below, once each
        try:
            result = embed(
                model,
                args.inputs,
                out=args.out,
                pool=args.pool,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                normalize=args.normalize,
                chunk_size=args.chunk_size,
                gpu_decode=False if args.no_gpu_decode else None,
                progress=not args.quiet,
                layers=args.layers,
            )
        except (ValueError, FileNotFoundError) as e:
            raise _cli_error(str(e)) from e
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{result.summary()}; written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .prediction import predict

    device = _device(args.device)
    model = _load(args.model, device, DTYPES[args.dtype] if args.dtype else None, fused=not args.eager)
    labels = [t.strip() for t in args.labels.split(",") if t.strip()] if args.labels else None
    try:
        preds = predict(model, args.inputs, top_k=args.top_k, labels=labels, tokenizer=args.tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise _cli_error(str(e)) from e
    if args.json:
        print(json.dumps([p.as_dict() for p in preds], indent=1, ensure_ascii=False))
    else:
        for p in preds:
            print(p.path)
            for label, prob in p.labels:
                print(f"  {prob:7.2%}  {label}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from .saving import save_pretrained

    model = _load(args.model, "cpu", None, pretrained=not args.random, fused=False)
    try:
        out = save_pretrained(model, args.directory, max_shard_size=args.max_shard_size)
    except ValueError as e:
        raise _cli_error(str(e)) from e
    print(f"saved {args.model} to {out} (config.json, safetensors, preprocessor_config.json)")
    return 0


def add_pipeline_commands(sub) -> None:
    """Register embed / predict / save on the ``fastvit`` subparsers."""
    s = sub.add_parser(
        "embed",
        help="embed image files into Parquet or .npy (resumable; bad files skipped)",
        description="Embed images (files, folders, globs, .txt lists of paths) with a fused model. Output: a "
        "Parquet directory (path, embedding) or x.npy + x.paths.txt; rerunning resumes.",
    )
    s.add_argument("model", help="registered name, alias, HF repo id or local checkpoint directory")
    s.add_argument("inputs", nargs="+", help="image files, folders (recursive), globs, or .txt files of paths")
    s.add_argument("--out", required=True, help="x.parquet (a directory of parts) or x.npy")
    s.add_argument(
        "--pool", choices=POOLS, default=None, help="default: DINOv2 cls, CLIP image_embeds, ConvNeXt pooler"
    )
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    s.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    s.add_argument("--num-workers", type=int, default=None, help="decoding worker processes (default: CPUs - 1, <= 8)")
    s.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    s.add_argument(
        "--chunk-size", type=int, default=4096, help="rows per written chunk (at most this is lost on a kill)"
    )
    s.add_argument("--no-gpu-decode", action="store_true", help="decode JPEGs with PIL on the CPU even on CUDA")
    s.add_argument("--eager", action="store_true", help="the eager model instead of the fused one")
    s.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="embed intermediate layers: comma-separated block indices, e.g. 8,11 or --layers=-4,-3,-2,-1 (each "
        "after the final norm, pooled with --pool cls|mean|cls+mean, concatenated)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    from .distributed import add_scale_out_arguments  # --ray --address --num-gpus --actors (issue 19)

    add_scale_out_arguments(s)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("predict", help="top-k labels per image (AltCLIP: zero-shot over --labels)")
    s.add_argument("model", help="a classification checkpoint, or altclip with --labels")
    s.add_argument("inputs", nargs="+", help="image files, folders, globs, or .txt files of paths")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("--labels", default=None, help="comma-separated zero-shot texts (CLIP models)")
    s.add_argument("--tokenizer", default=None, help="tokenizer.json for --labels (default: the checkpoint's)")
    s.add_argument("--device", choices=["cuda", "cpu"], default=None)
    s.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32")
    s.add_argument("--eager", action="store_true", help="the eager model instead of the fused one")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("save", help="save a model as an HF checkpoint directory (loadable by fastvit and HF)")
    s.add_argument("model", help="registered name, alias, HF repo id or local checkpoint directory")
    s.add_argument("directory", help="output directory")
    s.add_argument("--random", action="store_true", help="random weights (pretrained=False) instead of pretrained")
    s.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size (default 5GB)")
    s.set_defaults(func=cmd_save)
