"""Intermediate layers of the vision towers, with early exit: timm's ``forward_intermediates`` for every family.

    feats = model.forward_intermediates(pixel_values, indices=[2, 5, 8, 11], intermediates_only=True)
    last, feats = model.forward_intermediates(pixel_values, indices=4, norm=True, output_fmt="NLC")

Indices count the blocks of the tower, from 0: the transformer layers (DINOv2 with or without registers,
ViT-Hybrid, AltCLIP's vision tower) or the ConvNeXt stages. Block ``i``'s output is HF's ``hidden_states[i + 1]``
(``hidden_states[0]`` is the embeddings' output). ``indices``: None = every block, an int ``n`` = the last ``n``,
a sequence = those blocks (negative from the end); outputs come in block order.

Each family's model base opts in with :class:`IntermediatesMixin` and says how to run its tower block by block
(:meth:`IntermediatesMixin._intermediate_plan`, an :class:`IntermediatePlan`): the blocks are the model's own
modules, called as the encoder calls them, so fused blocks run fused and forward hooks on them fire. With
``intermediates_only=True`` nothing runs after the last requested block (no later block, no final norm, no head).
No data-dependent Python: ``torch.compile(fullgraph=True)`` traces it. Nothing here imports the kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

OUTPUT_FORMATS = ("NCHW", "NLC")


def take_indices(num_blocks: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``, checked: the sorted block indices to return and the last one.

    Args:
        num_blocks: blocks in the tower.
        indices: None (all), an int ``n`` (the last ``n``, 1 <= n <= num_blocks) or a sequence of indices in
            ``[-num_blocks, num_blocks)`` (duplicates collapse).
    """
    if indices is None:
        indices = num_blocks
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)):
        raise TypeError(f"indices must be None, an int or a sequence of ints, got {type(indices).__name__}")
    if isinstance(indices, int):
        if not 1 <= indices <= num_blocks:
            raise ValueError(f"indices={indices}: the number of last blocks must be in [1, {num_blocks}]")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not -num_blocks <= i < num_blocks]
        if bad or not indices:
            raise ValueError(
                f"indices {list(indices)}: need at least one block index in [{-num_blocks}, {num_blocks}) "
                f"(the tower has {num_blocks} blocks)"
            )
        take = sorted({i % num_blocks for i in indices})
    return take, take[-1]


@dataclass
class IntermediatePlan:
    """How to run one vision tower block by block; built by the family from the model's own modules.

    ``embed``: ``pixel_values -> (input of block 0, (rows, cols) of the patch grid or None for feature maps)``;
    ``run``: one block as the encoder calls it, ``(block, hidden) -> hidden``; ``final``: the last block's output ->
    HF's ``last_hidden_state``; ``norm``: ``(block index, output) -> normed output`` for ``norm=True`` (None: the
    family has no norm that applies to its intermediates); ``num_prefix_tokens``: tokens before the patches
    (CLS, registers); ``tokens``: ``[B, S, D]`` token sequences (else ``[B, C, H, W]`` maps).
    """

    embed: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int] | None]]
    blocks: Sequence[nn.Module]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    final: Callable[[torch.Tensor], torch.Tensor]
    norm: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    num_prefix_tokens: int = 0
    tokens: bool = True


def first_output(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Run an HF-style layer that returns ``(hidden, ...)``."""
    return block(hidden)[0]


def vit_plan(tower: nn.Module, embed: Callable, num_prefix_tokens: int) -> IntermediatePlan:
    """The plan of an HF ViT-style tower: ``tower.encoder.layer`` blocks returning ``(hidden, ...)``, and
    ``tower.layernorm`` as both the final norm and the norm of the intermediates."""
    return IntermediatePlan(
        embed=embed,
        blocks=tower.encoder.layer,
        run=first_output,
        final=tower.layernorm,
        norm=lambda i, hidden: tower.layernorm(hidden),
        num_prefix_tokens=num_prefix_tokens,
    )


def _format(plan: IntermediatePlan, y: torch.Tensor, grid, output_fmt: str, prefix_tokens: bool):
    if not plan.tokens:  # [B, C, H, W]; the fused ConvNeXt path keeps channels_last strides: HF's layout out
        return y.contiguous() if output_fmt == "NCHW" else y.flatten(2).transpose(1, 2)
    prefix, patches = y[:, : plan.num_prefix_tokens], y[:, plan.num_prefix_tokens :]  # [B, P, D], [B, N, D]
    if output_fmt == "NCHW":
        patches = patches.reshape(y.shape[0], grid[0], grid[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous()
    return (patches, prefix) if prefix_tokens else patches


class IntermediatesMixin:
    """``forward_intermediates`` for a model class whose family implements :meth:`_intermediate_plan`."""

    def _intermediate_plan(self, **kwargs) -> IntermediatePlan:  # pragma: no cover - each family overrides
        raise NotImplementedError(f"{type(self).__name__} has no vision tower to take intermediate layers from")

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
        **kwargs,
    ) -> list | tuple[torch.Tensor, list]:
        """Outputs of the blocks ``indices`` (timm's API), computing nothing past the last one when
        ``intermediates_only``.

        Args:
            pixel_values: ``[B, C, H, W]``.
            indices: None (every block), an int ``n`` (the last ``n``) or block indices (negative from the end).
            norm: apply the tower's final norm to each intermediate (DINOv2 / ViT-Hybrid ``layernorm``, AltCLIP
                ``post_layernorm``, a ConvNeXt backbone's ``hidden_states_norms`` of its ``out_features``; ConvNeXt
                models and classifiers have none for maps and return them as they are).
            output_fmt: ``"NCHW"`` (patch tokens as ``[B, D, rows, cols]`` maps, contiguous) or ``"NLC"``
                (``[B, N, D]`` patch tokens; ConvNeXt maps flattened to ``[B, H*W, C]``). Prefix tokens (CLS,
                registers) are split off in both.
            intermediates_only: return only the intermediates and stop after the last requested block.
            return_prefix_tokens: each intermediate as ``(patches, prefix tokens [B, P, D])`` (transformers only).
            **kwargs: forwarded to the embeddings, e.g. ``interpolate_pos_encoding=True`` (ViT-Hybrid, AltCLIP).

        Returns:
            The list of intermediates, or ``(last_hidden_state, intermediates)`` where ``last_hidden_state`` is the
            tower's final features as HF's base model returns them (the head, pooler and projections never run).
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        plan = self._intermediate_plan(**kwargs)
        if return_prefix_tokens and not plan.tokens:
            raise ValueError(f"{type(self).__name__} has feature maps, no prefix tokens: return_prefix_tokens=False")
        take, last = take_indices(len(plan.blocks), indices)
        hidden, grid = plan.embed(pixel_values)
        blocks = plan.blocks[: last + 1] if intermediates_only else plan.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            hidden = plan.run(block, hidden)
            if i in take:
                y = plan.norm(i, hidden) if norm and plan.norm is not None else hidden
                intermediates.append(_format(plan, y, grid, output_fmt, return_prefix_tokens))
        if intermediates_only:
            return intermediates
        return plan.final(hidden), intermediates


__all__ = ["IntermediatePlan", "IntermediatesMixin", "take_indices", "first_output", "OUTPUT_FORMATS"]
