"""forward_intermediates (timm's API) and DINOv2's get_intermediate_layers, vs HF transformers 4.50's hidden states.

Every vision family, every head: block ``i``'s intermediate must equal HF's ``hidden_states[i + 1]`` (the patch
tokens, with the prefix tokens split off, or the ConvNeXt stage map), ``norm=True`` HF's final norm of it, and a
backbone's ``norm=True`` NCHW intermediates HF's ``feature_maps``. Early exit is counted with forward hooks on the
blocks; the fused path (torch fallbacks and the Triton interpreter) must run fused blocks, no eager fallback. Tiny
models, random weights (every parameter perturbed).

Tolerances (fp32): eager vs HF 2e-5 (reduction order: SDPA vs HF's attention, interpolation); fused vs a float64
run of the same eager model: at most twice eager fp32's own error against it, plus 1e-6 (as tests/test_patch.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import fastvit_kernels
import pytest
import torch

from fastvit.fused import _ops
from fastvit.models import build_model
from fastvit.models.intermediates import take_indices
from fastvit.patching import patch
from tests.hf_utils import assert_close

transformers = pytest.importorskip("transformers")
T = transformers

ATOL, RTOL = 2e-5, 1e-5

CNX = dict(num_channels=3, hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1], num_labels=3)
DINO = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=28, patch_size=7, num_labels=3)
VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=28,
              patch_size=7)  # fmt: skip
TEXT = dict(vocab_size=99, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96,
            max_position_embeddings=40, project_dim=16)  # fmt: skip
BIT = dict(global_padding="same", layer_type="bottleneck", depths=[1, 1], out_features=["stage2"],
           embedding_dynamic_padding=True, hidden_sizes=[8, 16], num_groups=2, embedding_size=8)  # fmt: skip
VITH = dict(image_size=32, patch_size=1, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=96, backbone_config=BIT, backbone_featmap_shape=[1, 16, 4, 4], num_labels=3)  # fmt: skip


def _tower(attr: str) -> Callable:
    return lambda m: m.get_submodule(attr) if attr else m


# id -> (HF class, config class, config, input (H, W), HF tower path, final norm of the tower or None, prefix tokens)
CASES = {
    "convnext-cls": ("ConvNextForImageClassification", "ConvNextConfig", dict(CNX, layer_scale_init_value=0.5),
                     (32, 40), "convnext", None, 0),
    "convnextv2-backbone": ("ConvNextV2Backbone", "ConvNextV2Config", dict(CNX, out_features=["stage1", "stage3"]),
                            (40, 32), "", None, 0),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(DINO, layerscale_value=0.5), (28, 35), "", "layernorm", 1),
    "dinov2-backbone": ("Dinov2Backbone", "Dinov2Config", dict(DINO, out_features=["stem", "stage2", "stage4"]),
                        (35, 28), "", "layernorm", 1),
    "dinov2-reg-swiglu-cls": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                              dict(DINO, use_swiglu_ffn=True, num_register_tokens=2), (28, 42),
                              "dinov2_with_registers", "layernorm", 3),
    "dinov2-reg-backbone": ("Dinov2WithRegistersBackbone", "Dinov2WithRegistersConfig",
                            dict(DINO, out_indices=[1, 3]), (21, 28), "", "layernorm", 5),
    "vit-hybrid-cls": ("ViTHybridForImageClassification", "ViTHybridConfig", VITH, (32, 32), "vit", "layernorm", 1),
    "altclip-vision": ("AltCLIPVisionModel", "AltCLIPVisionConfig", VISION, (28, 28), "vision_model",
                       "post_layernorm", 1),
    "altclip": ("AltCLIPModel", "AltCLIPConfig", dict(text_config=TEXT, vision_config=VISION, projection_dim=16),
                (28, 28), "vision_model", "post_layernorm", 1),
}  # fmt: skip
TOKENS = [c for c, v in CASES.items() if v[6] > 0]
INDICES = [None, 2, [0, -1], [1], (-2,)]


def _models(case: str):
    """(HF model, our eager model with its weights, input)."""
    cls, cfg_cls, cfg, (h, w), *_ = CASES[case]
    torch.manual_seed(0)
    hf = getattr(T, cls)(getattr(T, cfg_cls)(**copy.deepcopy(cfg))).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = build_model(hf.config.to_dict(), _task(hf)).eval()
    ours.load_state_dict(hf.state_dict())
    return hf, ours, torch.randn(2, 3, h, w)


def _task(hf) -> str:
    name = type(hf).__name__
    if name == "AltCLIPVisionModel":
        return "vision"
    return "classification" if "Classification" in name else "backbone" if "Backbone" in name else "features"


def _hf_hidden(case: str, hf, x: torch.Tensor) -> tuple:
    """HF's hidden states of the vision tower: embeddings output, then every block's."""
    with torch.no_grad():
        return _tower(CASES[case][4])(hf)(x, output_hidden_states=True).hidden_states


def _expected(case: str, hf, x: torch.Tensor, indices, norm: bool, fmt: str) -> list:
    """HF's hidden states at the blocks ``indices``, as forward_intermediates formats them (prefix split off)."""
    *_, tower_path, norm_name, prefix = CASES[case]
    with torch.no_grad():
        hidden = _hf_hidden(case, hf, x)
        take, _ = take_indices(len(hidden) - 1, indices)
        out = []
        for i in take:
            y = hidden[i + 1]
            if norm and norm_name:
                y = _tower(tower_path)(hf).get_submodule(norm_name)(y)
            if norm and "convnext" in case and "backbone" in case and f"stage{i + 1}" in hf.hidden_states_norms:
                y = hf.hidden_states_norms[f"stage{i + 1}"](y)
            if prefix:
                rows, cols = _grid(case, hf, x, y.shape[1] - prefix)
                patches = y[:, prefix:]
                y = patches.reshape(2, rows, cols, -1).permute(0, 3, 1, 2) if fmt == "NCHW" else patches
            elif fmt == "NLC":
                y = y.flatten(2).transpose(1, 2)
            out.append(y)
    return out


