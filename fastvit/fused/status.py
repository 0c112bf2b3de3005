"""What the kernels do on a device: the one place outside the fused blocks that the CLI asks about kernels."""

from __future__ import annotations

KERNELS = (
    "layer_norm",
    "layer_norm_2d",
    "grn",
    "swiglu",
    "dwconv2d",
    "dwconv2d_layer_norm",
    "attention",
    "fused_linear",
    "add_layer_norm",
)


def kernel_path(device: str) -> str:
    """One line: which path (Triton or torch fallback) runs for tensors on ``device``, and why."""
    try:
        import fastvit_kernels

        return fastvit_kernels.triton_reason(device)
    except Exception as e:  # noqa: BLE001 - the kernel package missing or broken: say so, never crash the CLI
        return f"unavailable ({type(e).__name__}: {e})"


def kernel_status(device: str) -> list[tuple[str, str]]:
    """(kernel, what runs for tensors on ``device``) for every fastvit kernel."""
    import fastvit_kernels

    reason = kernel_path(device)
    out = []
    for name in KERNELS:
        try:
            getattr(fastvit_kernels, name)
            out.append((name, reason))
        except Exception as e:  # noqa: BLE001 - a kernel file missing or broken: say so
            out.append((name, f"unavailable ({type(e).__name__}: {e})"))
    return out


def gemm_choices() -> list[str]:
    """One line per GEMM shape timed so far (this process, or persisted under ``FASTVIT_CACHE_DIR``): the
    implementation ``fused_linear`` keeps (the fused kernel's tile config, or cuBLAS + epilogue) and the times."""
    try:
        import fastvit_kernels

        rows = fastvit_kernels.fused_linear_choices()
    except Exception:  # noqa: BLE001 - no kernel package: no choices
        return []
    lines = []
    for r in rows:
        times = ", ".join(f"{name} {us:g} us" for name, us in sorted(r["times_us"].items(), key=lambda kv: kv[1]))
        lines.append(f"{r['key']} -> {r['choice']} ({times})")
    return lines
