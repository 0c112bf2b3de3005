"""Fused block modules: the only part of fastvit that calls fastvit_kernels.

A fused block is a :class:`~fastvit.fused.base.FusedForward` installed as the ``forward`` of an existing block
(the module tree, parameters and state dict stay the original ones); :mod:`fastvit.patching` decides which block
gets which. ``graphs`` holds the CUDA-graph runner.

    convnext.FusedConvNextLayer           ConvNeXt / V2 block: dwconv2d_layer_norm -> Linear+act -> grn -> Linear
    convnext.FusedChannelsFirstLayerNorm  stem / downsampling / backbone norms -> layer_norm_2d
    convnext.FusedLayerNorm               any last-dim LayerNorm -> layer_norm
    transformer.FusedTransformerLayer     DINOv2 / ViT-Hybrid / AltCLIP vision / XLM-R text layer (one QKV matmul)
    graphs.CUDAGraphForward               one CUDA graph per input signature, eager fallback
"""

from .base import DerivedWeights, FusedForward, FusedLinear, install, is_fused, uninstall

__all__ = ["DerivedWeights", "FusedForward", "FusedLinear", "install", "is_fused", "uninstall"]