def _grid(case: str, hf, x: torch.Tensor, num_patches: int) -> tuple[int, int]:
    if case.startswith("vit-hybrid"):
        side = int(num_patches**0.5)
        return side, side
    p = CASES[case][2].get("patch_size") or CASES[case][2]["vision_config"]["patch_size"]
    return x.shape[-2] // p, x.shape[-1] // p


def _check(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} intermediates, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert_close(a, e, atol=ATOL, rtol=RTOL, name=f"{what}[{i}]")


# ----------------------------------------------------------------------------------------------------- eager vs HF


@pytest.mark.parametrize("case", list(CASES))
def test_matches_hf_hidden_states(case):
    hf, ours, x = _models(case)
    with torch.no_grad():
        for indices in INDICES:
            for norm in (False, True):
                for fmt in ("NCHW", "NLC"):
                    got = ours.forward_intermediates(x, indices, norm=norm, output_fmt=fmt, intermediates_only=True)
                    _check(got, _expected(case, hf, x, indices, norm, fmt), f"{indices} norm={norm} {fmt}")
                    if fmt == "NCHW":
                        assert all(t.is_contiguous() for t in got)


@pytest.mark.parametrize("case", TOKENS)
def test_prefix_tokens_and_final(case):
    """``return_prefix_tokens`` gives back the CLS (+ registers); ``intermediates_only=False`` also returns the
    tower's final features, HF's base-model ``last_hidden_state``."""
    hf, ours, x = _models(case)
    *_, tower_path, norm_name, prefix = CASES[case]
    with torch.no_grad():
        hidden = _hf_hidden(case, hf, x)
        final, got = ours.forward_intermediates(x, [0, 2], output_fmt="NLC", return_prefix_tokens=True)
        for i, (patches, tokens) in zip([0, 2], got, strict=True):
            assert tokens.shape[1] == prefix
            assert_close(torch.cat([tokens, patches], 1), hidden[i + 1], atol=ATOL, rtol=RTOL, name=f"block {i}")
        last = hidden[-1]
        if "altclip" not in case:  # CLIP's last_hidden_state is the encoder output, not normed
            last = _tower(tower_path)(hf).get_submodule(norm_name)(last)
    assert_close(final, last, atol=ATOL, rtol=RTOL, name="final")


