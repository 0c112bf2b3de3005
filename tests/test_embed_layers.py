"""``fastvit embed --layers`` / ``Embedder(layers=...)``: intermediate layers pooled and concatenated.

The reference is the model's own ``output_hidden_states`` (checked against HF in the family tests): layer ``i`` is
``hidden_states[i + 1]`` after the final norm, pooled (``cls``: CLS token; ``mean``: the patch tokens, registers
excluded; ConvNeXt: the stage map), concatenated in layer order.
"""

from __future__ import annotations

import pytest
import torch
from image_utils import make_image_folder, tiny_model

from fastvit.embedding import Embedder, read_embeddings
from fastvit.preprocess import ImageProcessor
from tests.hf_utils import assert_close

pytest.importorskip("pyarrow.parquet")

REGISTERS = {
    "model_type": "dinov2_with_registers",
    "architectures": ["Dinov2WithRegistersModel"],
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "num_register_tokens": 2,
}
PROCESSOR = ImageProcessor(kind="bit", size={"shortest_edge": 32}, crop_size=28)


def _randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _reference(model, x: torch.Tensor, layers: list[int], pool: str) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states
        n = len(hidden) - 1
        feats = []
        for i in sorted({i % n for i in layers}):
            h = hidden[i + 1]
            if h.ndim == 4:  # ConvNeXt stage map: no norm for maps, mean over space
                feats.append(h.mean(dim=(-2, -1)))
                continue
            h = model.layernorm(h)
            prefix = model.config.num_prefix_tokens
            cls, mean = h[:, 0], h[:, prefix:].mean(dim=1)
            feats.append({"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], -1)}[pool])
    return torch.cat(feats, dim=-1)


@pytest.mark.parametrize("pool", ["cls", "mean", "cls+mean"])
def test_registers_layers(pool):
    model = _randomized(tiny_model("dinov2", **{k: v for k, v in REGISTERS.items()}))
    embedder = Embedder(model, pool=pool, processor=PROCESSOR, device="cpu", layers=[0, -1])
    x = torch.randn(3, 3, 28, 28)
    got = embedder.embed_pixels(x)
    assert_close(got, _reference(model, x, [0, -1], pool), atol=1e-5, rtol=1e-5, name=pool)
    assert embedder.metadata["layers"] == "0,-1"


def test_convnext_layers_default_pool():
    model = _randomized(tiny_model("convnext"))
    embedder = Embedder(model, processor=PROCESSOR, device="cpu", layers=[1, 2])
    assert embedder.pool == "mean"
    x = torch.randn(2, 3, 64, 64)
    got = embedder.embed_pixels(x)
    assert got.shape == (2, 16 + 24)
    base = model.convnext
    assert_close(got, _reference(base, x, [1, 2], "mean"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not apply"):
        Embedder(model, pool="cls", processor=PROCESSOR, device="cpu", layers=[1]).embed_pixels(x)


def test_cli_layers(tmp_path, capsys):
    from fastvit.cli import main

    good, _ = make_image_folder(tmp_path / "images")
    model = _randomized(tiny_model("dinov2", **REGISTERS))
    ckpt = model.save_pretrained(tmp_path / "ckpt", processor=PROCESSOR)
    out = tmp_path / "layers.parquet"
    code = main(["embed", str(ckpt), *good[:3], "--out", str(out), "--quiet", "--num-workers", "0", "--eager",
                 "--layers=-2,-1", "--pool", "cls+mean"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    paths, rows = read_embeddings(out)
    assert paths == good[:3] and rows.shape == (3, 2 * 2 * 32)
    # appending rows of other layers (same width here) would mix features: the resume refuses, naming them
    code = main(["embed", str(ckpt), *good[:4], "--out", str(out), "--quiet", "--num-workers", "0", "--eager",
                 "--layers=-3,-1", "--pool", "cls+mean"])  # fmt: skip
    assert code != 0 and "layers" in capsys.readouterr().err
    assert read_embeddings(out)[0] == good[:3]
    with pytest.raises(SystemExit):
        main(["embed", str(ckpt), good[0], "--out", str(out), "--layers", "a,b"])


def test_registers_mean_pool_skips_registers():
    """``--pool mean`` (final features) averages the patch tokens only, not CLS nor the registers."""
    model = _randomized(tiny_model("dinov2", **REGISTERS))
    x = torch.randn(2, 3, 28, 28)
    got = Embedder(model, pool="mean", processor=PROCESSOR, device="cpu").embed_pixels(x)
    with torch.no_grad():
        expected = model(x).last_hidden_state[:, 3:].mean(dim=1)  # 1 CLS + 2 registers
    assert_close(got, expected, atol=1e-6, rtol=1e-6)
