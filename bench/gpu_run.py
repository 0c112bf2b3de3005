"""One prepared GPU run: every number fastvit needs from a rarely available H100/H200, in one command and one budget.

    python -m bench.gpu_run --out DIR [--budget-s 540]          # on the GPU machine (nothing installed, no network)
    python -m bench.gpu_run --out DIR --dry-run                 # the same steps on CPU: tiny shapes, Triton interpreter

Steps, in order (``--steps`` picks some):
  env         GPU, driver, torch, Triton, transformers, commit (printed and recorded)
  gpu_tests   ``pytest -m gpu`` on the test files that have such tests, with a time cap
  ceilings    device-to-device copy bandwidth and bf16 matmul throughput, measured now
  kernels     every kernel benchmark of ``bench/`` at the model shapes (GB/s or TFLOP/s, fraction of the ceilings)
  throughput  B=64 bf16 images/s of convnext-tiny, convnextv2-tiny, dinov2-base, AltCLIP vision: fastvit eager,
              HF transformers eager / SDPA (where the family exists in the installed transformers), fused,
              ``torch.compile`` default; variants timed interleaved (``fastvit.benchmark.run_variants``)
  latency     batch-1 ms: eager, HF, fused, fused + CUDA graphs (``load(..., cuda_graphs=True)``), torch.compile,
              compile ``mode="reduce-overhead"``
  profile     ``fastvit profile --measure`` of one model
Writes into DIR: ``results.jsonl`` (one JSON line per measurement and per step), ``results.md`` (tables),
``results.png`` (one plot), ``gpu_run.log`` (everything printed) and ``gpu_tests.log`` (the pytest output); the
short summary table is printed last.

Budget: every step and every item in it (a model, a kernel) has an estimate (``ESTIMATES``: GPU seconds, guessed
until a run measures them; the dry run's are for a loaded 2-core CPU). Before each step, the items of the steps not
yet run are admitted round by round while their estimates fit in the time left (every step's first item, then every
step's second, ...); the step runs its admitted items and may take their estimates plus its part of the slack. An
item not admitted is not started: it is recorded as skipped, with the reason. ``--plan`` prints this schedule
without running anything. The measuring steps run in a child process each, killed at the step's limit, so a hung
compile or a crashed CUDA context costs one item, not the run: the child appends each item's rows as soon as they
are measured (a model's non-compiled variants before its ``torch.compile`` ones), and after a crash the parent
records the item that died and starts a new child for the rest. ``results.md`` is rewritten after every step, so a
run cut short keeps its report. On a copy of the tree without ``.git``, ``FASTVIT_COMMIT`` names the commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_NAME, TESTS_LOG_NAME, MD_NAME, PNG_NAME = "gpu_run.log", "gpu_tests.log", "results.md", "results.png"

# (registry name, task) in priority order: the budget drops the last ones first
MODELS = [("convnext-tiny", None), ("dinov2-base", None), ("convnextv2-tiny", None), ("altclip", "vision")]
PROFILE_MODEL = ("convnext-tiny", None)
LATENCY_TARGETS_MS = {"convnext-tiny": 0.59, "convnextv2-tiny": 0.71, "dinov2-base": 0.74}  # H100, issue 20
STEPS = ("env", "gpu_tests", "ceilings", "kernels", "throughput", "latency", "profile")
CHILD_STEPS = ("ceilings", "kernels", "throughput", "latency", "profile")

# Estimated seconds: the steps run here, each item (a kernel benchmark, a model) of the steps run in a child, and
# a child's start. A step's plan is its estimate (its items' sum plus the child's start). GPU: guesses for an
# H100/H200 with cold compile caches (torch.compile dominates the model steps); replace them with the measured wall
# times in results.jsonl (rows of suite "run": "steps" and "items") after a run. Dry: a loaded 2-core CPU under
# TRITON_INTERPRET=1.
ESTIMATES = {
    "gpu": {
        "step": {"env": 5, "gpu_tests": 75},
        "item": {"ceilings": 8, "kernels": 10, "throughput": 45, "latency": 60, "profile": 25},
        "item_extra": {"attention": 14, "fused_linear": 15, "altclip": 75},  # larger than the step's default item
        "child_start": 6,  # python + torch + CUDA context in a new process
    },
    "dry": {
        "step": {"env": 5, "gpu_tests": 30},
        "item": {"ceilings": 5, "kernels": 4, "throughput": 9, "latency": 11, "profile": 10},
        "item_extra": {"convnext-tiny": 30, "convnextv2-tiny": 20},
        "child_start": 5,
    },
}


def item_estimate(est: dict, step: str, item: str) -> float:
    """Estimated seconds of one item of a step (``ESTIMATES``)."""
    return est["item_extra"].get(item, est["item"].get(step, 5.0))


REPORT_RESERVE_S = 4  # kept back for results.md, the plot and the summary
KILL_GRACE_S = 10  # a child may overrun its step's share by this much before it is killed

# The dry run's tiny models: the registry config of each target model, shrunk (same families, same code paths)
DRY_OVERRIDES = {
    "convnext-tiny": {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 48, 64], "num_labels": 10},
    "convnextv2-tiny": {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 48, 64], "num_labels": 10},
    "dinov2-base": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28},
    "altclip": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
        },
    },
}
DRY_IMAGE_SIZE = {"convnext-tiny": 32, "convnextv2-tiny": 32, "dinov2-base": 28, "altclip": 28}


@dataclass
class Settings:
    """What differs between the GPU run and the dry run."""

    dry: bool
    device: str
    dtype: str
    batch: int = 64
    image_size: int = 224
    time_s: float = 3.0  # interleaved timing budget per model case
    rounds: int | None = None  # or exactly this many interleaved rounds
    warmup: int | None = None  # warm-up calls per variant (default: bench_models' 2 throughput, 3 latency)
    kernel_iters: int | None = None
    kernel_warmup: int = 2
    variant_options: dict = field(default_factory=dict)
    tests_cap_s: float = 75.0  # at most, and at most the step's share

    @classmethod
    def make(cls, dry: bool) -> Settings:
        if dry:  # compile with dynamo only (inductor takes minutes on a small CPU); build the CUDA-only variants
            options = {"compile_backend": "eager", "cuda_only_on_cpu": True}
            return cls(
                True,
                "cpu",
                "fp32",
                batch=1,
                rounds=2,
                warmup=0,
                kernel_iters=1,
                kernel_warmup=0,
                variant_options=options,
            )
        return cls(False, "cuda", "bf16")


# ------------------------------------------------------------------------------------------------- output


class Out:
    """The output directory: the results file, the log, and the report written from them."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        path.mkdir(parents=True, exist_ok=True)
        self._log = (path / LOG_NAME).open("a")

    def log(self, line: str = "") -> None:
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def append(self, rows: Sequence[dict], **tags) -> None:
        from bench.results import append_results

        append_results([{**row, "run_id": self.run_id, **tags} for row in rows], self.path)

    def rows(self) -> list[dict]:
        from bench.results import load_results

        return [r for r in load_results(self.path) if r.get("run_id") == self.run_id]


