"""The kernel entry points the fused blocks call, imported once from their op modules (no lazy lookup per call)."""

from fastvit_kernels._dispatch import use_triton
from fastvit_kernels.add_layer_norm import add_layer_norm
from fastvit_kernels.attention import attention, attention_ref
from fastvit_kernels.dwconv import dwconv2d_layer_norm
from fastvit_kernels.fused_linear import fused_linear
from fastvit_kernels.grn import grn
from fastvit_kernels.layer_norm import layer_norm
from fastvit_kernels.layer_norm_2d import layer_norm_2d
from fastvit_kernels.swiglu import swiglu, swiglu_ref

__all__ = [
    "add_layer_norm",
    "attention",
    "attention_ref",
    "dwconv2d_layer_norm",
    "fused_linear",
    "grn",
    "layer_norm",
    "layer_norm_2d",
    "swiglu",
    "swiglu_ref",
    "use_triton",
]
