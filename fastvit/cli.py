"""The ``fastvit`` command line (also ``python -m fastvit``).

    fastvit list [PATTERN]                 models: name, HF repo, parameters, task
    fastvit info                           versions, device, which kernels run and why
    fastvit bench [MODEL] [options]        eager vs fused (vs torch.compile): images/s, speedup, max |diff|
    fastvit bench MODEL --latency          batch-1 latency: eager, fused, fused + CUDA graphs, compile, reduce-overhead
    fastvit run script.py [args...]        run an unchanged script with transformers patched

Errors are one line on stderr and a non-zero exit code (2: bad usage or input, 1: a failure while running).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import fastvit
from fastvit.benchmark import (
    DTYPES,
    ModelVariants,
    Timing,
    Unavailable,
    forward_fn,
    main_output,
    max_abs_diff,
    measure,
    pixel_values,
)
from fastvit.fused.status import kernel_path, kernel_status

CPU_DEFAULTS = {"batch": 4, "warmup": 0, "iters": 3}  # the first (untimed) call is the warm-up
CUDA_DEFAULTS = {"batch": 64, "warmup": 5, "iters": 30}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _err(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ list


def count_params(config: dict, task: str) -> int | None:
    """Parameters of the model a config builds, counted on the meta device (no memory, no init); None if unknown."""
    from fastvit.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(config, task)
    except Exception:  # noqa: BLE001 - family not available: shown as "?"
        return None
    return sum(p.numel() for p in model.parameters())


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def cmd_list(args: argparse.Namespace) -> int:
    from fastvit import registry

    names = registry.list_models(args.pattern)
    if not names:
        raise CLIError(f"no model matches {args.pattern!r}; `fastvit list` shows all")
    aliases: dict[str, list[str]] = {}
    for alias, target in registry.aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in names:
        info = registry.get_model_info(name)
        shown = name + (f" ({', '.join(sorted(aliases[name]))})" if name in aliases else "")
        rows.append((shown, info.repo_id, _fmt_params(count_params(info.config, info.task)), info.task))
    header = ("name (alias)", "HF repo", "params", "task")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    print(f"\n{len(rows)} models; default: {registry.DEFAULT_MODEL}. Names, aliases and repo ids are all accepted.")
    return 0


# ------------------------------------------------------------------------------------------------------ info


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    print(f"fastvit {fastvit.__version__}")
    print(
        f"python {platform.python_version()} · torch {torch.__version__} · triton {_version('triton')} · "
        f"transformers {_version('transformers')} (optional)"
    )
    devices = ["cpu"]
    if torch.cuda.is_available():
        cap = ".".join(map(str, torch.cuda.get_device_capability()))
        print(f"device: cuda · {torch.cuda.get_device_name()} (compute capability {cap}, CUDA {torch.version.cuda})")
        devices.insert(0, "cuda")
    else:
        print(f"device: cpu only (no CUDA GPU visible to torch {torch.__version__}) · {os.cpu_count()} CPU threads")
    print(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '(unset)')}")
    for device in devices:
        print(f"kernels for {device} tensors:")
        for name, status in kernel_status(device):
            print(f"  {name:<20} {status}")
    return 0


# ----------------------------------------------------------------------------------------------------- bench


def _resolve_device(requested: str | None) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device cuda: no CUDA GPU is available to torch {torch.__version__}; use --device cpu")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_weights(name: str, pretrained: bool | None) -> tuple[bool, str]:
    """(pretrained, a sentence for the output). Default: pretrained only when the checkpoint is cached locally."""
    if os.path.isdir(name):
        return True, f"weights: from {name}"
    from fastvit.registry import get_model_info

    try:
        info = get_model_info(name)
    except ValueError as e:
        raise CLIError(str(e)) from e
    try:
        from fastvit.hub import find_cached

        cached = find_cached(info.repo_id)
    except ImportError:
        cached = None
    if pretrained is True:
        return True, f"weights: pretrained {info.repo_id}" + (f" (cached at {cached})" if cached else " (downloading)")
    if pretrained is None and cached is not None:
        return True, f"weights: pretrained {info.repo_id} (cached at {cached})"
    why = "--random" if pretrained is False else f"no cached checkpoint for {info.repo_id}; --pretrained downloads it"
    return False, f"weights: RANDOM ({why}). Speed is representative; outputs are not meaningful predictions."


class _Progress:
    """Progress on stderr: one line per step, plus a live call counter when stderr is a terminal."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.step, self.quiet = total, 0, quiet
        self.tty = sys.stderr.isatty()

    def start(self, what: str) -> float:
        self.step += 1
        if not self.quiet:
            _err(f"[{self.step}/{self.total}] {what}")
        return time.perf_counter()

    def counting(self, fn: Callable[[], Any], label: str) -> Callable[[], Any]:
        if self.quiet or not self.tty:
            return fn
        calls = [0]

        def wrapped():
            calls[0] += 1
            sys.stderr.write(f"\r    {label}: call {calls[0]}")
            sys.stderr.flush()
            return fn()

        return wrapped

    def done(self, t0: float, what: str = "") -> None:
        if not self.quiet:
            if self.tty:
                sys.stderr.write("\r\033[K")
            _err(f"    done in {time.perf_counter() - t0:.1f} s{what}")


