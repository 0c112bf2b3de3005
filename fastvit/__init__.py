"""fastvit: Triton-kernel accelerated inference for ConvNeXt, ConvNeXt V2, DINOv2, ViT-Hybrid and AltCLIP."""

__version__ = "0.1.0"