def step_row(step: str, status: str, *, wall_s: float, estimate_s: float, note: str = "", device: str) -> dict:
    """The record of one step: ok / partial / failed / skipped, its wall time, its estimate and why."""
    from bench.common import environment

    return {
        "suite": "run",
        "bench": "steps",
        "case": step,
        "provider": "gpu_run",
        "device": device,
        "dtype": "-",
        "metric": "s",
        "value": round(wall_s, 1),
        "estimate_s": round(estimate_s, 1),
        "status": status,
        "error": note or None,
        "skipped": status == "skipped",
        **environment(device),
    }


# ------------------------------------------------------------------------------------------ child processes


def stream(cmd: list[str], out: Out, limit_s: float, *, log_file: Path | None = None, env: dict | None = None) -> int:
    """Run ``cmd``, echoing its output into the log (and ``log_file``); killed after ``limit_s``. Returns its exit
    code, or -9 when it was killed for time."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
        bufsize=1,
    )
    sink = log_file.open("a") if log_file else None

    def pump():
        for line in proc.stdout:
            out.log("    " + line.rstrip("\n"))
            if sink:
                sink.write(line)
                sink.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, limit_s))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -9
    reader.join(timeout=5)
    if sink:
        sink.close()
    return rc


# ------------------------------------------------------------------------------------------------- the run


class Run:
    """The parent process: schedules the steps within the budget and writes the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.make(args.dry_run)
        self.est = ESTIMATES["dry" if args.dry_run else "gpu"]
        self.clock = time.time  # plan() replaces it with a virtual one
        self.start = self.clock()
        self.deadline = self.start + args.budget_s
        self.out = Out(Path(args.out), run_id=_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f"))
        self.models = _parse_models(args.models)
        self.profile_model = PROFILE_MODEL[0] if PROFILE_MODEL in self.models else self.models[0][0]
        self.steps = [s for s in STEPS if s in set(args.steps.split(","))] if args.steps else list(STEPS)
        self.dry_dir: str | None = None  # the dry run's tiny config.json directories

    def left(self) -> float:
        return self.deadline - self.clock() - REPORT_RESERVE_S

    def item_estimate(self, step: str, item: str) -> float:
        return item_estimate(self.est, step, item)

    def items(self, step: str) -> list[str]:
        if step == "kernels":
            return kernel_names()
        if step in ("throughput", "latency"):
            return [m for m, _ in self.models]
        if step == "profile":
            return [self.profile_model]
        return [step]

    def need(self, step: str, index: int) -> float:
        """Estimated seconds of item ``index`` of ``step`` (the first also pays for the child's start)."""
        if step in self.est["step"]:
            return self.est["step"][step]
        return item_estimate(self.est, step, self.items(step)[index]) + (self.child_start(step) if index == 0 else 0)

    def admit(self, seconds: float, steps: Sequence[str]) -> dict[str, list[str]]:
        """The items of ``steps`` that fit in ``seconds`` by their estimates, admitted round by round (every step's
        first item, then every step's second, ...: the order of the steps breaks ties, the order of the items is
        their priority). ``env`` is always admitted."""
        chosen: dict[str, list[str]] = {step: [] for step in steps}
        spent = 0.0
        for index in range(max(len(self.items(step)) for step in steps)):
            for step in steps:
                items = self.items(step)
                if index >= len(items) or len(chosen[step]) < index:
                    continue
                need = self.need(step, index)
                if spent + need <= seconds or step == "env":
                    chosen[step].append(items[index])
                    spent += need
        return chosen

    def allot(self, step: str) -> tuple[list[str], float]:
        """(items of ``step`` to run, seconds it may take): what the admission of the steps not yet run gives it
        with the time left now, plus its part of the slack (proportional to its admitted estimate)."""
        later = self.steps[self.steps.index(step) :]
        left = self.left()
        chosen = self.admit(left, later)
        planned = {s: sum(self.need(s, i) for i in range(len(chosen[s]))) for s in later}
        total = sum(planned.values())
        slack = max(0.0, left - total)
        return chosen[step], planned[step] + (slack * planned[step] / total if total else 0.0)

    def fitting(self, step: str, items: Sequence[str], seconds: float) -> list[str]:
        """The first items whose estimates, plus a child's start, fit in ``seconds`` (after a child died)."""
        left = seconds - self.child_start(step)
        fits = []
        for item in items:
            left -= item_estimate(self.est, step, item)
            if left < 0:
                break
            fits.append(item)
        return fits

    def plan(self) -> list[str]:
        """The schedule if every step and item took exactly its estimate: one line per step."""
        now = [self.start]
        self.clock = lambda: now[0]
        lines = []
        try:
            for step in self.steps:
                runs, share = self.allot(step)
                took = sum(self.need(step, i) for i in range(len(runs)))
                now[0] += took
                left_out = [i for i in self.items(step) if i not in runs]
                skip = f"; skipped: {', '.join(left_out)}" if left_out else ""
                lines.append(f"{step:<11} {took:5.0f} s (may take {share:.0f} s): {', '.join(runs) or '-'}{skip}")
        finally:
            self.clock = time.time
        lines.append(f"{'total':<11} {now[0] - self.start:5.0f} s of {self.args.budget_s:g} s")
        return lines

    def run(self) -> int:
        s = self.settings
        mode = "DRY RUN on CPU (TRITON_INTERPRET=1, tiny shapes)" if s.dry else f"{s.device} {s.dtype}"
        self.out.log(f"fastvit gpu_run · {mode} · budget {self.args.budget_s:g} s · steps {', '.join(self.steps)}")
        self.out.log("plan, if every item takes its estimate:")
        for line in self.plan():
            self.out.log(f"    {line}")
        if s.dry:
            self.dry_dir = tempfile.mkdtemp(prefix="fastvit-dry-")
            write_dry_configs(self.dry_dir, self.models)
        try:
            for step in self.steps:
                self.run_step(step)
                self.write_report()
        finally:
            if self.dry_dir:
                shutil.rmtree(self.dry_dir, ignore_errors=True)
        self.write_report(plot=True)
        self.out.log()
        if s.dry:
            self.out.log("DRY RUN: CPU, Triton interpreter, tiny models: the numbers below only prove the code paths")
        self.out.log(summary(self.out.rows(), time.time() - self.start, self.args.budget_s))
        failed = [r for r in self.out.rows() if r.get("suite") == "run" and r.get("status") == "failed"]
        return 1 if failed else 0

    def run_step(self, step: str) -> None:
        est = self.plan_estimate(step)
        items, share = self.allot(step)
        t0 = time.time()
        self.out.log(f"\n==> {step} (estimate {est:.0f} s, may take {share:.0f} s, {self.left():.0f} s left)")
        if not items:
            note = f"budget: its first item needs ~{self.need(step, 0):.0f} s, {self.left():.0f} s are left"
            self.out.log(f"    skipped: {note}")
            self.out.append([step_row(step, "skipped", wall_s=0, estimate_s=est, note=note, device=self.device)])
            return
        try:
            status, note = getattr(self, f"step_{step}", self.step_child)(step, items, share)
        except Exception as e:  # noqa: BLE001 - a step that breaks is recorded; the next one runs
            status, note = "failed", f"{type(e).__name__}: {e}"[:300]
        wall = time.time() - t0
        self.out.log(f"    {step}: {status} in {wall:.1f} s" + (f" ({note})" if note else ""))
        self.out.append([step_row(step, status, wall_s=wall, estimate_s=est, note=note, device=self.device)])

    @property
    def device(self) -> str:
        return self.settings.device

    def child_start(self, step: str) -> float:
        return self.est["child_start"] if step in CHILD_STEPS else 0.0

    def plan_estimate(self, step: str) -> float:
        if step in ("env", "gpu_tests"):
            return self.est["step"][step]
        return self.child_start(step) + sum(self.item_estimate(step, i) for i in self.items(step))

    # ---- steps run here

    def step_env(self, step: str, items: list[str], share: float) -> tuple[str, str]:
        info = environment_info(self.device)
        for key, value in info.items():
            self.out.log(f"    {key:<14} {value}")
        self.out.append([{"suite": "env", "bench": "env", "case": "-", "provider": "-", **info}], step=step)
        if not self.settings.dry and info.get("gpu") in (None, "none"):
            return "failed", "no CUDA GPU visible to torch: the measuring steps will fail (use --dry-run on CPU)"
        return "ok", ""

    def step_gpu_tests(self, step: str, items: list[str], share: float) -> tuple[str, str]:
        files = gpu_test_files()
        if not files:
            return "skipped", "no test file has a @pytest.mark.gpu test"
        cap = min(share, self.settings.tests_cap_s if self.args.tests_cap_s is None else self.args.tests_cap_s)
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "-o", "addopts=", *files]
        self.out.log(f"    {' '.join(cmd[1:4])} ... on {len(files)} files, cap {cap:.0f} s")
        log_file = self.out.path / TESTS_LOG_NAME
        rc = stream(cmd, self.out, cap, log_file=log_file, env=child_env(self.settings.dry))
        counts, failed = parse_pytest(log_file.read_text() if log_file.exists() else "")
        row = {
            "suite": "tests",
            "bench": "gpu_tests",
            "case": "pytest -m gpu",
            "provider": "-",
            "rc": rc,
            "counts": counts,
            "failed_tests": failed[:50],
            "cut": rc == -9,
        }
        self.out.append([row], step=step)
        text = ", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing ran"
        if rc == -9:
            return "partial", f"cut at the {cap:.0f} s cap after: {text}"
        if rc not in (0, 5) or failed:
            return "failed", f"{text}; failed: {', '.join(failed[:5])}"
        return "ok", text

    # ---- steps run in a child process

    def step_child(self, step: str, items: list[str], share: float) -> tuple[str, str]:
        """Run the admitted items in a child process (a new one for the rest after one dies) within ``share``."""
        end = time.time() + share
        notes, died = [], 0
        for item in self.items(step)[len(items) :]:
            self.record_item_skip(step, item, f"budget: needs ~{self.item_estimate(step, item):.0f} s")
            notes.append(f"{item} skipped (budget)")
        todo, fits = list(items), list(items)
        while todo:
            for item in todo[len(fits) :]:
                self.record_item_skip(step, item, f"budget: needs ~{self.item_estimate(step, item):.0f} s")
                notes.append(f"{item} skipped (budget)")
            if not fits:
                break
            cmd = [
                sys.executable,
                "-m",
                "bench.gpu_run",
                "--child",
                step,
                "--items",
                ",".join(fits),
                "--out",
                str(self.out.path),
                "--run-id",
                self.out.run_id,
                "--child-end",
                str(end),
            ]
            if self.settings.dry:
                cmd += ["--dry-run", "--dry-dir", self.dry_dir]
            limit = min(end + KILL_GRACE_S, self.deadline) - time.time()
            rc = stream(cmd, self.out, limit, env=child_env(self.settings.dry))
            done = {r.get("item") for r in self.out.rows() if r.get("step") == step and r.get("item_done")}
            todo = [i for i in fits if i not in done]
            if rc == 0 or not todo:
                break
            dead = todo.pop(0)
            fits = self.fitting(step, todo, end - time.time())
            why = "killed at the step's time limit" if rc == -9 else f"the child process died (exit {rc})"
            self.record_item_fail(step, dead, why)
            notes.append(f"{dead}: {why}")
            died += 1
            if rc == -9:
                for item in todo:
                    self.record_item_skip(step, item, "budget: the step's time was spent")
                break
        rows = [r for r in self.out.rows() if r.get("step") == step]
        errors = [r for r in rows if r.get("suite") != "run" and r.get("error") and not r.get("skipped")]
        for r in rows:  # items whose code raised in the child
            if r.get("item_done") and r.get("error") and not r.get("skipped"):
                notes.append(f"{r['item']}: {r['error']}")
                died += 1
        if died:
            return "failed", "; ".join(notes)
        status = "partial" if notes else "ok"
        if errors:
            notes.append(f"{len(errors)} provider(s) failed (see results.md)")
        return status, "; ".join(notes)

    def record_item_skip(self, step: str, item: str, why: str) -> None:
        self.out.log(f"    {step} {item}: skipped ({why})")
        self.out.append([_item_row(step, item, why, self.device, skipped=True)], step=step, item=item)

    def record_item_fail(self, step: str, item: str, why: str) -> None:
        self.out.log(f"    {step} {item}: FAILED ({why})")
        self.out.append([_item_row(step, item, why, self.device, skipped=False)], step=step, item=item)

    def write_report(self, plot: bool = False) -> None:
        write_report(self.out, plot=plot)


