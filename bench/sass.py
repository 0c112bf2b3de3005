"""sm_90 resource and SASS report of the Triton launches of fused forwards, without a GPU.

    python -m bench.sass [--models convnext-tiny dinov2-base ...] [--batch 64 1] [--json] [--jobs 2]

Each model runs one fused forward on the meta device (bf16) with the kernel launches recorded instead of run
(``fastvit_kernels._dispatch.recording``). Every launch is then compiled for sm_90 through the kernel's own JIT
path (``JITFunction.warmup``, so the same specialisation of integers and pointer alignment as a real launch; for an
autotuned kernel, every config its pruner keeps) under a compile-only driver that reports an H100, and its cubin is
read back with cuobjdump / nvdisasm (shipped with triton). Per compiled kernel:

  * registers, stack bytes, local bytes, spill instructions (STL/LDL), shared memory, programs per SM (H100: 64K
    registers, 228 KB shared memory, 64 warps, 32 blocks per SM) and waves over 132 SMs;
  * the width of the global loads/stores of the main tensors (the pointer arguments within 16x of the largest
    tensor of the launch, of 64K elements or more) and of every tensor argument: each LDG/STG/LDGSTS is
    attributed, through the line info, to the ``tl.load`` / ``tl.store`` it comes from, and that call's pointer
    to the kernel argument it derives from;
  * barriers and shared-memory instructions, in all and inside loop nests with a ``tl.static_range`` loop (the
    depthwise-conv taps);
  * ``tl.dot`` count and the tensor-core instructions they became (HGMMA = wgmma; HMMA = the older mma path).

``tests/kernels/test_sass.py`` asserts on this report (no spills, no local memory, 16-byte main accesses, no barrier
or shared memory in an unrolled tap loop, wgmma for dots).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for real (a process that imported triton interpreted cannot)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _cache_dir() -> str:
    """A triton cache per version of the kernel sources: triton keys its cache on a function's text, not its place
    in the file, so a cached cubin's line info (which this report reads) goes stale when lines above it move."""
    import hashlib

    kernels = Path(__file__).resolve().parent.parent / "kernels"
    h = hashlib.sha256(str(kernels).encode())  # line info names the file: a checkout elsewhere compiles afresh
    for f in sorted(kernels.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return str(Path.home() / ".cache" / "fastvit-sass" / h.hexdigest()[:16])


os.environ["TRITON_CACHE_DIR"] = _cache_dir()

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # H100 / H200
SM_COUNT = 132  # H100 SXM (H200: 132)
SM_REGS, SM_SMEM, SM_WARPS, SM_BLOCKS = 65536, 233472, 64, 32  # per SM, sm_90
SMEM_RESERVED = 1024  # shared memory the driver reserves per block on sm_90
MAIN_TENSOR_RATIO = 16  # a pointer argument is a main tensor if within this factor of the launch's largest one
MAIN_TENSOR_MIN = 1 << 16  # ... and has at least this many elements (not a parameter vector, a pooled row)

# model name -> (task, input kind, sizes): a fused forward of each, bf16, at each batch size
MODELS: dict[str, tuple[str | None, str, tuple[int, ...]]] = {
    "convnext-tiny-224": (None, "image", (224,)),
    "convnext-base-224": (None, "image", (224,)),
    "convnext-large-224": (None, "image", (224,)),
    "convnextv2-atto-1k-224": (None, "image", (224,)),
    "convnextv2-tiny-1k-224": (None, "image", (224,)),
    "convnextv2-huge-1k-224": (None, "image", (224,)),
    "dinov2-base": (None, "image", (224, 518)),  # S = 257 and 1370
    "dinov2-giant": (None, "image", (224, 518)),
    "vit-hybrid-base-bit-384": (None, "image", (384,)),  # S = 577 (197 tokens at 224 is covered by dinov2)
    "altclip/vision": ("vision", "image", (224,)),  # S = 257
    "altclip/text": ("text", "text", (77,)),  # S = 77, padding mask
}
BATCHES = (64, 1)


# ----------------------------------------------------------------------------------------------------------------
# compile-only driver: the JIT's own specialisation and compile path, for a GPU that is not there
# ----------------------------------------------------------------------------------------------------------------


class _CompileOnlyDriver:
    """Enough of a triton driver for ``JITFunction.warmup``: device 0 is an sm_90 GPU; nothing is launched."""

    def __init__(self, target: GPUTarget = TARGET) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def compile_only() -> Iterator[None]:
    """Make ``JITFunction.warmup`` compile for sm_90 on a machine without a GPU."""
    old = _driver._active
    _driver.set_active(_CompileOnlyDriver())
    try:
        yield
    finally:
        _driver._active = old


def compile_launch(launch) -> list[tuple[Any, Any]]:
    """Compile one recorded launch (``fastvit_kernels._dispatch.Launch``) as the JIT would: ``[(config,
    CompiledKernel)]``, one per config the autotuner's pruner keeps (the config passed, for a plain kernel)."""
    with compile_only():
        if launch.autotuned:
            return [
                (cfg, launch.fn.warmup(*launch.args, grid=(1,), **launch.kwargs, **cfg.all_kwargs()))
                for cfg in launch.configs()
            ]
        return [(launch.configs()[0], launch.fn.warmup(*launch.args, grid=(1,), **launch.kwargs))]


# ----------------------------------------------------------------------------------------------------------------
# source analysis: which kernel argument each tl.load / tl.store line reads or writes; the unrolled loops
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _SourceMap:
    file: str
    access_roots: dict[int, set[str]]  # line of a tl.load / tl.store -> kernel arguments its pointer derives from
    unrolled_lines: set[int]  # lines inside ``tl.static_range`` loops and the loops around them


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _is_tl_call(node: ast.AST, attrs: tuple[str, ...]) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in attrs
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "tl"
    )


