"""Fused block modules: the only part of fastvit that calls fastvit_kernels."""
