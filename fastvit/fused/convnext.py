"""Fused ConvNeXt / ConvNeXt V2 pieces: the block and the channels-first / channels-last LayerNorms.

Block (eager: dwconv -> permute -> LN -> Linear -> act [-> GRN] -> Linear [-> layer scale] -> permute -> + x):
``dwconv2d_layer_norm`` straight to NHWC -> pwconv1 + act -> ``grn`` (V2) -> pwconv2 -> layer scale and residual
on the NHWC result. Activations stay channels_last between blocks and stages (the first block converts
once); the block returns the NHWC result as an [N, C, H, W] view, so shapes are HF's and strides channels_last.

Builders (``from_module(module, flags)``, the patcher's table rows): :meth:`FusedConvNextLayer.from_module` for
``ConvNextLayer`` / ``ConvNextV2Layer``, :meth:`FusedChannelsFirstLayerNorm.from_module` for ConvNeXt's LayerNorm
classes (either data format), :meth:`FusedLayerNorm.from_module` for a plain ``nn.LayerNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _ops as K
from .base import FusedForward
from .matching import is_layer_norm, is_linear, kernel_activation


class FusedConvNextLayer(FusedForward):
    """``ConvNextLayer`` / ``ConvNextV2Layer`` forward on fused kernels.

    Args:
        module: the block (attributes dwconv, layernorm, pwconv1, act, [grn], pwconv2, [layer_scale_parameter]).
        dwconv: use ``dwconv2d_layer_norm`` (else torch conv + the ``layer_norm`` kernel when ``layer_norm``).
        layer_norm: use the LayerNorm kernels where the conv is not fused.
        grn: use the ``grn`` kernel (V2 blocks) where the GEMMs are not fused.
        fused_linear: pwconv1 and pwconv2 as ``fused_linear`` GEMMs with their epilogues (when the activation has
            a kernel equivalent): pwconv1 + bias + act (+ the GRN sums of squares), pwconv2 (with the GRN applied
            to its input as a prologue) + bias + layer scale + residual. The 4C-wide tensor is written once and
            read once; V1 and V2 blocks are two GEMM launches (+ a tiny reduction and the GRN scale for V2).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        dwconv: bool = True,
        layer_norm: bool = True,
        grn: bool = True,
        fused_linear: bool = True,
    ) -> None:
        super().__init__(module)
        self.use_dwconv, self.use_ln = dwconv, layer_norm
        self.act = kernel_activation(module.act)
        self.use_fl = fused_linear and self.act is not None
        self.use_grn = grn and getattr(module, "grn", None) is not None and not self.use_fl
        if dwconv:
            self.kernels["dwconv2d_layer_norm"] = 1
        elif layer_norm:
            self.kernels["layer_norm"] = 1
        if self.use_grn:
            self.kernels["grn"] = 1
        if self.use_fl:
            self.kernels["fused_linear"] = 2

    @classmethod
    def from_module(cls, m: nn.Module, flags: dict[str, bool]) -> FusedConvNextLayer | str:
        """The fused forward of a ConvNeXt (V1/V2) block, or why its structure does not fit."""
        dw, ln = getattr(m, "dwconv", None), getattr(m, "layernorm", None)
        if not isinstance(dw, nn.Conv2d) or dw.groups != dw.in_channels or dw.in_channels != dw.out_channels:
            return "dwconv is not a depthwise nn.Conv2d"
        k = dw.kernel_size[0]
        if dw.kernel_size != (k, k) or k % 2 == 0 or dw.stride != (1, 1) or dw.padding != (k // 2, k // 2):
            return f"dwconv is not a stride-1 'same' odd square conv (kernel {dw.kernel_size}, padding {dw.padding})"
        if dw.dilation != (1, 1) or dw.padding_mode != "zeros":
            return "dwconv has dilation or non-zero padding mode"
        if not is_layer_norm(ln) or ln.weight.shape[0] != dw.out_channels:
            return "layernorm is not a channels_last LayerNorm over the block's channels"
        p1, p2 = getattr(m, "pwconv1", None), getattr(m, "pwconv2", None)
        c = dw.out_channels
        if not (is_linear(p1) and is_linear(p2)) or p1.in_features != c or p2.out_features != c:
            return "pwconv1/pwconv2 are not Linear layers C -> 4C -> C"
        if not callable(getattr(m, "act", None)):
            return "no activation"
        grn = getattr(m, "grn", None)
        if grn is not None and (getattr(grn, "weight", None) is None or grn.weight.numel() != p1.out_features):
            return "grn has no [1, 1, 1, 4C] weight"
        fl = flags["fused_linear"]
        if not (flags["dwconv"] or flags["layer_norm"] or fl or (grn is not None and flags["grn"])):
            return "dwconv, layer_norm, fused_linear and grn kernels all disabled"
        return cls(m, dwconv=flags["dwconv"], layer_norm=flags["layer_norm"], grn=flags["grn"], fused_linear=fl)

    def fused(self, hidden_states: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = hidden_states  # [N, C, H, W]
        if x.dim() != 4 or x.shape[1] != m.dwconv.in_channels:
            return self.eager(hidden_states)  # let the original raise its own error
        x = x.contiguous(memory_format=torch.channels_last)  # no-op after the first block
        ln = m.layernorm
        if self.use_dwconv:
            # the conv's own [C, 1, k, k] weight, read at every call: no derived copy that could go stale
            y = K.dwconv2d_layer_norm(x, m.dwconv.weight, m.dwconv.bias, ln.weight, ln.bias, ln.eps)  # [N, H, W, C]
        elif self.use_ln:
            y = K.layer_norm(m.dwconv(x).permute(0, 2, 3, 1), ln.weight, ln.bias, ln.eps)
        else:
            y = ln(m.dwconv(x).permute(0, 2, 3, 1))
        residual = x.permute(0, 2, 3, 1)  # x is channels_last: an NHWC-contiguous view
        if self.use_fl:
            return self._mlp(y, residual).permute(0, 3, 1, 2)  # [N, C, H, W], channels_last strides
        y = m.act(F.linear(y, m.pwconv1.weight, m.pwconv1.bias))  # [N, H, W, 4C]
        grn = getattr(m, "grn", None)
        if grn is not None:
            y = self._grn(grn, y)
        y = F.linear(y, m.pwconv2.weight, m.pwconv2.bias)  # [N, H, W, C], fresh: updated in place below
        scale = getattr(m, "layer_scale_parameter", None)
        y = y.add_(residual) if scale is None else torch.addcmul(residual, y, scale)  # x + gamma * y, one pass
        return y.permute(0, 3, 1, 2)  # [N, C, H, W], channels_last strides

    def _mlp(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + gamma * pwconv2(GRN(act(pwconv1(y))))`` on NHWC tensors as two epilogue GEMMs.

        V2: pwconv1 also returns the per-(image, channel) sums of squares of its output ``h``; GRN
        ``gamma * (h * nx) + beta + h == h * (gamma * nx + 1) + beta`` becomes pwconv2's prologue."""
        m = self.module
        grn = getattr(m, "grn", None)
        p1, p2 = m.pwconv1, m.pwconv2
        if grn is None:
            h, prologue = K.fused_linear(y, p1.weight, p1.bias, activation=self.act), None  # [N, H, W, 4C]
        else:
            # the reduction of the sums of squares also gives gamma * nx + 1 (HF's GRN eps 1e-6)
            h, a_scale = K.fused_linear(
                y, p1.weight, p1.bias, activation=self.act, sumsq_images=y.shape[0], grn=(grn.weight, 1e-6)
            )
            prologue = (a_scale, grn.bias.reshape(-1))
        scale = getattr(m, "layer_scale_parameter", None)
        return K.fused_linear(h, p2.weight, p2.bias, scale=scale, residual=residual, prologue=prologue)

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
    -> ``layer_norm_2d``, written channels_last (the stem's NCHW conv output is not copied again by the first
    block; the torch path's result is channels_last too)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.kernels["layer_norm_2d"] = 1

    @classmethod
    def from_module(cls, m: nn.Module, flags: dict[str, bool]) -> FusedForward | str:
        """ConvNeXt's LayerNorm: ``channels_first`` -> this class, ``channels_last`` -> :class:`FusedLayerNorm`."""
        if not flags["layer_norm"]:
            return "layer_norm kernel disabled"
        fmt = getattr(m, "data_format", None)
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 1 or getattr(m, "bias", None) is None:
            return "no [C] weight and bias"
        if fmt == "channels_first":
            return cls(m)
        if fmt == "channels_last" and is_layer_norm(m):
            return FusedLayerNorm(m)
        return f"unknown data_format {fmt!r}"

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if x.dim() != 4:
            return self.eager(x)
        if K.use_triton(x, m.weight, m.bias):  # channels_last out: the stem norm writes what the blocks read
            return K.layer_norm_2d(x, m.weight, m.bias, m.eps, channels_last_out=True)
        # torch path (CPU without the interpreter, or forced): one F.layer_norm over the NHWC view is 2-4x faster
        # than the eight-pass channels-first formula; the result is channels_last, as the next block wants it
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)


class FusedLayerNorm(FusedForward):
    """A last-dim LayerNorm (``nn.LayerNorm`` or ConvNeXt's channels_last one) -> ``layer_norm``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.kernels["layer_norm"] = 1

    @classmethod
    def from_module(cls, m: nn.Module, flags: dict[str, bool]) -> FusedLayerNorm | str | None:
        """A standalone LayerNorm (stem, final norm); None (left alone, not reported) when the kernel is off."""
        if not flags["layer_norm"]:
            return None
        if not is_layer_norm(m):
            return "not a 1-dim LayerNorm with weight and bias"
        return cls(m)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return K.layer_norm(x, m.weight, m.bias, m.eps)