@cache
def source_map(module_name: str) -> _SourceMap:
    """Data flow of pointer names through the @triton.jit functions of a kernel module (assignments, and helper
    calls by position), to a fixed point. Read from each function's source as triton took it at import (so the
    lines match the compiled kernels' line info even if the file changed since)."""
    module = importlib.import_module(module_name)
    funcs: dict[str, ast.FunctionDef] = {}
    file = None
    for obj in vars(module).values():
        if not hasattr(obj, "raw_src") or getattr(obj, "module", None) != module_name:  # the module's own @triton.jit
            continue
        tree = ast.parse(textwrap.dedent("".join(obj.raw_src)))
        ast.increment_lineno(tree, obj.starting_line_number - 1)
        f = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
        funcs[f.name] = f
        file = file or inspect.getsourcefile(obj.fn)
    params = {name: [a.arg for a in f.args.args] for name, f in funcs.items()}
    # roots[f][var]: kernel-argument names var derives from; a function's own parameters start as themselves
    roots: dict[str, dict[str, set[str]]] = {name: {p: {p} for p in ps} for name, ps in params.items()}

    def expr_roots(f: str, node: ast.AST) -> set[str]:
        out: set[str] = set()
        for n in _names(node):
            out |= roots[f].get(n, set())
        return out

    for _ in range(8):  # fixed point (helpers call helpers at most a few deep)
        changed = False
        for fname, f in funcs.items():
            for node in ast.walk(f):
                targets, value = [], None
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                    targets, value = [node.target], node.value
                for t in targets:
                    for name in _names(t):
                        new = expr_roots(fname, value)
                        if not new <= roots[fname].get(name, set()):
                            roots[fname][name] = roots[fname].get(name, set()) | new
                            changed = True
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs:
                    callee = node.func.id
                    for p, a in zip(params[callee], node.args, strict=False):
                        new = expr_roots(fname, a)
                        if not new <= roots[callee][p]:
                            roots[callee][p] |= new
                            changed = True
        if not changed:
            break
    kernel_args = {p for f, ps in params.items() for p in ps if _is_kernel(funcs[f], funcs)}
    access_roots: dict[int, set[str]] = {}
    unrolled: set[int] = set()
    for fname, f in funcs.items():
        for node in ast.walk(f):
            if _is_tl_call(node, ("load", "store")):
                ptr = node.args[0] if node.args else next(k.value for k in node.keywords if k.arg == "pointer")
                access_roots[node.lineno] = expr_roots(fname, ptr) & kernel_args
            if isinstance(node, ast.For) and any(
                isinstance(inner, ast.For) and _is_tl_call(inner.iter, ("static_range",)) for inner in ast.walk(node)
            ):  # an unrolled loop, or a loop around one (the depthwise-conv taps: rows, then unrolled columns)
                unrolled |= set(range(node.lineno, node.end_lineno + 1))
    return _SourceMap(file, access_roots, unrolled)


