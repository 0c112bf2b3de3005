"""Eager AltCLIP (CLIP ViT image tower + XLM-R text tower) vs HF transformers 4.50: same keys, same outputs (fp32).

Each config builds a small HF ``AltCLIPModel`` with every parameter randomized and saves it once (safetensors,
pytorch_model.bin, or sharded); ``fastvit.load(dir, fused=False, task=...)`` then gives the full model, the vision
tower or the text tower from that one checkpoint, compared with HF on padded text batches (rows of different lengths,
``attention_mask`` zeros) with ``output_hidden_states``. The towers saved alone (HF ``AltCLIPVisionModel`` /
``AltCLIPTextModel``) load too. The full-size registry entry is checked against HF's module tree on the meta device.
"""

from __future__ import annotations

import pytest
import torch

import fastvit
from fastvit import registry
from fastvit.models import altclip, build_model
from tests.hf_utils import assert_close, assert_outputs_close, perturb_, save_hf

transformers = pytest.importorskip("transformers")

ATOL, RTOL = 1e-5, 1e-4  # fp32; differences are reduction-order noise (SDPA vs matmul-softmax, pre-scaled q)

# (id, text config, vision config, top-level kwargs, save format, image size to run at)
CASES = [
    (
        "base-safetensors",
        dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=40, project_dim=24),
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=30,
             patch_size=6),
        dict(projection_dim=16),
        dict(safetensors=True),
    ),
    (  # gelu_new text, 2 token types, pad id 0, eps; gelu vision with 2 channels; from pytorch_model.bin
        "variant-bin",
        dict(vocab_size=64, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=40,
             max_position_embeddings=24, project_dim=20, hidden_act="gelu_new", type_vocab_size=2, pad_token_id=0,
             layer_norm_eps=1e-12),
        dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
             patch_size=7, hidden_act="gelu", num_channels=2, layer_norm_eps=1e-6),
        dict(projection_dim=12, logit_scale_init_value=1.5),
        dict(safetensors=False),
    ),
    (  # sharded safetensors (the published weights may come sharded)
        "sharded",
        dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
             max_position_embeddings=20, project_dim=16),
        dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=16,
             patch_size=4),
        dict(projection_dim=8),
        dict(safetensors=True, max_shard_size="20KB"),
    ),
]  # fmt: skip
VISION_FIELDS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")
TEXT_FIELDS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


