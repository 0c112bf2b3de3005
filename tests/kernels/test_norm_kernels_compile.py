"""The layer_norm / layer_norm_2d / grn / swiglu / add_layer_norm kernels (and fused_linear's small ones) compile for a
real GPU (sm_90, PTX + cubin), without one.

The interpreter runs the kernels' Python and is lenient where the compiler is not (types, constexpr control flow,
layouts), so each kernel is also compiled ahead of time, in a subprocess because this process runs with
TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    TARGET = GPUTarget("cuda", 90, 32)
    P, I, F = "*bf16", "i32", "fp32"
    CASES = [  # (module, kernel, {arg: type}, {constexpr: value})
        ("layer_norm", "_layer_norm_rows_kernel",
         dict(X=P, Y=P, W=P, B=P, M=I, C=I, stride_xm="i64", stride_xc=I, stride_ym=I, stride_yc=I, eps=F),
         dict(HAS_W=True, HAS_B=True, BLOCK_M=4, BLOCK_C=1024, TORCH_OVERFLOW=True)),
        ("layer_norm_2d", "_layer_norm_2d_kernel",
         dict(X=P, Y=P, W=P, B=P, C=I, HW=I, Wd=I, stride_xn=I, stride_xc=I, stride_xh=I, stride_xw=I, eps=F),
         dict(FLAT_HW=True, HAS_W=True, HAS_B=False, BLOCK_C=128, BLOCK_HW=32, OUT_CL=True)),
        ("layer_norm_2d", "_layer_norm_2d_kernel",
         dict(X=P, Y=P, W=P, B=P, C=I, HW=I, Wd=I, stride_xn=I, stride_xc=I, stride_xh=I, stride_xw=I, eps=F),
         dict(FLAT_HW=False, HAS_W=False, HAS_B=True, BLOCK_C=1, BLOCK_HW=16, OUT_CL=False)),
        ("grn", "_grn_sumsq_kernel",
         dict(X=P, P="*fp32", C=I, HW=I, Wd=I, SPLIT=I, ROWS=I, stride_xn=I, stride_xh=I, stride_xw=I, stride_xc=I),
         dict(FLAT_HW=False, BLOCK_HW=32, BLOCK_C=128)),
        ("grn", "_grn_nx_kernel", dict(P="*fp32", NX="*fp32", C=I, SPLIT=I, eps=F), dict(BLOCK_S=8, BLOCK_C=512)),
        ("grn", "_grn_apply_kernel",
         dict(X=P, Y=P, NX="*fp32", G=P, Bt=P, C=I, HW=I, Wd=I, stride_xn=I, stride_xh=I, stride_xw=I, stride_xc=I),
         dict(FLAT_HW=True, BLOCK_HW=32, BLOCK_C=128)),
        ("swiglu", "_swiglu_kernel",
         dict(Hp=P, Y=P, M=I, H=I, stride_hm=I, stride_hn=I), dict(BLOCK_M=4, BLOCK_N=1024)),
        ("add_layer_norm", "_add_layer_norm_kernel",
         dict(X=P, A=P, G=P, S=P, H=P, W=P, B=P, M=I, C=I, stride_xm=I, stride_am=I, eps=F),
         dict(HAS_G=True, STORE_SUM=True, HAS_W=True, HAS_B=True, BLOCK_M=4, BLOCK_C=1024)),
        # fused_linear's one-pass epilogue (the cuBLAS alternative) and its sums-of-squares / GRN-scale reduction;
        # the GEMM kernel itself: tests/kernels/test_fused_linear.py (wgmma, no spills)
        ("fused_linear", "_epilogue_kernel",
         dict(Y0=P, Y=P, Scale=P, R=P, P="*fp32", M=I, N=I, ROWS_PER_IMG=I, stride_y0m=I, stride_ym=I, stride_rm=I),
         dict(ACT=3, HAS_SCALE=True, HAS_RES=True, SUMSQ=True, MAX_SEG=2, BLOCK_M=64, BLOCK_N=128)),
        ("fused_linear", "_sumsq_reduce_kernel",
         dict(P="*fp32", S="*fp32", G=P, N=I, ROWS_PER_IMG=I, TILE_M=I, eps=F),
         dict(GRN=True, MAX_SEG=2, BLOCK_N=1024)),
    ]
    for module, name, args, consts in CASES:
        fn = getattr(importlib.import_module(f"fastvit_kernels.{module}"), name)
        signature = {**args, **{k: "constexpr" for k in consts}}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=TARGET)
        assert "cubin" in compiled.asm, (name, list(compiled.asm))
        print("compiled", module, name)
    """
)


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip(f"no ptxas: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 10, proc.stdout