def _item_row(step: str, item: str, why: str, device: str, *, skipped: bool) -> dict:
    return {
        "suite": "run",
        "bench": "items",
        "case": f"{step}:{item}",
        "provider": "gpu_run",
        "device": device,
        "dtype": "-",
        "metric": "s",
        "value": None,
        "error": why,
        "skipped": skipped,
    }


def _parse_models(text: str | None) -> list[tuple[str, str | None]]:
    if not text:
        return list(MODELS)
    known = dict(MODELS)
    out = []
    for name in text.split(","):
        name, _, task = name.strip().partition(":")
        if name not in known:
            raise SystemExit(f"error: --models: {name!r} is not one of {', '.join(known)}")
        out.append((name, task or known[name]))
    return out


def child_env(dry: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry:
        env["TRITON_INTERPRET"] = "1"
    return env


# ------------------------------------------------------------------------------------------------- child


class Child:
    """``--child STEP``: measure the items of one step, appending each item's rows as soon as it is done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.make(args.dry_run)
        self.out = Out(Path(args.out), run_id=args.run_id)
        self.step = args.child
        self.est = ESTIMATES["dry" if args.dry_run else "gpu"]
        self.emitted = 0  # rows of the current item

    def log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)  # the parent echoes it into the log

    def run(self) -> int:
        import torch

        from fastvit.benchmark import set_threads

        if self.settings.device == "cuda" and not torch.cuda.is_available():
            self.log("error: no CUDA GPU visible to torch (use --dry-run on CPU)")
            return 2
        set_threads(None, self.settings.device)
        device = self.settings.device
        for item in self.args.items.split(","):
            need = item_estimate(self.est, self.step, item)
            if time.time() + need > self.args.child_end:
                row = _item_row(self.step, item, "budget: no time left in the step", device, skipped=True)
                self.out.append([row], step=self.step, item=item, item_done=True)
                continue
            t0 = time.time()
            self.log(f"[{self.step}] {item}")
            self.emitted = 0
            error = None
            try:
                getattr(self, f"do_{self.step}")(item, lambda rows, item=item: self.emit(rows, item))
            except Exception as e:  # noqa: BLE001 - recorded; the next item runs
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                self.log(f"[{self.step}] {item}: FAILED {error}")
                if os.environ.get("FASTVIT_BENCH_DEBUG") == "1":
                    raise
            if device == "cuda":  # the item's models and inputs are garbage now: give their memory back
                gc.collect()
                torch.cuda.empty_cache()
            wall = time.time() - t0
            done = _item_row(self.step, item, error or "", device, skipped=False)
            done.update(value=round(wall, 1), error=error, estimate_s=need)
            self.out.append([done], step=self.step, item=item, item_done=True)
            self.log(f"[{self.step}] {item}: {self.emitted} rows in {wall:.1f} s (estimate {need:.0f} s)")
        return 0

    def emit(self, rows: Sequence[dict], item: str) -> None:
        """Append an item's rows now (a child killed later keeps them)."""
        self.out.append(rows, step=self.step, item=item)
        self.emitted += len(rows)

    def do_ceilings(self, item: str, emit: Callable[[list[dict]], None]) -> None:
        from bench.common import environment, peaks

        s = self.settings
        peak = peaks(s.device, s.dtype)
        self.log(f"  copy {peak['copy_GBps']:,.1f} GB/s · {s.dtype} matmul {peak['matmul_TFLOPs']:,.2f} TFLOP/s")
        common = {"suite": "ceiling", "bench": "ceilings", "provider": "torch", "device": s.device, "peak": peak}
        common.update(environment(s.device))
        emit([
            {**common, "case": "copy", "dtype": "fp32", "metric": "GB/s", "value": peak["copy_GBps"]},
            {**common, "case": "matmul", "dtype": s.dtype, "metric": "TFLOP/s", "value": peak["matmul_TFLOPs"]},
        ])  # fmt: skip

    def do_kernels(self, item: str, emit: Callable[[list[dict]], None]) -> None:
        from bench.common import run_spec

        s = self.settings
        spec = kernel_specs()[item]
        shapes = (spec.shapes.get("dry") or spec.shapes["cpu"][:1]) if s.dry else spec.shapes[s.device]
        ceilings = [r for r in self.out.rows() if r.get("suite") == "ceiling" and r.get("peak")]
        peak = ceilings[-1]["peak"] if ceilings else None  # else run_spec measures them
        kw = dict(shapes=shapes, iters=s.kernel_iters, warmup=s.kernel_warmup, peak=peak, log=self.log)
        emit(run_spec(spec, s.device, s.dtype, **kw))

    def model_case(self, item: str, batch: int):
        from bench.bench_models import ModelCase

        s = self.settings
        task = dict(MODELS)[item]
        if s.dry:
            path = str(Path(self.args.dry_dir) / item)
            return ModelCase(path, task, batch, DRY_IMAGE_SIZE[item], display=f"{item}(tiny)")
        return ModelCase(item, task, batch, s.image_size)

    def do_throughput(self, item: str, emit: Callable[[list[dict]], None]) -> None:
        self._models(item, "model", emit)

    def do_latency(self, item: str, emit: Callable[[list[dict]], None]) -> None:
        self._models(item, "latency", emit)

    def _models(self, item: str, suite: str, emit: Callable[[list[dict]], None]) -> None:
        from bench.bench_models import LATENCY, THROUGHPUT, run_case

        s = self.settings
        latency = suite == "latency"
        run_case(
            self.model_case(item, 1 if latency else s.batch),
            LATENCY if latency else THROUGHPUT,
            s.device,
            s.dtype,
            suite=suite,
            warmup=s.warmup if s.warmup is not None else (3 if latency else 2),
            rounds=s.rounds,
            budget_s=s.time_s,
            variant_options=s.variant_options,
            separate_compile=True,
            emit=emit,
            log=self.log,
        )

    def do_profile(self, item: str, emit: Callable[[list[dict]], None]) -> None:
        emit(profile_rows(self.model_case(item, self.settings.batch), self.settings, self.log))


def profile_rows(case, settings: Settings, log: Callable[[str], None]) -> list[dict]:
    """``fastvit profile --measure`` of one model case (``fastvit.profile.measure_model``, what the command runs):
    its table printed, its numbers recorded; skipped, with the reason, when this build has no ``fastvit.profile``."""
    import torch

    from bench.common import environment
    from fastvit.benchmark import DTYPES

    common = {
        "suite": "profile",
        "bench": "profile",
        "case": case.label,
        "provider": "fastvit_profile",
        "device": settings.device,
        "dtype": settings.dtype,
        "metric": "ms",
        **environment(settings.device),
    }
    try:
        from fastvit.profile import measure_model
    except ImportError as e:  # the module (or its entry point) is not in this build
        if isinstance(e, ModuleNotFoundError) and e.name != "fastvit.profile":
            raise
        log(f"  fastvit.profile is not available: skipped ({e})")
        return [{**common, "value": None, "skipped": True, "error": f"fastvit profile is not available: {e}"}]
    log(
        f"  fastvit profile {case.display or case.model} --measure --batch {case.batch} --image-size "
        f"{case.image_size} ({settings.device}, {settings.dtype})"
    )
    result = measure_model(
        case.model,
        batch=case.batch,
        image_size=case.image_size,
        dtype=DTYPES[settings.dtype],
        task=case.task,
        device=settings.device,
        iters=2 if settings.dry else 5,
    )
    log(result.table())
    if settings.device == "cuda":
        torch.cuda.empty_cache()
    return [{**common, "value": None, "profile": result.to_dict()}]


# ----------------------------------------------------------------------------------------------- helpers


def kernel_specs() -> dict:
    """name -> OpBench of every kernel benchmark module of ``bench/`` (the run_all list)."""
    import importlib

    from bench.run_all import KERNEL_MODULES

    return {s.name: s for m in KERNEL_MODULES for s in importlib.import_module(f"bench.{m}").SPECS}


def kernel_names() -> list[str]:
    """The kernel benchmark names, read from the module sources (the parent never imports the kernels)."""
    from bench.run_all import KERNEL_MODULES

    names = []
    for m in KERNEL_MODULES:
        names += re.findall(r'^\s*name="(\w+)"', (ROOT / "bench" / f"{m}.py").read_text(), flags=re.M)
    return names


def gpu_test_files() -> list[str]:
    """The test files with at least one ``@pytest.mark.gpu`` test (relative to the repository)."""
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "pytest.mark.gpu" in p.read_text()
    )