def _variants_for(args: argparse.Namespace, device: str) -> tuple[list[str], list[str]]:
    """(variants to run, notes about the ones left out) for the chosen mode and device."""
    cuda = device == "cuda"
    notes = []
    if args.latency:
        variants = ["eager", "fused"]
        if cuda:
            variants += ["fused_cuda_graphs", "compile", "compile_reduce_overhead"]
        else:
            notes.append("CPU: no CUDA graphs (fused + CUDA graphs and compile reduce-overhead need CUDA)")
            if args.compile:
                variants.append("compile")
            else:
                notes.append("CPU: torch.compile left out (add --compile; compiling takes minutes on a small CPU)")
        return variants, notes
    return ["eager", "fused"] + (["compile"] if args.compile else []), notes


def cmd_bench(args: argparse.Namespace) -> int:
    from fastvit.registry import DEFAULT_MODEL

    name = args.model or DEFAULT_MODEL
    device = _resolve_device(args.device)
    defaults = CUDA_DEFAULTS if device == "cuda" else CPU_DEFAULTS
    dtype_name = args.dtype or ("bf16" if device == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    batch = args.batch if args.batch is not None else (1 if args.latency else defaults["batch"])
    warmup = args.warmup if args.warmup is not None else defaults["warmup"]
    iters = args.iters if args.iters is not None else defaults["iters"] * (5 if args.latency else 1)
    for flag, value in (("--batch", batch), ("--iters", iters), ("--image-size", args.image_size)):
        if value < 1:
            raise CLIError(f"{flag} must be at least 1, got {value}")
    if warmup < 0:
        raise CLIError(f"--warmup must be at least 0, got {warmup}")
    pretrained, weights_line = _resolve_weights(name, args.pretrained)
    variants, notes = _variants_for(args, device)
    task = args.task
    if task is None and not os.path.isdir(name):
        from fastvit.registry import get_model_info

        if "vision_config" in get_model_info(name).config:  # AltCLIP: images go to the vision tower
            task = "vision"
            notes.append("task: vision (the image tower; --task features needs text inputs too)")

    mode = "batch-1 latency" if args.latency else "throughput"
    print(
        f"fastvit bench {name} · {mode} · {device} {dtype_name} · batch {batch} · {args.image_size}x{args.image_size}"
    )
    print(weights_line)
    print(f"kernels: {kernel_path(device)}")
    explicit = any(v is not None for v in (args.batch, args.iters, args.warmup))
    if device == "cpu" and not explicit:
        print(
            f"CPU defaults: batch {batch}, 1 untimed + {iters} timed calls per variant (--batch/--iters/--warmup "
            "for more)"
        )
    for note in notes:
        print(note)
    sys.stdout.flush()

    progress = _Progress(total=1 + len(variants), quiet=args.quiet)
    t0 = progress.start(f"loading {name} ({'pretrained' if pretrained else 'random'} weights) on {device}")
    try:
        mv = ModelVariants(name, device=device, dtype=dtype, pretrained=pretrained, task=task)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e).splitlines()[0]) from e
    except (ImportError, AttributeError) as e:
        raise CLIError(f"fastvit.load is not available ({type(e).__name__}: {e})", code=1) from e
    pixels = pixel_values(mv.model, batch, args.image_size, device, dtype)
    progress.done(t0)

    results: dict[str, Timing | str] = {}
    diffs: dict[str, float | None] = {}
    ref = None
    failed = False
    for variant in variants:
        t0 = progress.start(f"{variant}: 1 untimed + {warmup} warm-up + {iters} timed calls")
        try:
            fn = forward_fn(mv.get(variant), pixels)
            out = main_output(fn())  # first call: compile / capture / autotune, not timed
            if variant == "eager":
                ref = out.float()
            diffs[variant] = max_abs_diff(out, ref) if ref is not None and variant != "eager" else None
            del out
            results[variant] = measure(progress.counting(fn, variant), device, warmup=warmup, iters=iters)
            progress.done(t0)
        except Unavailable as e:
            results[variant] = f"n/a: {e}"
            progress.done(t0, " (not available)")
        except Exception as e:  # noqa: BLE001 - one failing variant does not stop the others
            failed = True
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            results[variant] = f"FAILED: {type(e).__name__}: {first}"[:200]
            progress.done(t0, " (failed)")
    if mv.patch_report is not None and not args.quiet:
        print(f"patch: {str(mv.patch_report).strip()}")
    print()
    print(format_table(results, diffs, batch, latency=args.latency))
    return 1 if failed else 0


