"""What the kernels do on a device: the one place outside the fused blocks that the CLI asks about kernels."""

from __future__ import annotations

KERNELS = ("layer_norm", "layer_norm_2d", "grn", "swiglu", "dwconv2d", "dwconv2d_layer_norm", "attention")


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
