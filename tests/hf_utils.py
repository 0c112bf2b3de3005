"""Shared test helpers: save HF reference models as real checkpoints, compare outputs with numbers in the message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


def save_hf(model, path: Path, *, safetensors: bool = True, max_shard_size: str | None = None) -> Path:
    """``save_pretrained`` an HF model (safetensors or pytorch_model.bin, optionally sharded) into ``path``."""
    kwargs = {"safe_serialization": safetensors}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(path, **kwargs)
    return Path(path)


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Build HF models with their parameters on the meta device but real buffers (HF's modules need real
    ``position_ids`` and drop-path schedules at construction); like accelerate's
    ``init_empty_weights(include_buffers=False)``. Patches ``nn.Module.register_parameter`` globally: tests only.
    """
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.float() - expected.float()).abs().max().item() if actual.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0, name: str = ""):
    """Shapes equal and ``|a - e| <= atol + rtol * |e|`` everywhere (NaN must match NaN); message carries max error."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.float(), expected.float()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN positions differ ({nan_a.sum()} vs {nan_e.sum()})"
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    assert torch.equal(torch.isinf(a), torch.isinf(e)), f"{name}: Inf positions differ"
    finite = torch.isfinite(e)
    diff = (a - e).abs()[finite]
    bound = (atol + rtol * e.abs())[finite]
    worst = diff.max().item() if diff.numel() else 0.0
    assert bool((diff <= bound).all()), f"{name}: max abs error {worst:.3e} exceeds atol={atol:g} rtol={rtol:g}"


def assert_outputs_close(ours, theirs, fields: tuple[str, ...], *, atol: float, rtol: float = 0.0):
    """Compare named output fields (tensors or tuples of tensors) of a fastvit output and an HF output."""
    for field in fields:
        a, e = getattr(ours, field), getattr(theirs, field)
        if isinstance(e, (tuple, list)):
            assert len(a) == len(e), f"{field}: {len(a)} tensors vs {len(e)}"
            for i, (ai, ei) in enumerate(zip(a, e, strict=True)):
                assert_close(ai, ei, atol=atol, rtol=rtol, name=f"{field}[{i}]")
        else:
            assert_close(a, e, atol=atol, rtol=rtol, name=field)


def assert_tuples_close(actual: tuple, expected: tuple, *, atol: float, rtol: float = 0.0):
    """``return_dict=False`` outputs: same length, each entry (a tensor or a tuple of tensors) close."""
    assert isinstance(actual, tuple) and len(actual) == len(expected), f"{len(actual)} entries vs {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        pairs = zip(a, e, strict=True) if isinstance(e, tuple) else [(a, e)]
        for j, (aj, ej) in enumerate(pairs):
            assert_close(aj, ej, atol=atol, rtol=rtol, name=f"tuple[{i}][{j}]")
