"""Fused block modules: the only part of fastvit that calls fastvit_kernels.

A fused block is a :class:`~fastvit.fused.base.FusedForward` installed as the ``forward`` of an existing block
(the module tree, parameters and state dict stay the original ones). Each fused block class has a builder
``from_module(module, flags)`` that checks the block's structure; :data:`fastvit.patching.BUILDERS` maps block
class names to these builders. ``FusedForward`` and the CUDA-graph runner are the two kinds of
:class:`~fastvit.fused.base.InstanceForward`, the one forward-shadowing mechanism.

    convnext.FusedConvNextLayer           ConvNeXt / V2 block: dwconv2d_layer_norm -> Linear+act -> grn -> Linear
    convnext.FusedChannelsFirstLayerNorm  stem / downsampling / backbone norms -> layer_norm_2d
    convnext.FusedLayerNorm               any last-dim LayerNorm -> layer_norm
    transformer.FusedTransformerLayer     DINOv2 / ViT-Hybrid / AltCLIP vision / XLM-R text layer (one QKV matmul)
    graphs.CUDAGraphForward               one CUDA graph per input signature, eager fallback
    matching                              structure checks the builders share (attribute paths, Linear, LayerNorm)
"""

from .base import FusedForward, FusedLinear, InstanceForward, is_fused

__all__ = ["FusedForward", "FusedLinear", "InstanceForward", "is_fused"]
