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


def perturb_(model: nn.Module, *, jump: float = 0.3) -> nn.Module:
    """Every parameter off its init value, in place: N(0, 0.2) plus a random offset of 0 or ``jump``."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2).add_(torch.randint_like(p, 2) * jump)
    return model


def backbone_kwargs(kwargs: dict, backbone: tuple | None) -> dict:
    """ViT-style HF config kwargs with a backbone variant ``(out_features, out_indices, apply_layernorm,
    reshape_hidden_states)`` applied (None: unchanged); out_features past ``num_hidden_layers`` are dropped."""
    kwargs = dict(kwargs)
    if backbone is not None:
        out_features, out_indices, apply_ln, reshape = backbone
        kwargs.update(apply_layernorm=apply_ln, reshape_hidden_states=reshape)
        if out_features is not None:
            kwargs["out_features"] = [
                f for f in out_features if f == "stem" or int(f[5:]) <= kwargs["num_hidden_layers"]
            ]
        if out_indices is not None:
            kwargs["out_indices"] = out_indices
    return kwargs


def hf_model(config, model_class, *, attn_implementation: str | None = None) -> nn.Module:
    """``model_class(config)`` in eval mode with every parameter perturbed (:func:`perturb_`)."""
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return perturb_(model_class(config).eval())


def load_like_hf(hf, path: Path, *, safetensors: bool = True) -> nn.Module:
    """Save ``hf`` (:func:`save_hf`) and ``fastvit.load(path, fused=False)`` it: same class name, same state-dict
    keys in the same order, eval mode."""
    import fastvit

    save_hf(hf, path, safetensors=safetensors)
    ours = fastvit.load(path, fused=False)
    assert type(ours).__name__ == type(hf).__name__
    assert list(ours.state_dict()) == list(hf.state_dict())
    assert not ours.training
    return ours


def assert_same_module_tree(ours: nn.Module, hf: nn.Module, *, skip: tuple[str, ...] = ()) -> None:
    """Same module names with the same class names as HF (modules whose name ends with one of ``skip`` aside, e.g.
    dropout and HF's own activation classes: no state), same parameter names and shapes in the same order."""
    theirs = {n: type(m).__name__ for n, m in hf.named_modules() if not n.endswith(skip)}
    mine = {n: type(m).__name__ for n, m in ours.named_modules() if not n.endswith(skip)}
    assert mine == theirs
    for (n, p), (m, q) in zip(ours.named_parameters(), hf.named_parameters(), strict=True):
        assert n == m and p.shape == q.shape, n


def assert_matches_hf_calls(
    ours, hf, x: torch.Tensor, fields: tuple[str, ...], *, atol: float, rtol: float = 0.0, expected=None
):
    """``ours`` vs ``hf`` on ``x``: the first field plainly (SDPA on both sides), every field with hidden states and
    attentions (explicit path), and ``return_dict=False`` with and without hidden states. ``expected(**kwargs)``:
    the reference output of a call (default: ``hf(x, **kwargs)``). Returns our output with hidden states."""
    if expected is None:
        expected = lambda **kwargs: hf(x, **kwargs)  # noqa: E731
    with torch.no_grad():
        assert_outputs_close(ours(x), expected(), fields[:1], atol=atol, rtol=rtol)
        a = ours(x, output_hidden_states=True, output_attentions=True)
        e = expected(output_hidden_states=True, output_attentions=True)
        assert_outputs_close(a, e, fields, atol=atol, rtol=rtol)
        assert_tuples_close(ours(pixel_values=x, return_dict=False), expected(return_dict=False), atol=atol, rtol=rtol)
        assert_tuples_close(
            ours(x, output_hidden_states=True, return_dict=False),
            expected(output_hidden_states=True, return_dict=False),
            atol=atol,
            rtol=rtol,
        )
    return a


def assert_mask_token_used(ours, hf, x: torch.Tensor, patch_size: int, *, atol: float, rtol: float = 0.0) -> None:
    """``bool_masked_pos`` (a random 40% of the patches): the same output as HF, and not the unmasked one."""
    num_patches = (x.shape[-2] // patch_size) * (x.shape[-1] // patch_size)
    mask = torch.rand(x.shape[0], num_patches) < 0.4
    with torch.no_grad():
        a, e = ours(x, bool_masked_pos=mask), hf(x, bool_masked_pos=mask)
        unmasked = ours(x)
    assert_outputs_close(a, e, ("last_hidden_state", "pooler_output"), atol=atol, rtol=rtol)
    assert (a.last_hidden_state - unmasked.last_hidden_state).abs().max() > 1e-3  # the mask token was used