def parse_pytest(text: str) -> tuple[dict[str, int], list[str]]:
    """Counts per outcome and the failed test ids from ``pytest -v`` output (also of a run cut short)."""
    counts: dict[str, int] = {}
    failed = []
    for m in re.finditer(r"^(\S+::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", text, flags=re.M):
        counts[m.group(2).lower()] = counts.get(m.group(2).lower(), 0) + 1
        if m.group(2) in ("FAILED", "ERROR"):
            failed.append(m.group(1))
    final = re.findall(r"^=+ (.*\d+ \w+.*) in [\d.]+s", text, flags=re.M)  # "3 passed, 1 skipped in 2.0s"
    if final:  # the run finished: pytest's own count is the truth
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", final[-1])}
    return counts, failed


def environment_info(device: str) -> dict:
    """GPU, driver, versions, commit, CPU threads (printed first and stored)."""
    import platform

    import torch

    from bench.common import environment

    env = environment(device)
    info = {"gpu": "none", "driver": None, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    info.update(
        torch=env["torch"],
        triton=env["triton"],
        transformers=env["transformers"],
        python=platform.python_version(),
        commit=env["commit"],
        date=env["date"],
        cpu_threads=os.cpu_count(),
        triton_interpret=os.environ.get("TRITON_INTERPRET", "(unset)"),
    )
    return info


def write_dry_configs(directory: str, models: Sequence[tuple[str, str | None]]) -> None:
    """config.json of each target model shrunk to a tiny one (``DRY_OVERRIDES``), one directory per model."""
    from fastvit.registry import get_model_info

    for name, _ in models:
        config = get_model_info(name).config
        for key, value in DRY_OVERRIDES[name].items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
        path = Path(directory) / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(config, indent=1))