def _text_batch(tc: dict) -> dict[str, torch.Tensor]:
    """Rows of lengths 9, 6, 3 (pads after), pad ids where the mask is 0, random token types when there are 2."""
    pad, vocab = tc.get("pad_token_id", 1), tc["vocab_size"]
    ids = torch.randint(3, vocab, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    for row, length in ((1, 6), (2, 3)):
        ids[row, length:], mask[row, length:] = pad, 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if tc.get("type_vocab_size", 1) > 1:
        batch["token_type_ids"] = torch.randint(0, 2, (3, 9))
    return batch


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def saved(request, tmp_path_factory):
    """(case, HF AltCLIPModel, checkpoint directory)."""
    name, tc, vc, top, fmt = request.param
    config = transformers.AltCLIPConfig(text_config=tc, vision_config=vc, attn_implementation="eager", **top)
    theirs = transformers.AltCLIPModel(config).eval()
    perturb_(theirs, jump=0.5)
    path = save_hf(theirs, tmp_path_factory.mktemp(name), **fmt)
    return request.param, theirs, path


def _pixels(vc: dict, size: int | None = None) -> torch.Tensor:
    size = size or vc["image_size"]
    return torch.randn(2, vc.get("num_channels", 3), size, size)


def test_full_model(saved):
    (name, tc, vc, _, fmt), theirs, path = saved
    ours = fastvit.load(path, fused=False)  # AltCLIPModel from config.json's architectures
    assert type(ours) is altclip.AltCLIPModel
    assert list(ours.state_dict()) == list(theirs.state_dict())
    text, px = _text_batch(tc), _pixels(vc)
    with torch.no_grad():
        a = ours(**text, pixel_values=px, output_hidden_states=True, output_attentions=True)
        e = theirs(**text, pixel_values=px, output_hidden_states=True, output_attentions=True)
        fields = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")
        assert_outputs_close(a, e, fields, atol=ATOL, rtol=RTOL)
        assert_outputs_close(a.text_model_output, e.text_model_output, TEXT_FIELDS, atol=ATOL, rtol=RTOL)
        assert_outputs_close(a.vision_model_output, e.vision_model_output, VISION_FIELDS, atol=ATOL, rtol=RTOL)
        assert_close(ours.get_text_features(**text), theirs.get_text_features(**text), atol=ATOL, rtol=RTOL)
        assert_close(ours.get_image_features(px), theirs.get_image_features(px), atol=ATOL, rtol=RTOL)
        a_t = ours(**text, pixel_values=px, return_dict=False)
        e_t = theirs(**text, pixel_values=px, return_dict=False)
    for i in range(4):  # logits_per_image, logits_per_text, text_embeds, image_embeds
        assert_close(a_t[i], e_t[i], atol=ATOL, rtol=RTOL, name=f"tuple[{i}]")
    assert_close(a_t[4][0], e_t[4][0], atol=ATOL, rtol=RTOL, name="text_model_output[0]")


def test_vision_tower(saved):
    (name, tc, vc, _, fmt), theirs, path = saved
    with pytest.warns(UserWarning, match="as AltCLIPVisionModel: dropped logit_scale"):
        ours = fastvit.load(path, fused=False, task="vision")  # an AltCLIPModel checkpoint as the vision tower
    assert type(ours) is altclip.AltCLIPVisionModel
    px = _pixels(vc)
    with torch.no_grad():
        a = ours(px, output_hidden_states=True, output_attentions=True)
        e = theirs.vision_model(px, output_hidden_states=True, output_attentions=True)
        assert_outputs_close(a, e, VISION_FIELDS, atol=ATOL, rtol=RTOL)
        # other image sizes: CLIP's bicubic position-embedding interpolation (correct in HF for this model)
        big = _pixels(vc, vc["image_size"] + vc["patch_size"] * 2 + 1)
        a = ours(pixel_values=big, interpolate_pos_encoding=True)
        e = theirs.vision_model(pixel_values=big, interpolate_pos_encoding=True)
        assert_outputs_close(a, e, ("last_hidden_state", "pooler_output"), atol=ATOL, rtol=RTOL)


def test_text_tower(saved):
    (name, tc, vc, _, fmt), theirs, path = saved
    with pytest.warns(UserWarning, match="another architecture than AltCLIPTextModel"):
        ours = fastvit.load(path, fused=False, task="text")  # text_model.* keys: prefix stripped, the rest dropped
    assert type(ours) is altclip.AltCLIPTextModel
    text = _text_batch(tc)
    with torch.no_grad():
        a = ours(**text, output_hidden_states=True, output_attentions=True)
        e = theirs.text_model(**text, output_hidden_states=True, output_attentions=True)
        assert_outputs_close(a, e, TEXT_FIELDS, atol=ATOL, rtol=RTOL)
        head_mask = torch.ones(tc["num_attention_heads"]).index_fill_(0, torch.tensor([1]), 0.0)  # drop head 1
        a, e = ours(**text, head_mask=head_mask), theirs.text_model(**text, head_mask=head_mask)
        assert_outputs_close(a, e, ("last_hidden_state",), atol=ATOL, rtol=RTOL)
        # no attention_mask: positions still come from the pad ids (as HF)
        a = ours(text["input_ids"])
        e = theirs.text_model(text["input_ids"])
        assert_outputs_close(a, e, ("last_hidden_state", "pooler_output"), atol=ATOL, rtol=RTOL)


def test_towers_saved_alone(tmp_path):
    """HF AltCLIPVisionModel / AltCLIPTextModel checkpoints (model_type altclip_vision_model / altclip_text_model)."""
    _, tc, vc, _, _ = CASES[0]
    vision = transformers.AltCLIPVisionModel(transformers.AltCLIPVisionConfig(**vc)).eval()
    text = transformers.AltCLIPTextConfig(**tc)
    text = transformers.AltCLIPTextModel(text).eval()
    for m in (vision, text):
        perturb_(m, jump=0.5)
    ours_v = fastvit.load(save_hf(vision, tmp_path / "v"), fused=False)
    ours_t = fastvit.load(save_hf(text, tmp_path / "t", safetensors=False), fused=False)
    assert type(ours_v) is altclip.AltCLIPVisionModel and type(ours_t) is altclip.AltCLIPTextModel
    px, batch = _pixels(vc), _text_batch(tc)
    with torch.no_grad():
        assert_outputs_close(ours_v(px), vision(px), ("last_hidden_state", "pooler_output"), atol=ATOL, rtol=RTOL)
        assert_outputs_close(
            ours_t(**batch), text(**batch), ("last_hidden_state", "pooler_output"), atol=ATOL, rtol=RTOL
        )
    with pytest.raises(ValueError, match="vision tower"):
        fastvit.load(tmp_path / "v", fused=False, task="text")


def test_pre_4_31_checkpoint_with_position_ids(tmp_path):
    """Checkpoints saved before transformers 4.31 (BAAI/AltCLIP's era) hold the then-persistent ``position_ids``
    buffers of both towers; HF ignores them on load, so must we (our models have no such buffers)."""
    from safetensors.torch import load_file, save_file

    _, tc, vc, top, _ = CASES[0]
    config = transformers.AltCLIPConfig(text_config=tc, vision_config=vc, attn_implementation="eager", **top)
    theirs = transformers.AltCLIPModel(config).eval()
    perturb_(theirs, jump=0.5)
    path = save_hf(theirs, tmp_path)
    state = load_file(path / "model.safetensors")
    num_positions = (vc["image_size"] // vc["patch_size"]) ** 2 + 1
    state["text_model.roberta.embeddings.position_ids"] = torch.arange(tc["max_position_embeddings"])[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(num_positions)[None]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    reloaded = transformers.AltCLIPModel.from_pretrained(path).eval()  # the oracle: HF accepts this checkpoint
    ours = fastvit.load(path, fused=False)
    text, px = _text_batch(tc), _pixels(vc)
    with torch.no_grad():
        a, e = ours(**text, pixel_values=px), reloaded(**text, pixel_values=px)
    assert_outputs_close(a, e, ("logits_per_image", "text_embeds", "image_embeds"), atol=ATOL, rtol=RTOL)
    vision = fastvit.load(path, fused=False, task="vision")  # the legacy keys of a tower loaded alone, too
    with torch.no_grad():
        assert_close(vision(px).pooler_output, reloaded.vision_model(px).pooler_output, atol=ATOL, rtol=RTOL)


def test_legacy_config_dicts():
    """``text_config_dict`` / ``vision_config_dict`` (older config.json files) win over ``*_config``, as in HF."""
    raw = dict(
        model_type="altclip",
        text_config={"hidden_size": 8, "project_dim": 4},
        text_config_dict={"hidden_size": 16, "num_hidden_layers": 1},
        vision_config_dict={"patch_size": 8, "image_size": 32},
    )
    ours = altclip.AltCLIPConfig.from_dict(raw)
    theirs = transformers.AltCLIPConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    for tower in ("text_config", "vision_config"):
        for f in ("hidden_size", "num_hidden_layers", "project_dim", "patch_size", "image_size"):
            if hasattr(getattr(theirs, tower), f):
                assert getattr(getattr(ours, tower), f) == getattr(getattr(theirs, tower), f), (tower, f)


def test_bad_inputs():
    _, tc, vc, top, _ = CASES[0]
    model = build_model({"model_type": "altclip", "text_config": tc, "vision_config": vc, **top}, "features").eval()
    text, px = _text_batch(tc), _pixels(vc)
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model.get_text_features(text["input_ids"][0])
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model.get_text_features(text["input_ids"][None])
    with pytest.raises(ValueError, match="integer token ids"):
        model.get_text_features(text["input_ids"].float())
    with pytest.raises(ValueError, match="attention_mask"):
        model.get_text_features(text["input_ids"], attention_mask=text["attention_mask"][:, :5])
    with pytest.raises(ValueError, match="positions"):
        model.get_text_features(torch.full((1, tc["max_position_embeddings"]), 5))
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\].*\[2, 1, 30, 30\]"):
        model.get_image_features(px[:, :1])
    with pytest.raises(ValueError, match="shape"):
        model.get_image_features(px[0])
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.get_image_features(_pixels(vc, 36))
    with pytest.raises(ValueError, match="task"):
        build_model({"model_type": "altclip"}, "classification")


@pytest.mark.parametrize("task", ["features", "vision", "text"])
def test_registry_entry_matches_hf_tree(task):
    """The full-size BAAI/AltCLIP registry config builds; keys and shapes equal HF's (both on the meta device)."""
    info = registry.get_model_info("altclip")
    config = transformers.AltCLIPConfig(**info.config)
    with torch.device("meta"):
        ours = build_model(info.config, task)
        theirs = {
            "features": lambda: transformers.AltCLIPModel(config),
            "vision": lambda: transformers.AltCLIPVisionModel(config.vision_config),
            "text": lambda: transformers.AltCLIPTextModel(config.text_config),
        }[task]()
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    e = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == e
    ours_cls = {n: type(m).__name__ for n, m in ours.named_modules()}
    for n, m in theirs.named_modules():
        if type(m).__module__.startswith("transformers.models"):
            assert ours_cls.get(n) == type(m).__name__, n