def _is_kernel(f: ast.FunctionDef, funcs: dict[str, ast.FunctionDef]) -> bool:
    """A @triton.jit function that no other function of the module calls (a launched kernel)."""
    called = {
        n.func.id
        for g in funcs.values()
        for n in ast.walk(g)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return f.name not in called


# ----------------------------------------------------------------------------------------------------------------
# cubin analysis
# ----------------------------------------------------------------------------------------------------------------

_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_LINE = re.compile(r'//## File "(?P<file>[^"]+)", line (?P<line>\d+)')
_INSN = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(?P<op>[A-Z][A-Z0-9_.]*)")
_GLOBAL = ("LDG", "STG", "LDGSTS", "UTMALDG", "UTMASTG", "UBLKCP", "REDG", "ATOMG")
_SHARED = ("LDS", "STS", "LDSM", "STSM")
_WIDTH = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def _tool(name: str) -> str:
    path = _BIN / name
    return str(path) if path.exists() else name


def _width(op: str) -> int:
    """Bytes per thread of a global access opcode (LDG.E.128 -> 16; LDGSTS and TMA copies count as 16)."""
    base = op.split(".")[0]
    if base in ("LDGSTS", "UTMALDG", "UTMASTG", "UBLKCP"):
        return 16
    for part in op.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 4


def sass_of(cubin: bytes) -> tuple[str, dict[str, int]]:
    """(SASS with line info, resource usage {REG, STACK, SHARED, LOCAL}) of a cubin."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        sass = subprocess.run([_tool("nvdisasm"), "-c", "-g", path], capture_output=True, text=True, check=True)
        res = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True, check=True
        )
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout)}
    return sass.stdout, usage


def programs_per_sm(regs: int, shared: int, num_warps: int) -> int:
    """Resident programs per SM on sm_90 from registers (allocated per warp in units of 256), shared memory and
    warps; 0 if one does not fit."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = (SM_REGS // regs_per_warp) // num_warps
    by_smem = SM_SMEM // (shared + SMEM_RESERVED)
    return max(0, min(by_regs, by_smem, SM_WARPS // num_warps, SM_BLOCKS))


@dataclasses.dataclass
class KernelReport:
    kernel: str
    launch: str  # the model launches that compiled to this specialisation, e.g. "convnext-tiny-224 B=64 #3"
    config: dict[str, Any]  # constexprs + num_warps / num_stages
    grid: int
    regs: int
    stack: int
    local: int
    spills: int  # STL + LDL instructions
    shared: int
    programs_per_sm: int
    waves: float
    main_tensors: list[str]
    main_widths: dict[str, list[int]]  # main tensor -> sorted distinct access widths (bytes per thread)
    other_widths: list[int]  # widths of the remaining global accesses
    barriers: int
    shared_ops: int
    unrolled_barriers: int  # inside tl.static_range loops and the loops around them (the tap loops)
    unrolled_shared_ops: int
    dots: int  # tt.dot in the kernel
    hgmma: int
    hmma: int
    widths: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # the same for every tensor argument
    uses: list[str] = dataclasses.field(default_factory=list)
    hash: str = ""  # the compiled kernel's (triton cache key)

    @property
    def main_16b(self) -> bool:
        return all(w == [16] for w in self.main_widths.values())


@cache
def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def analyse(ck, fn, config: dict, grid: int, main: list[str], launch: str, tensors: Sequence[str] = ()) -> KernelReport:
    """The report of one CompiledKernel of the @triton.jit ``fn``."""
    sass, usage = sass_of(ck.asm["cubin"])
    smap = source_map(fn.fn.__module__)
    ops: Counter[str] = Counter()
    widths: dict[str, set[int]] = {m: set() for m in (*tensors, *main)}
    other: set[int] = set()
    unrolled_bar = unrolled_smem = 0
    file = line = None
    for text in sass.splitlines():
        m = _LINE.search(text)
        if m:
            file, line = m["file"], int(m["line"])
            continue
        m = _INSN.match(text)
        if not m:
            continue
        op = m["op"]
        base = op.split(".")[0]
        ops[base] += 1
        here = file is not None and _same_file(file, smap.file)
        if base in _GLOBAL:
            roots = smap.access_roots.get(line, set()) if here else set()
            hit = [r for r in roots if r in widths]
            for r in hit:
                widths[r].add(_width(op))
            if not hit:
                other.add(_width(op))
        if here and line in smap.unrolled_lines:
            if base == "BAR":
                unrolled_bar += 1
            elif base in _SHARED:
                unrolled_smem += 1
    num_warps = ck.metadata.num_warps
    pps = programs_per_sm(usage.get("REG", 0), ck.metadata.shared, num_warps)
    consts = {}
    for k, v in ck.src.constants.items():  # keyed by (argument index,) in triton 3.x
        if isinstance(k, tuple) and len(k) == 1 and isinstance(k[0], int):
            k = fn.arg_names[k[0]]
        consts[k] = v
    cfg = {k: v for k, v in consts.items() if isinstance(k, str) and k.isupper() and isinstance(v, (int, bool))}
    cfg.update(config)
    cfg.setdefault("num_warps", num_warps)
    cfg.setdefault("num_stages", ck.metadata.num_stages)
    return KernelReport(
        kernel=fn.__name__,
        launch=launch,
        config=cfg,
        grid=grid,
        regs=usage.get("REG", 0),
        stack=usage.get("STACK", 0),
        local=usage.get("LOCAL", 0),
        spills=ops["STL"] + ops["LDL"],
        shared=ck.metadata.shared,
        programs_per_sm=pps,
        waves=round(grid / (SM_COUNT * pps), 2) if pps else float("inf"),
        main_tensors=main,
        main_widths={k: sorted(widths[k]) for k in main},
        widths={k: sorted(v) for k, v in widths.items()},
        other_widths=sorted(other),
        barriers=ops["BAR"],
        shared_ops=sum(ops[s] for s in _SHARED),
        unrolled_barriers=unrolled_bar,
        unrolled_shared_ops=unrolled_smem,
        dots=ck.asm["ttir"].count("tt.dot "),
        hgmma=ops["HGMMA"],
        hmma=ops["HMMA"],
    )


# ----------------------------------------------------------------------------------------------------------------
# recording the launches of a fused forward on the meta device
# ----------------------------------------------------------------------------------------------------------------


def record_model(model: str, batch: int, size: int, dtype: torch.dtype = torch.bfloat16) -> list:
    """The Triton launches (``_dispatch.Launch``) of one fused forward of ``model`` at ``batch`` x ``size`` on
    the meta device."""
    from fastvit_kernels import _dispatch

    import fastvit

    name = model.partition("/")[0]
    task, kind, _ = MODELS[model]
    with torch.device("meta"):  # also HF's random init: no memory even for dinov2-giant
        net = fastvit.load(name, fused=True, pretrained=False, task=task, device="meta", dtype=dtype)
        if kind == "text":
            inputs = {"input_ids": torch.zeros(batch, size, dtype=torch.long)}
            inputs["attention_mask"] = torch.ones(batch, size, dtype=torch.long)
        else:
            inputs = {"pixel_values": torch.empty(batch, 3, size, size, dtype=dtype)}
    with torch.inference_mode(), _dispatch.recording() as launches:
        net(**inputs)
    return launches


def _tensor_names(launch) -> list[str]:
    """The tensor arguments, without those standing in for an absent one (the same tensor passed twice)."""
    seen, names = set(), []
    for k, t in launch.tensors.items():
        if id(t) not in seen:
            names.append(k)
        seen.add(id(t))
    return names


def _main_tensors(launch) -> list[str]:
    tensors = launch.tensors
    if not tensors:
        return []
    largest = max(t.numel() for t in tensors.values())
    seen, main = set(), []
    for k, t in tensors.items():  # an argument standing in for an absent one (the same tensor) is not a main one
        if t.numel() * MAIN_TENSOR_RATIO >= largest and t.numel() >= MAIN_TENSOR_MIN and id(t) not in seen:
            main.append(k)
        seen.add(id(t))
    return main


def _spec_key(launch) -> tuple:
    """What decides the JIT's specialisation of a launch, coarsely (ints by ==1 and %16, tensors by dtype and
    16-byte alignment): launches with equal keys go to one worker, whose JIT cache then dedupes them."""
    args = []
    for a in launch.args:
        if isinstance(a, torch.Tensor):
            args.append((str(a.dtype), a.data_ptr() % 16))
        elif isinstance(a, bool) or not isinstance(a, int):
            args.append(type(a).__name__)
        else:
            args.append((a == 1, a % 16 == 0))
    return (launch.name, tuple(args), repr(sorted(launch.kwargs.items())))


def _report_group(group: Sequence[tuple[str, Any]]) -> list[KernelReport]:
    reports: dict[str, KernelReport] = {}
    for label, launch in group:
        main = _main_tensors(launch)
        for config, ck in compile_launch(launch):
            rep = reports.get(ck.hash)
            if rep is None:
                grid = 1
                for g in launch.grid_for(config if launch.autotuned else None):
                    grid *= int(g)
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages} if launch.autotuned else {}
                cfg = {**config.kwargs, **options}
                rep = reports[ck.hash] = analyse(ck, launch.fn, cfg, grid, main, label, _tensor_names(launch))
                rep.hash = ck.hash
            rep.uses.append(label)
    return list(reports.values())


_GROUPS: list = []  # the work of forked workers (inherited, not pickled: meta tensors and kernels stay put)


def _report_group_at(i: int) -> list[KernelReport]:
    return _report_group(_GROUPS[i])


def report_launches(launches: Sequence[tuple[str, Any]], jobs: int = 1) -> list[KernelReport]:
    """Compile every (label, launch) on ``jobs`` processes; one report per distinct compiled kernel (identical
    specialisations and configs compile once), listing the launches that use it."""
    groups: dict[tuple, list] = {}
    for label, launch in launches:
        groups.setdefault(_spec_key(launch), []).append((label, launch))
    _GROUPS[:] = list(groups.values())
    if jobs <= 1 or len(_GROUPS) <= 1:
        parts = [_report_group(g) for g in _GROUPS]
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_report_group_at, range(len(_GROUPS)), chunksize=1)
    merged: dict[tuple, KernelReport] = {}
    for rep in (r for part in parts for r in part):
        if rep.hash in merged:
            merged[rep.hash].uses += rep.uses
        else:
            merged[rep.hash] = rep
    return list(merged.values())


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------

_COLUMNS = (
    "kernel", "config", "grid", "regs", "spill", "stack", "local", "smem", "prog/SM", "waves",
    "main 16B", "bar", "smem ops", "tap-loop bar/smem", "dots", "HGMMA", "uses",
)  # fmt: skip


def _short_config(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k.startswith("BLOCK") or k in ("K", "num_warps", "num_stages")}
    return " ".join(f"{k.replace('BLOCK_', 'B').replace('num_', '')}={v}" for k, v in keep.items())


def table(reports: Sequence[KernelReport]) -> str:
    """A Markdown table, one row per compiled specialisation."""
    rows = []
    for r in sorted(reports, key=lambda r: (r.kernel, r.launch)):
        widths = ",".join(f"{k}:{'/'.join(map(str, v)) or '-'}" for k, v in r.main_widths.items())
        rows.append(
            (
                r.kernel, _short_config(r.config), r.grid, r.regs, r.spills, r.stack, r.local, r.shared,
                r.programs_per_sm, r.waves, ("yes " if r.main_16b else "NO ") + widths, r.barriers, r.shared_ops,
                f"{r.unrolled_barriers}/{r.unrolled_shared_ops}", r.dots, r.hgmma, f"{r.launch} (+{len(r.uses) - 1})",
            )
        )  # fmt: skip
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run(models: Sequence[str], batches: Sequence[int], jobs: int = 1) -> list[KernelReport]:
    """Record and compile the launches of every (model, batch, size)."""
    launches = []
    for model in models:
        for size in MODELS[model][2]:
            for batch in batches:
                recorded = record_model(model, batch, size)
                launches += [(f"{model} B={batch} {size} #{i}", r) for i, r in enumerate(recorded)]
    return report_launches(launches, jobs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sass", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    p.add_argument("--batch", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--load", metavar="FILE", help="print the table of a saved --json report instead of compiling")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: all CPUs)")
    args = p.parse_args(argv)
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        names = {f.name for f in dataclasses.fields(KernelReport)}
        reports = [KernelReport(**{k: v for k, v in r.items() if k in names}) for r in saved["kernels"]]
        print(f"triton {saved['triton']}, {saved['target']}, {len(reports)} compiled specialisations\n")
        print(table(reports))
        return 0
    reports = run(args.models, args.batch, args.jobs)
    if args.json:
        info = {"triton": triton.__version__, "torch": torch.__version__, "target": "sm_90"}
        print(json.dumps({**info, "kernels": [dataclasses.asdict(r) for r in reports]}, default=str))
    else:
        print(f"triton {triton.__version__}, sm_90, {len(reports)} compiled specialisations\n")
        print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