# ------------------------------------------------------------------------------------------------ report


def _measurements(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("suite") in ("kernel", "model", "latency", "ceiling")]


def write_report(out: Out, *, plot: bool) -> None:
    """results.md (environment, steps, tables, summary) and, with ``plot``, results.png, from this run's rows."""
    from bench.report import markdown
    from bench.report import plot as make_plot

    rows = out.rows()
    parts = ["# fastvit gpu_run results\n"]
    env = next((r for r in rows if r.get("suite") == "env"), None)
    if env:
        keys = ("gpu", "driver", "cuda", "torch", "triton", "transformers", "commit", "date", "triton_interpret")
        parts.append(" · ".join(f"{k} {env.get(k)}" for k in keys) + "\n")
    parts.append("## Steps\n")
    parts.append(steps_table(rows) + "\n")
    tests = next((r for r in rows if r.get("suite") == "tests"), None)
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in (tests.get("counts") or {}).items()) or "nothing ran"
        parts.append(f"`pytest -m gpu`: {counts}" + (" (cut at its cap)" if tests.get("cut") else "") + "\n")
        parts += [f"- FAILED {t}" for t in tests.get("failed_tests") or []]
        parts.append("")
    measured = _measurements(rows)
    if measured:
        parts.append(markdown([r for r in measured if r["suite"] != "ceiling"]))
    parts.append("## Summary\n\n```\n" + summary(rows) + "\n```\n")
    (out.path / MD_NAME).write_text("\n".join(parts))
    if plot and measured:
        make_plot([r for r in measured if r["suite"] != "ceiling"], out.path / PNG_NAME)


