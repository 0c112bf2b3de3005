"""The kernels' launch recording and cost protocol, for ``fastvit.profile``: like ``status``, a place outside the
fused blocks that asks ``fastvit_kernels`` about kernels (the rest of fastvit goes through ``fastvit.fused``).
``fastvit_kernels._dispatch`` (and so triton) is imported on first use, keeping the CLI's start cheap."""

from __future__ import annotations

from fastvit_kernels._cost import KINDS, cost_of, nbytes  # torch only


def recording(*args, **kwargs):
    """``fastvit_kernels._dispatch.recording``: record every Triton launch (see there)."""
    from fastvit_kernels._dispatch import recording as record

    return record(*args, **kwargs)


def is_launch(event: object) -> bool:
    """Whether ``event`` is a recorded ``fastvit_kernels._dispatch.Launch``."""
    from fastvit_kernels._dispatch import Launch

    return isinstance(event, Launch)


__all__ = ["KINDS", "cost_of", "is_launch", "nbytes", "recording"]