@pytest.mark.parametrize("case", ["convnextv2-backbone", "dinov2-backbone", "dinov2-reg-backbone"])
def test_backbone_feature_maps(case):
    """A backbone's NCHW ``norm=True`` intermediates at its out stages are HF's feature maps (stage k = block k-1)."""
    hf, ours, x = _models(case)
    blocks = [i - 1 for i in hf.out_indices if i > 0]
    with torch.no_grad():
        maps = hf(x).feature_maps[-len(blocks) :]
        got = ours.forward_intermediates(x, blocks, norm=True, intermediates_only=True)
    _check(got, list(maps), "feature_maps")


@pytest.mark.parametrize("case", ["dinov2", "dinov2-reg-swiglu-cls"])
def test_get_intermediate_layers(case):
    """The DINOv2 repository's semantics: blocks (``n`` last or a list), final norm, patch tokens only (no CLS, no
    registers), ``reshape`` to ``[B, D, H/p, W/p]``, ``return_class_token`` pairs."""
    hf, ours, x = _models(case)
    *_, tower_path, _, prefix = CASES[case]
    norm = _tower(tower_path)(hf).layernorm
    p = DINO["patch_size"]
    with torch.no_grad():
        hidden = _hf_hidden(case, hf, x)
        for n, blocks in ((1, [3]), (2, [2, 3]), ([0, 2], [0, 2])):
            for reshape in (False, True):
                for use_norm in (True, False):
                    got = ours.get_intermediate_layers(x, n, reshape=reshape, return_class_token=True, norm=use_norm)
                    assert isinstance(got, tuple) and len(got) == len(blocks)
                    for (patches, cls), i in zip(got, blocks, strict=True):
                        y = norm(hidden[i + 1]) if use_norm else hidden[i + 1]
                        e = y[:, prefix:]
                        if reshape:
                            e = e.reshape(2, x.shape[-2] // p, x.shape[-1] // p, -1).permute(0, 3, 1, 2)
                        assert_close(patches, e, atol=ATOL, rtol=RTOL, name=f"n={n} block {i}")
                        assert_close(cls, y[:, 0], atol=ATOL, rtol=RTOL, name=f"n={n} cls {i}")
        plain = ours.get_intermediate_layers(x)  # defaults: n=1, norm=True, no reshape, no class token
    assert len(plain) == 1
    assert_close(plain[0], norm(hidden[-1])[:, prefix:], atol=ATOL, rtol=RTOL, name="defaults")


@pytest.mark.parametrize("case", ["vit-hybrid-cls", "altclip-vision"])
def test_interpolate_pos_encoding_is_forwarded(case):
    """Other image sizes need ``interpolate_pos_encoding=True`` as in ``forward`` (HF 4.50's ViT-Hybrid resize is
    wrong, see test_vit_hybrid.py: the reference is the model's own forward, itself checked there)."""
    _, ours, _ = _models(case)
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        hidden = ours(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        got = ours.forward_intermediates(x, [0, -1], output_fmt="NLC", intermediates_only=True,
                                         return_prefix_tokens=True, interpolate_pos_encoding=True)  # fmt: skip
        with pytest.raises(ValueError, match="interpolate_pos_encoding"):
            ours.forward_intermediates(x, [0], intermediates_only=True)
    for (patches, prefix), i in zip(got, [0, len(hidden) - 2], strict=True):
        assert_close(torch.cat([prefix, patches], 1), hidden[i + 1], atol=1e-6, rtol=1e-6, name=f"block {i}")


# ------------------------------------------------------------------------------------------------------ early exit


LATE = {  # the modules after the encoder, by qualified name: final norms, pooler, head, projections, text tower
    "classifier", "pooler", "layernorm", "convnext.layernorm", "dinov2_with_registers.layernorm", "vit.layernorm",
    "vision_model.post_layernorm", "visual_projection", "text_model", "text_projection",
}  # fmt: skip


def _count_blocks(ours) -> tuple[list[int], list]:
    plan = ours._intermediate_plan()
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(plan.blocks)]
    return ran, handles


@pytest.mark.parametrize("case", ["convnext-cls", "dinov2-reg-swiglu-cls", "vit-hybrid-cls", "altclip"])
def test_early_exit(case):
    hf, ours, x = _models(case)
    ran, handles = _count_blocks(ours)
    after = []  # modules after the encoder: final norms, pooler, classifier, projections, the text tower
    late = [m for n, m in ours.named_modules() if n in LATE]
    assert late, "no module after the encoder found"
    handles += [m.register_forward_hook(lambda *a: after.append(1)) for m in late]
    with torch.no_grad():
        for indices, expected in (([1], [0, 1]), (1, None), ([0], [0])):
            ran.clear()
            ours.forward_intermediates(x, indices, intermediates_only=True)
            n = len(ours._intermediate_plan().blocks)
            assert ran == (expected if expected is not None else list(range(n))), (indices, ran)
        assert after == [], "a module after the last requested block ran"
        ran.clear()
        ours.forward_intermediates(x, [0])  # the final features need every block
        assert ran == list(range(n))
    for h in handles:
        h.remove()


# --------------------------------------------------------------------------------------------------- fused path


class _KernelSpy:
    def __init__(self, monkeypatch) -> None:
        self.calls: dict[str, int] = {}
        for name in _ops.__all__:
            fn = getattr(_ops, name)
            monkeypatch.setattr(_ops, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return counted


def _assert_fused_close(fused: list, eager: list, ref64: list, what: str) -> None:
    for i, (f, e, r) in enumerate(zip(fused, eager, ref64, strict=True)):
        err_f, err_e = (f.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        assert err_f <= 2 * err_e + 1e-6, f"{what}[{i}]: fused err {err_f:.3e} vs eager fp32 err {err_e:.3e}"


@pytest.mark.parametrize("backend", ["torch", "auto"], ids=["fallback", "triton"])
@pytest.mark.parametrize("case", ["convnextv2-backbone", "dinov2-reg-swiglu-cls", "vit-hybrid-cls", "altclip-vision"])
def test_fused_path(case, backend, monkeypatch):
    _, ours, x = _models(case)
    indices = [0, 1]
    with torch.no_grad():
        eager = ours.forward_intermediates(x, indices, norm=True, intermediates_only=True)
        ref64 = (
            copy.deepcopy(ours).double().forward_intermediates(x.double(), indices, norm=True, intermediates_only=True)
        )
        report = patch(ours)
        assert report.num_fused > 0
        ran, handles = _count_blocks(ours)
        spy = _KernelSpy(monkeypatch)
        with fastvit_kernels.backend(backend):
            fused = ours.forward_intermediates(x, indices, norm=True, intermediates_only=True)
    for h in handles:
        h.remove()
    assert ran == [0, 1]
    assert all(t.is_contiguous() for t in fused)  # HF's layout, though the fused ConvNeXt blocks run channels_last
    kernel = "dwconv2d_layer_norm" if "convnext" in case else "attention"  # one call per fused layer
    assert spy.calls.get(kernel, 0) == 2, f"the two blocks did not both run fused: {spy.calls}"
    _assert_fused_close(fused, eager, ref64, f"{case} {backend}")


@pytest.mark.parametrize("case", ["convnext-cls", "dinov2-reg-swiglu-cls"])
def test_compile_fullgraph(case):
    """The fused torch path traces in one graph (aot_eager: no C++ compiler needed on CPU)."""
    _, ours, x = _models(case)
    patch(ours)
    with torch.no_grad(), fastvit_kernels.backend("torch"):
        expected = ours.forward_intermediates(x, [0, 2], intermediates_only=True)

        def fn(px):
            return ours.forward_intermediates(px, [0, 2], intermediates_only=True)

        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    for a, e in zip(got, expected, strict=True):
        assert_close(a, e, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------- errors


def test_bad_arguments():
    _, ours, x = _models("dinov2")
    with pytest.raises(ValueError, match=r"\[-4, 4\)"):
        ours.forward_intermediates(x, [4])
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        ours.forward_intermediates(x, 0)
    with pytest.raises(ValueError, match="at least one"):
        ours.forward_intermediates(x, [])
    with pytest.raises(TypeError, match="indices"):
        ours.forward_intermediates(x, 1.5)
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")
    _, convnext, y = _models("convnext-cls")
    with pytest.raises(ValueError, match="no prefix tokens"):
        convnext.forward_intermediates(y, return_prefix_tokens=True)


def test_take_indices_like_timm():
    assert take_indices(12, None) == (list(range(12)), 11)
    assert take_indices(12, 4) == ([8, 9, 10, 11], 11)
    assert take_indices(12, [11, -12, 3, 3]) == ([0, 3, 11], 11)
    assert take_indices(12, (2,)) == ([2], 2)
