"""Fused ConvNeXt / ConvNeXt V2 pieces: the block and the channels-first / channels-last LayerNorms.

Block (eager: dwconv -> permute -> LN -> Linear -> act [-> GRN] -> Linear [-> layer scale] -> permute -> + x):
``dwconv2d_layer_norm`` straight to NHWC -> pwconv1 + act -> ``grn`` (V2) -> pwconv2 -> layer scale and residual
on the NHWC result. Activations stay channels_last between blocks and stages (the first block converts
once); the block returns the NHWC result as an [N, C, H, W] view, so shapes are HF's and strides channels_last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _ops as K
from .base import DerivedWeights, FusedForward


class PackedConvWeight(DerivedWeights):
    """The depthwise conv weight in the tap-major layout the dwconv kernels read (``pack_weight``), made once
    instead of a repack (one extra small kernel) at every call."""

    def __init__(self, owner: FusedForward, conv: nn.Conv2d) -> None:
        super().__init__(owner, ("dwconv_weight",))
        self.conv = conv

    def _sources(self) -> list[torch.Tensor]:
        return [self.conv.weight]

    def _compute(self) -> tuple[torch.Tensor]:
        return (K.pack_weight(self.conv.weight),)


class FusedConvNextLayer(FusedForward):
    """``ConvNextLayer`` / ``ConvNextV2Layer`` forward on fused kernels.

    Args:
        module: the block (attributes dwconv, layernorm, pwconv1, act, [grn], pwconv2, [layer_scale_parameter]).
        dwconv: use ``dwconv2d_layer_norm`` (else torch conv + the ``layer_norm`` kernel when ``layer_norm``).
        layer_norm: use the LayerNorm kernels where the conv is not fused.
        grn: use the ``grn`` kernel (V2 blocks).
    """

    def __init__(self, module: nn.Module, *, dwconv: bool = True, layer_norm: bool = True, grn: bool = True) -> None:
        super().__init__(module)
        self.use_dwconv, self.use_ln = dwconv, layer_norm
        self.use_grn = grn and getattr(module, "grn", None) is not None
        self.dw_weight = PackedConvWeight(self, module.dwconv) if dwconv else None
        if dwconv:
            self.kernels["dwconv2d_layer_norm"] = 1
        elif layer_norm:
            self.kernels["layer_norm"] = 1
        if self.use_grn:
            self.kernels["grn"] = 1

    def fused(self, hidden_states: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = hidden_states  # [N, C, H, W]
        if x.dim() != 4 or x.shape[1] != m.dwconv.in_channels:
            return self.eager(hidden_states)  # let the original raise its own error
        x = x.contiguous(memory_format=torch.channels_last)  # no-op after the first block
        ln = m.layernorm
        if self.use_dwconv:
            (weight,) = self.dw_weight.get()
            y = K.dwconv2d_layer_norm(x, weight, m.dwconv.bias, ln.weight, ln.bias, ln.eps)  # [N, H, W, C]
        elif self.use_ln:
            y = K.layer_norm(m.dwconv(x).permute(0, 2, 3, 1), ln.weight, ln.bias, ln.eps)
        else:
            y = ln(m.dwconv(x).permute(0, 2, 3, 1))
        y = m.act(F.linear(y, m.pwconv1.weight, m.pwconv1.bias))  # [N, H, W, 4C]
        grn = getattr(m, "grn", None)
        if grn is not None:
            y = self._grn(grn, y)
        y = F.linear(y, m.pwconv2.weight, m.pwconv2.bias)  # [N, H, W, C], fresh: updated in place below
        residual = x.permute(0, 2, 3, 1)  # x is channels_last: an NHWC-contiguous view
        scale = getattr(m, "layer_scale_parameter", None)
        y = y.add_(residual) if scale is None else torch.addcmul(residual, y, scale)  # x + gamma * y, one pass
        return y.permute(0, 3, 1, 2)  # [N, C, H, W], channels_last strides

    def _grn(self, grn: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """GRN on NHWC ``y`` [N, H, W, 4C]: the kernel, or (torch path) one pass over ``y`` instead of HF's four:
        ``gamma * (y * nx) + beta + y == y * (gamma * nx + 1) + beta``."""
        if not self.use_grn:
            return grn(y)
        if K.use_triton(y, grn.weight, grn.bias):
            return K.grn(y, grn.weight, grn.bias, 1e-6)
        gx = torch.linalg.vector_norm(y, dim=(1, 2), keepdim=True)  # [N, 1, 1, 4C]
        scale = (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)).mul_(grn.weight).add_(1)  # gamma * nx + 1
        return torch.addcmul(grn.bias, y, scale)


class FusedChannelsFirstLayerNorm(FusedForward):
    """ConvNeXt's ``data_format="channels_first"`` LayerNorm ([N, C, H, W], stem / downsampling / backbone norms)
    -> ``layer_norm_2d`` (keeps the input's memory format)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.kernels["layer_norm_2d"] = 1

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if x.dim() != 4:
            return self.eager(x)
        if K.use_triton(x, m.weight, m.bias):
            return K.layer_norm_2d(x, m.weight, m.bias, m.eps)
        # torch path (CPU without the interpreter, or forced): one F.layer_norm over the NHWC view is 2-4x faster
        # than the eight-pass channels-first formula; the result is channels_last, as the next block wants it
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)


class FusedLayerNorm(FusedForward):
    """A last-dim LayerNorm (``nn.LayerNorm`` or ConvNeXt's channels_last one) -> ``layer_norm``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.kernels["layer_norm"] = 1

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return K.layer_norm(x, m.weight, m.bias, m.eps)
