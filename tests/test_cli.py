"""The ``fastvit`` command line: list, info, bench (tiny runs), run, and the one-line error paths with exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastvit_kernels
import pytest
import torch

from fastvit import benchmark
from fastvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch", "1", "--image-size", "32", "--iters", "1", "--random", "--quiet"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith("fastvit: error: "), lines[0]
    return lines[0]


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list", "convnext-tiny*")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("convnext-tiny-224"))
    assert "facebook/convnext-tiny-224" in row and "classification" in row
    assert "28.6M" in row, row  # counted on the meta device from the config (HF: 28,589,128)


def test_list_no_match(capsys):
    code, _, err = run_cli(capsys, "list", "nothing-like-this*")
    assert code == 2
    assert "no model matches" in one_line_error(err)


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert torch.__version__ in out
    for name in ("layer_norm", "layer_norm_2d", "grn", "swiglu", "dwconv2d", "dwconv2d_layer_norm", "attention"):
        assert f"  {name} " in out, name
    assert fastvit_kernels.triton_reason("cpu") in out


def test_bench_tiny(capsys):
    with fastvit_kernels.backend("torch"):  # the interpreter is on in this test session; keep the run tiny and fast
        code, out, _ = run_cli(capsys, "bench", "convnextv2-atto", *TINY)
    assert code == 0, out
    assert "weights: RANDOM (--random)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "eager" in lines and "fused" in lines, out
    diff = float(lines["fused"].split()[-1])
    assert diff < 1e-4, f"fused vs eager max abs diff {diff:.2e} (fp32, same kernels path)"


def test_bench_latency_cpu(capsys):
    with fastvit_kernels.backend("torch"):
        code, out, _ = run_cli(capsys, "bench", "convnextv2-atto", "--latency", *TINY)
    assert code == 0, out
    assert "batch-1 latency" in out
    assert "CPU: no CUDA graphs" in out and "torch.compile left out" in out
    assert any(line.startswith("fused ") for line in out.splitlines())


def test_bench_variant_unavailable_is_reported(capsys, monkeypatch):
    get = benchmark.ModelVariants.get

    def no_fused(self, variant):
        if variant == "fused":
            raise benchmark.Unavailable("fastvit.patch is not available yet")
        return get(self, variant)

    monkeypatch.setattr(benchmark.ModelVariants, "get", no_fused)
    code, out, _ = run_cli(capsys, "bench", "convnextv2-atto", *TINY)
    assert code == 0
    assert "fused" in out and "n/a: fastvit.patch is not available yet" in out


def test_bench_variant_failure_exit_code(capsys, monkeypatch):
    get = benchmark.ModelVariants.get

    def broken(self, variant):
        if variant == "fused":
            raise RuntimeError("kernel exploded")
        return get(self, variant)

    monkeypatch.setattr(benchmark.ModelVariants, "get", broken)
    code, out, _ = run_cli(capsys, "bench", "convnextv2-atto", *TINY)
    assert code == 1
    assert "FAILED: RuntimeError: kernel exploded" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "convnext-tinyy"], "Did you mean: convnext-tiny"),  # unknown model with suggestions
        (["bench", "convnext-tiny", "--batch", "0"], "--batch must be at least 1"),
        (["run", "no/such/script.py"], "no such script"),
    ],
)
def test_errors_are_one_line(capsys, argv, expected):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in one_line_error(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_cuda_without_gpu(capsys):
    code, _, err = run_cli(capsys, "bench", "convnext-tiny", "--device", "cuda")
    assert code == 2
    assert "no CUDA GPU" in one_line_error(err)


def test_run_script(tmp_path, capfd):
    pytest.importorskip("fastvit.runner")
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('args', sys.argv[1:], __name__)\nsys.exit(3)\n")
    code = main(["run", str(script), "a", "--flag"])
    assert code == 3
    assert "args ['a', '--flag'] __main__" in capfd.readouterr().out


def test_run_script_restores_argv_when_patching_fails(tmp_path, monkeypatch):
    pytest.importorskip("fastvit.runner")
    import fastvit.patching
    from fastvit.runner import run_script

    def no_transformers(**flags):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(fastvit.patching, "patch_transformers", no_transformers)
    script = tmp_path / "script.py"
    script.write_text("pass\n")
    argv, path = list(sys.argv), list(sys.path)
    with pytest.raises(ModuleNotFoundError):
        run_script(str(script), ["a"])
    assert sys.argv == argv and sys.path == path


def test_python_m_fastvit_readme_command():
    """The README's main-job command, as a fresh process on CPU (interpreter off, the user's default)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    argv = [sys.executable, "-m", "fastvit", "bench", "convnext-tiny", "--device", "cpu"]
    proc = subprocess.run(
        [*argv, "--batch", "1", "--image-size", "64", "--iters", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eager" in proc.stdout and "fused" in proc.stdout, proc.stdout
    assert "[1/3] loading convnext-tiny" in proc.stderr  # progress goes to stderr