def format_table(results: dict[str, Timing | str], diffs: dict[str, float | None], batch: int, *, latency: bool) -> str:
    """The bench result table: time per call (median, p20-p80), images/s, speedup vs eager, max |diff| vs eager."""
    base = results.get("eager")
    base_ms = base.median_ms if isinstance(base, Timing) else None
    head = "ms (median, p20-p80)" if latency else "ms/batch (median, p20-p80)"
    lines = [f"{'variant':<26} {head:>28} {'images/s':>10} {'vs eager':>9} {'max |diff| vs eager':>20}"]
    for variant, r in results.items():
        if not isinstance(r, Timing):
            lines.append(f"{variant:<26} {r}")
            continue
        spread = f"{r.median_ms:.3f} ({r.p20_ms:.3f}-{r.p80_ms:.3f})"
        speed = f"{base_ms / r.median_ms:.2f}x" if base_ms else "–"
        diff = diffs.get(variant)
        diff_s = "–" if diff is None else f"{diff:.2e}"
        lines.append(f"{variant:<26} {spread:>28} {batch * 1e3 / r.median_ms:>10.1f} {speed:>9} {diff_s:>20}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        raise CLIError(f"no such script: {args.script}")
    try:
        from fastvit.runner import run_script
    except ImportError as e:
        raise CLIError(f"fastvit run is not available: fastvit.runner is missing ({e})", code=1) from e
    return int(run_script(args.script, list(args.args)) or 0)


# ---------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastvit", description="Triton-accelerated vision models: list, info, bench, run.")
    p.add_argument("--version", action="version", version=f"fastvit {fastvit.__version__}")
    sub = p.add_subparsers(dest="command", metavar="{list,info,bench,run}")
    sub.required = True

    s = sub.add_parser("list", help="registered models: name, HF repo, parameters, task")
    s.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. 'convnext*'")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="versions, device and which kernels run (and why)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "bench",
        help="eager vs fused (vs torch.compile): images/s, speedup, max |diff|",
        description="Benchmark a model: fastvit eager vs fused (vs torch.compile). Without a cached checkpoint the "
        "weights are random (said in the output). CPU defaults are small: batch 4, 3 timed calls after one untimed "
        "call.",
    )
    s.add_argument("model", nargs="?", default=None, help="registered name, alias, HF repo id or local directory")
    s.add_argument(
        "--batch", type=int, default=None, help="batch size (default: 64 on CUDA, 4 on CPU, 1 with --latency)"
    )
    s.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    s.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    s.add_argument("--image-size", type=int, default=224, help="input resolution (default 224)")
    s.add_argument("--task", default=None, help="model head, e.g. vision for altclip (default: the checkpoint's)")
    s.add_argument("--compile", action="store_true", help="also time torch.compile of the eager model")
    weights = s.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        dest="pretrained",
        action="store_true",
        default=None,
        help="pretrained weights (downloaded if not cached)",
    )
    weights.add_argument("--random", dest="pretrained", action="store_false", help="random weights")
    s.add_argument(
        "--latency",
        action="store_true",
        help="batch-1 latency: eager, fused, fused + CUDA graphs, compile, compile reduce-overhead",
    )
    s.add_argument("--iters", type=int, default=None, help="timed calls per variant")
    s.add_argument("--warmup", type=int, default=None, help="warm-up calls per variant")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("run", help="run a script with transformers patched (exit code as the script)")
    s.add_argument("script", help="path of the Python script")
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    s.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastvit`` and ``python -m fastvit``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        _err(f"fastvit: error: {e}")
        return e.code
    except KeyboardInterrupt:
        _err("fastvit: interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback on request
        if os.environ.get("FASTVIT_DEBUG") == "1":
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _err(f"fastvit: error: {type(e).__name__}: {first} (FASTVIT_DEBUG=1 shows the traceback)")
        return 1
