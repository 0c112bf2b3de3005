"""The ``fastvit`` command line (also ``python -m fastvit``).

    fastvit list [PATTERN]                 models: name, HF repo, parameters, task
    fastvit info                           versions, device, which kernels run and why
    fastvit bench [MODEL] [options]        eager vs fused (vs torch.compile), interleaved: images/s, speedup ± spread
    fastvit bench MODEL --latency          batch-1 latency: eager, fused, fused + CUDA graphs, compile, reduce-overhead
    fastvit run script.py [args...]        run an unchanged script with transformers patched
    fastvit profile MODEL [--json]         bytes, FLOPs and roofline of one forward, eager vs fused (no GPU needed)
    fastvit embed MODEL INPUT... --out F   embed image files into Parquet / .npy (resumable; see cli_pipeline)
    fastvit predict MODEL INPUT...         top-k labels (AltCLIP: zero-shot with --labels)
    fastvit save NAME DIR                  write an HF checkpoint directory (fastvit.load and HF read it)

Errors are one line on stderr and a non-zero exit code (2: bad usage or input, 1: a failure while running).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

import fastvit
from fastvit.benchmark import (
    DTYPES,
    WIDE_SPREAD,
    ModelVariants,
    VariantResult,
    default_device,
    default_dtype,
    forward_fn,
    pixel_values,
    run_variants,
    set_threads,
)
from fastvit.fused.status import gemm_choices, kernel_path, kernel_status

CPU_DEFAULTS = {"batch": 4, "warmup": 1, "budget_s": 10.0}  # plus the first (untimed) call of each variant
CUDA_DEFAULTS = {"batch": 64, "warmup": 5, "budget_s": 5.0}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _err(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ list


def count_params(config: dict, task: str, errors: dict[str, str] | None = None) -> int | None:
    """Parameters of the model a config builds, counted on the meta device (no memory, no init); None if the model
    cannot be built here, with the reason in ``errors[config["model_type"]]`` when ``errors`` is given."""
    from fastvit.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(config, task)
    except Exception as e:  # noqa: BLE001 - e.g. a dependency missing: shown as "?", explained below the table
        if errors is not None:
            errors.setdefault(str(config.get("model_type", "?")), f"{type(e).__name__}: {e}")
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
    errors: dict[str, str] = {}  # model_type -> why its models cannot be built (their params show as "?")
    for name in names:
        info = registry.get_model_info(name)
        shown = name + (f" ({', '.join(sorted(aliases[name]))})" if name in aliases else "")
        rows.append((shown, info.repo_id, _fmt_params(count_params(info.config, info.task, errors)), info.task))
    header = ("name (alias)", "HF repo", "params", "task")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    print(f"\n{len(rows)} models; default: {registry.DEFAULT_MODEL}. Names, aliases and repo ids are all accepted.")
    for model_type, reason in sorted(errors.items()):
        print(f"params ?: {model_type} models cannot be built here ({reason})")
    return 0


# ------------------------------------------------------------------------------------------------------ info


def _version(module: str) -> str:
    """The module's version; "not installed"; or, installed but failing to import, the version and the reason."""
    try:
        return __import__(module).__version__
    except ImportError as e:
        from importlib import metadata

        try:
            installed = metadata.version(module)
        except metadata.PackageNotFoundError:
            return "not installed"
        return f"{installed} (installed, but `import {module}` fails: {type(e).__name__}: {e})"


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
    choices = gemm_choices()  # fused_linear's per-shape choice of the fused kernel vs cuBLAS (GPU runs only)
    print("fused_linear choices per GEMM shape:" if choices else "fused_linear choices: none timed yet (GPU only)")
    for line in choices:
        print(f"  {line}")
    return 0


# ----------------------------------------------------------------------------------------------------- bench


