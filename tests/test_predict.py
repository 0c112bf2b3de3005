"""fastvit.predict / fastvit predict: classifier top-k vs HF argmax; AltCLIP zero-shot with a tokenizers tokenizer."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import fastvit
from fastvit.preprocess import ImageProcessor, load_image
from tests.image_utils import make_image_folder, tiny_model

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

LABELS = {i: f"class_{i}" for i in range(7)}
VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "a", "photo", "of", "cat", "dog", "bird", "car", "red", "blue"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model = tiny_model("convnext", id2label=LABELS)
    processor = ImageProcessor.from_dict({"image_processor_type": "ConvNextImageProcessor", "size": 64, "resample": 3})
    return model.save_pretrained(tmp_path_factory.mktemp("convnext"), processor=processor)


def write_tokenizer(path):
    """An XLM-R-like tokenizer.json (WordLevel, <s> ... </s>) made with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def altclip(tmp_path_factory):
    directory = tmp_path_factory.mktemp("altclip")
    model = tiny_model("altclip")
    model.save_pretrained(directory, processor=ImageProcessor(kind="clip", size={"shortest_edge": 28}, crop_size=28))
    write_tokenizer(directory / "tokenizer.json")
    return directory


def test_top_k_labels_equal_hf_argmax(folder, classifier):
    good, bad = folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = fastvit.predict(classifier, good + bad, top_k=3, fused=False, batch_size=4)
    assert [p.path for p in preds] == good
    assert sum(str(w.message).startswith("skipped") for w in caught) == len(bad)
    hf = transformers.ConvNextForImageClassification.from_pretrained(classifier).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(classifier)
    with torch.no_grad():
        logits = hf(**processor([load_image(p) for p in good], return_tensors="pt")).logits
    probs = logits.softmax(-1)
    for pred, row in zip(preds, probs, strict=True):
        assert len(pred.labels) == 3
        assert pred.labels[0][0] == hf.config.id2label[int(row.argmax())]
        top = row.topk(3)
        assert [label for label, _ in pred.labels] == [hf.config.id2label[int(i)] for i in top.indices]
        assert [p for _, p in pred.labels] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_zero_shot_altclip_with_tokenizer_json(folder, altclip):
    good, _ = folder
    labels = ["a photo of a cat", "a photo of a dog", "a red car", "blue bird"]
    preds = fastvit.predict(altclip, good[:4], labels=labels, top_k=4, fused=False)
    tok = tokenizers.Tokenizer.from_file(str(altclip / "tokenizer.json"))
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    enc = tok.encode_batch(labels)
    ids = torch.tensor([e.ids for e in enc])
    assert ids[0, 0] == 0 and (ids == 2).any(dim=1).all()  # the post-processor's <s> ... </s>
    mask = torch.tensor([e.attention_mask for e in enc])
    hf = transformers.AltCLIPModel.from_pretrained(altclip).eval()
    pixels = transformers.AutoImageProcessor.from_pretrained(altclip)(
        [load_image(p) for p in good[:4]], return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        probs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image.softmax(-1)
    for pred, row in zip(preds, probs, strict=True):
        got = dict(pred.labels)
        assert sorted(got) == sorted(labels)
        assert [got[label] for label in labels] == pytest.approx(row.tolist(), abs=1e-5)
        assert pred.labels[0][0] == labels[int(row.argmax())]


def test_zero_shot_errors(folder, altclip, classifier, tmp_path):
    good, _ = folder
    model = fastvit.load(altclip, fused=False)
    with pytest.raises(ValueError, match="--labels"):
        fastvit.predict(model, good[:1])
    bare = tiny_model("altclip")  # no checkpoint, no tokenizer.json
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        fastvit.predict(bare, good[:1], labels=["a cat"])
    tok = tmp_path / "tok.json"
    write_tokenizer(tok)
    assert len(fastvit.predict(bare, good[:1], labels=["a cat", "a dog"], tokenizer=tok)[0].labels) == 2
    with pytest.raises(ValueError, match="CLIP zero-shot"):
        fastvit.predict(classifier, good[:1], labels=["a cat"], fused=False)
    with pytest.raises(ValueError, match="no classification head"):
        fastvit.predict(tiny_model("dinov2"), good[:1])


def test_cli_predict_json(folder, classifier, altclip, capsys):
    from fastvit.cli import main

    good, _ = folder
    assert main(["predict", str(classifier), good[0], "--top-k", "2", "--json", "--eager"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["path"] == good[0] and len(out[0]["labels"]) == 2
    assert out[0]["labels"][0]["label"] in LABELS.values()
    assert main(["predict", str(altclip), good[0], "--labels", "a cat,a dog", "--eager"]) == 0
    text = capsys.readouterr().out
    assert good[0] in text and "a cat" in text and "a dog" in text
    assert main(["predict", str(altclip), good[0], "--eager"]) == 2
    assert "--labels" in capsys.readouterr().err