def steps_table(rows: Sequence[dict]) -> str:
    lines = ["| step | status | wall s | estimate s | note |", "|---|---|---:|---:|---|"]
    for r in rows:
        if r.get("suite") == "run" and r.get("bench") == "steps":
            note = (r.get("error") or "").replace("|", "/")
            lines.append(f"| {r['case']} | {r['status']} | {r['value']} | {r.get('estimate_s')} | {note} |")
    return "\n".join(lines)


def summary(rows: Sequence[dict], wall_s: float | None = None, budget_s: float | None = None) -> str:
    """The short table printed last: steps, ceilings, then ours vs the best baseline per benchmark case."""
    from bench.run_all import summary as bench_summary

    lines = []
    steps = [r for r in rows if r.get("suite") == "run" and r.get("bench") == "steps"]
    lines.append("  ".join(f"{r['case']}:{r['status']}({r['value']:.0f}s)" for r in steps))
    ceil = {r["case"]: r for r in rows if r.get("suite") == "ceiling"}
    if ceil:
        lines.append(
            "ceilings: "
            + ", ".join(
                f"{c} {r['value']:.4g} {r['metric']}" + (f" {r['dtype']}" if c == "matmul" else "")
                for c, r in ceil.items()
            )
        )
    measured = [r for r in _measurements(rows) if r["suite"] != "ceiling"]
    if measured:
        lines.append(bench_summary(measured))
    ratios = [r for r in measured if r.get("vs_eager") and r["provider"].startswith("fastvit")]
    if ratios:
        lines.append("ours vs fastvit eager, median (p20-p80) of the per-round ratios (interleaved timing):")
        for r in ratios:
            v = r["vs_eager"]
            lines.append(
                f"  {r['suite']:<8} {r['case']:<34} {r['provider']:<26} {v['median']:.2f}x "
                f"({v['p20']:.2f}-{v['p80']:.2f})"
            )
    lines += latency_targets(measured)
    if wall_s is not None:
        lines.append(f"gpu_run: {wall_s:.0f} s of a {budget_s:g} s budget")
    return "\n".join(lines)