def _resolve_device(requested: str | None) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device cuda: no CUDA GPU is available to torch {torch.__version__}; use --device cpu")
    return requested or default_device()


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
    """Progress on stderr: one numbered line per step, indented notes under it."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.step, self.quiet = total, 0, quiet

    def start(self, what: str) -> None:
        self.step += 1
        if not self.quiet:
            _err(f"[{self.step}/{self.total}] {what}")

    def note(self, what: str) -> None:
        if not self.quiet:
            _err(f"    {what}")


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
    dtype_name = args.dtype or default_dtype(device)
    dtype = DTYPES[dtype_name]
    batch = args.batch if args.batch is not None else (1 if args.latency else defaults["batch"])
    warmup = args.warmup if args.warmup is not None else defaults["warmup"]
    budget_s = args.budget_s if args.budget_s is not None else defaults["budget_s"]
    iters = 1 if args.iters is None else args.iters
    for flag, value in (("--batch", batch), ("--image-size", args.image_size), ("--iters", iters)):
        if value < 1:
            raise CLIError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--warmup", warmup), ("--budget-s", budget_s)):
        if value < 0:
            raise CLIError(f"{flag} must be at least 0, got {value}")
    try:
        threads = set_threads(args.threads, device)
    except ValueError as e:
        raise CLIError(f"--{e}") from e
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
    default_threads = " (default on CPU; --threads N for more)" if device == "cpu" and args.threads is None else ""
    print(f"threads: {threads}{default_threads}")
    goal = f"{args.iters} rounds (--iters)" if args.iters else f"{budget_s:g} s budget (--budget-s), at least 3 rounds"
    print(f"timing: variants interleaved round by round, {goal}; 1 untimed + {warmup} warm-up calls each")
    for note in notes:
        print(note)
    sys.stdout.flush()

    progress = _Progress(total=1 + len(variants), quiet=args.quiet)
    progress.start(f"loading {name} ({'pretrained' if pretrained else 'random'} weights) on {device}")
    try:
        mv = ModelVariants(name, device=device, dtype=dtype, pretrained=pretrained, task=task)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e).splitlines()[0]) from e
    pixels = pixel_values(mv.model, batch, args.image_size, device, dtype)
    results = run_variants(
        lambda variant: forward_fn(mv.get(variant), pixels),
        variants,
        device,
        warmup=warmup,
        budget_s=budget_s,
        rounds=args.iters,
        log=progress.note,
        on_prepare=lambda i, variant: progress.start(f"{variant}: first call (untimed) + {warmup} warm-up"),
    )
    if mv.patch_report is not None and not args.quiet:
        print(f"patch: {str(mv.patch_report).strip()}")
    print()
    print(format_table(results, batch, latency=args.latency))
    for line in spread_warnings(results):
        print(line)
    return 1 if any(r.status == "failed" for r in results.values()) else 0


def format_table(results: dict[str, VariantResult], batch: int, *, latency: bool) -> str:
    """The bench table: time per call (median, p20-p80), its spread, images/s, speedup over eager with its spread
    (median and p20-p80 of the per-round ratios), max |diff| vs eager."""
    head = "ms (median, p20-p80)" if latency else "ms/batch (median, p20-p80)"
    lines = [
        f"{'variant':<24} {head:>28} {'spread':>7} {'images/s':>10} {'vs eager (p20-p80)':>20} "
        f"{'max |diff| vs eager':>20}"
    ]
    for variant, r in results.items():
        if r.timing is None:
            lines.append(f"{variant:<24} {'n/a' if r.status == 'unavailable' else 'FAILED'}: {r.message}"[:200])
            continue
        t = r.timing
        ms = f"{t.median_ms:.3f} ({t.p20_ms:.3f}-{t.p80_ms:.3f})"
        speed = str(r.ratio) if r.ratio is not None else "–"
        diff = "–" if r.diff is None else f"{r.diff:.2e}"
        lines.append(
            f"{variant:<24} {ms:>28} {t.spread:>7.1%} {batch * 1e3 / t.median_ms:>10.1f} {speed:>20} {diff:>20}"
        )
    return "\n".join(lines)


def spread_warnings(results: dict[str, VariantResult]) -> list[str]:
    """Warnings for timings too noisy to trust: a spread over :data:`WIDE_SPREAD` or too few rounds."""
    out = []
    for variant, r in results.items():
        if r.timing is None:
            continue
        if r.timing.spread > WIDE_SPREAD:
            out.append(
                f"warning: {variant}: spread {r.timing.spread:.0%} of the median (p20-p80) is wide; ratios closer to "
                "1.00x than that are noise (an idle machine, fewer --threads or a longer --budget-s help)"
            )
    rounds = min((r.timing.n for r in results.values() if r.timing is not None), default=0)
    if 0 < rounds < 5:
        out.append(f"note: {rounds} timed round(s) per variant: too few for a reliable spread (--budget-s, --iters)")
    return out


# ------------------------------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        raise CLIError(f"no such script: {args.script}")
    from fastvit.runner import run_script

    return int(run_script(args.script, list(args.args)) or 0)


# ---------------------------------------------------------------------------------------------------- parser


def cmd_profile(args: argparse.Namespace) -> int:
    from fastvit.profile import cmd_profile as run

    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:  # bad model name, GPU, sizes; --measure without CUDA
        raise CLIError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastvit", description="Triton-accelerated vision models: list, info, bench, run.")
    p.add_argument("--version", action="version", version=f"fastvit {fastvit.__version__}")
    sub = p.add_subparsers(dest="command", metavar="{list,info,bench,profile,run,embed,predict,save}")
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
        "weights are random (said in the output). The variants are timed interleaved (A B A B ...) until a time "
        "budget is spent; every time and ratio comes with its spread (p20-p80). CPU defaults: batch 4, 1 thread, "
        "10 s budget.",
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
    s.add_argument(
        "--budget-s", type=float, default=None, help="timing budget, all variants together (default 10 CPU, 5 CUDA)"
    )
    s.add_argument("--iters", type=int, default=None, help="exactly this many interleaved rounds instead of a budget")
    s.add_argument("--warmup", type=int, default=None, help="warm-up calls per variant (default 1 CPU, 5 CUDA)")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU: stable ratios)")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=cmd_bench)

    from fastvit.profile import add_parser as add_profile_parser  # issue 13: `fastvit profile`

    add_profile_parser(sub, cmd_profile)

    s = sub.add_parser("run", help="run a script with transformers patched (exit code as the script)")
    s.add_argument("script", help="path of the Python script")
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    s.set_defaults(func=cmd_run)

    from fastvit.cli_pipeline import add_pipeline_commands  # embed, predict, save (issue 17)

    add_pipeline_commands(sub)
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