def latency_targets(rows: Sequence[dict]) -> list[str]:
    """Issue 20's batch-1 targets: fused + CUDA graphs at most compile reduce-overhead, and the H100 anchors."""
    from bench.report import latest

    by = {(r["case"], r["provider"]): r for r in latest(rows) if r["suite"] == "latency" and r.get("value")}
    out = []
    for case in dict.fromkeys(c for c, _ in by):
        ours, theirs = by.get((case, "fastvit_fused_cuda_graphs")), by.get((case, "compile_reduce_overhead"))
        if not ours:
            continue
        anchor = next((ms for m, ms in LATENCY_TARGETS_MS.items() if case.startswith(m + " ")), None)
        line = f"target {case}: fused + CUDA graphs {ours['ms']:.3f} ms ({ours['ms_p20']:.3f}-{ours['ms_p80']:.3f})"
        if theirs:
            ok = ours["ms"] <= theirs["ms"]
            line += f" vs compile reduce-overhead {theirs['ms']:.3f} ms: {'met' if ok else 'MISSED'}"
        if anchor:
            line += f"; H100 anchor <= {anchor} ms: {'met' if ours['ms'] <= anchor else 'MISSED'}"
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="directory for results.jsonl, results.md, results.png and the logs")
    p.add_argument("--budget-s", type=float, default=None, help="total seconds (default 540; 300 with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, tiny models and shapes")
    p.add_argument("--steps", default=None, help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(m for m, _ in MODELS)}")
    p.add_argument("--plan", action="store_true", help="print the schedule by the estimates and exit")
    p.add_argument("--tests-cap-s", type=float, default=None, help="cap of the gpu_tests step, seconds (default 75)")
    child = p.add_argument_group("internal (the parent starts its children with these)")
    child.add_argument("--child", choices=CHILD_STEPS, default=None, help=argparse.SUPPRESS)
    child.add_argument("--items", default="", help=argparse.SUPPRESS)
    child.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    child.add_argument("--child-end", type=float, default=None, help=argparse.SUPPRESS)
    child.add_argument("--dry-dir", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:  # before anything imports triton
        os.environ["TRITON_INTERPRET"] = "1"
    if args.child:
        return Child(args).run()
    if args.budget_s is None:
        args.budget_s = 300.0 if args.dry_run else 540.0
    if not args.dry_run and not args.plan:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                f"error: no CUDA GPU is visible to torch {torch.__version__}: run this on the GPU machine, or rehearse "
                "it on CPU with --dry-run"
            )
    if args.steps:
        unknown = set(args.steps.split(",")) - set(STEPS)
        if unknown:
            raise SystemExit(f"error: --steps: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    run = Run(args)
    if args.plan:
        print("\n".join(run.plan()))
        return 0
    return run.run()


if __name__ == "__main__":
    raise SystemExit(main())
