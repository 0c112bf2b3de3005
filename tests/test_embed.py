"""fastvit.embed / fastvit embed: inputs, HF parity, fixed-size batches, bad files, Parquet/.npy output, resume."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastvit
from fastvit.embedding import _NpyAppender, _ParquetParts, collect_inputs, read_embeddings
from fastvit.preprocess import ImageProcessor, load_image
from tests.image_utils import make_image_folder, tiny_model

transformers = pytest.importorskip("transformers")
pq = pytest.importorskip("pyarrow.parquet")

SMALL = {  # small preprocessing keeps the tests fast (the models interpolate position embeddings)
    "dinov2": ImageProcessor(kind="bit", size={"shortest_edge": 32}, crop_size=28),
    "convnext": ImageProcessor.from_dict({"image_processor_type": "ConvNextImageProcessor", "size": 64, "resample": 3}),
    "altclip": ImageProcessor(kind="clip", size={"shortest_edge": 28}, crop_size=28, resample=2),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a tiny HF-format checkpoint directory written by save_pretrained (with SMALL preprocessing)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for family, processor in SMALL.items():
        out[family] = tiny_model(family).save_pretrained(root / family, processor=processor)
    return out


def test_collect_inputs(folder, tmp_path):
    good, bad = folder
    root = good[0].rsplit("/", 1)[0]
    assert collect_inputs([root]) == sorted(good + bad)  # recursive, sorted, image extensions only
    (tmp_path / "notes.md").write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good[1]}\n\n# a comment\n{good[0]}\n{good[1]}\n")
    assert collect_inputs([listing]) == [good[1], good[0]]  # order kept, duplicates dropped
    assert collect_inputs([f"{root}/**/*.gif"]) == [p for p in good if p.endswith(".gif")]
    assert collect_inputs([good[0], root])[0] == good[0]
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_inputs([str(tmp_path / "nope.jpg")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        collect_inputs([f"{tmp_path}/*.jpeg"])
    listing.write_text("missing/file.jpg\n")
    with pytest.raises(FileNotFoundError, match="missing/file.jpg"):
        collect_inputs([listing])


def _hf_features(directory, paths, pool):
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    images = [load_image(p) for p in paths]  # decoded to RGB once, the same images for both sides
    pixels = processor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        if config["model_type"] == "altclip":
            return transformers.AltCLIPModel.from_pretrained(directory).eval().get_image_features(pixel_values=pixels)
        model = transformers.AutoModel.from_pretrained(directory).eval()
        out = model(pixel_values=pixels)
    if pool == "pooler":
        return out.pooler_output
    h = out.last_hidden_state
    cls, mean = h[:, 0], h[:, 1:].mean(1)
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], -1)}[pool]


@pytest.mark.parametrize(
    "family, pool",
    [("dinov2", None), ("dinov2", "mean"), ("dinov2", "cls+mean"), ("convnext", None), ("altclip", None)],
)
def test_embed_matches_hf_processor_and_model(family, pool, folder, checkpoints):
    good, bad = folder
    directory = checkpoints[family]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fastvit.embed(directory, [good[0].rsplit("/", 1)[0]], pool=pool, batch_size=4, num_workers=0,
                               fused=False)  # fmt: skip
    assert result.paths == good
    assert sorted(p for p, _ in result.skipped) == bad
    skip_warnings = [str(w.message) for w in caught if str(w.message).startswith("skipped")]
    assert sorted(skip_warnings) == sorted(f"skipped {p}: {r}" for p, r in result.skipped)  # one warning each
    default = {"dinov2": "cls", "convnext": "pooler", "altclip": "image_embeds"}[family]
    expected = _hf_features(directory, good, pool or default)
    err = np.abs(result.embeddings - expected.numpy()).max()
    assert err <= 1e-4, f"{family} {pool}: max |fastvit - HF| = {err:.3g}"
    for path in good:  # our decode = PIL's convert("RGB") except for 16-bit (scaled, where PIL clips)
        if "16bit" not in path:
            with Image.open(path) as im:
                assert np.array_equal(np.asarray(load_image(path)), np.asarray(im.convert("RGB"))), path


def test_fixed_batch_shape_normalize_and_fused(folder, checkpoints):
    good, _ = folder
    model = fastvit.load(checkpoints["dinov2"])  # fused (Triton interpreter on CPU)
    shapes = []
    model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["pixel_values"].shape)), with_kwargs=True)
    result = fastvit.embed(model, good[:7], batch_size=3, num_workers=0, normalize=True)
    assert shapes == [(3, 3, 28, 28)] * 3  # 7 images: the last batch is padded to 3 and trimmed
    assert result.embeddings.shape == (7, 32)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    eager = fastvit.embed(checkpoints["dinov2"], good[:7], fused=False, batch_size=3, num_workers=0, normalize=True)
    assert np.abs(result.embeddings - eager.embeddings).max() <= 1e-4


def test_worker_processes_give_the_same_rows(folder, checkpoints):
    good, bad = folder
    inputs = good[:4] + bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = fastvit.embed(checkpoints["dinov2"], inputs, fused=False, batch_size=2, num_workers=0)
        b = fastvit.embed(checkpoints["dinov2"], inputs, fused=False, batch_size=2, num_workers=2)
    assert a.paths == b.paths == good[:4] and len(b.skipped) == 3
    assert np.array_equal(a.embeddings, b.embeddings)


def _crash_after(monkeypatch, cls, n: int):
    original, calls = cls.write, [0]

    def write(self, paths, rows):
        if calls[0] >= n:
            raise RuntimeError("simulated crash while writing a chunk")
        calls[0] += 1
        original(self, paths, rows)

    monkeypatch.setattr(cls, "write", write)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_resume_after_crash_equals_one_run(suffix, folder, checkpoints, tmp_path, monkeypatch):
    good, bad = folder
    root = good[0].rsplit("/", 1)[0]
    kwargs = dict(fused=False, batch_size=2, num_workers=0, chunk_size=4)
    warnings.simplefilter("ignore")
    whole = tmp_path / f"whole{suffix}"
    fastvit.embed(checkpoints["dinov2"], [root], out=whole, **kwargs)

    out = tmp_path / f"resumed{suffix}"
    _crash_after(monkeypatch, _NpyAppender if suffix == ".npy" else _ParquetParts, 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fastvit.embed(checkpoints["dinov2"], [root], out=out, **kwargs)
    monkeypatch.undo()
    assert len(read_embeddings(out)[0]) == 4  # one chunk made it; the crashed one is lost, nothing else
    if suffix == ".npy":  # a kill in the middle of a chunk: rows past the committed count, a torn paths line
        with open(out, "ab") as f:
            f.write(b"\x00" * 100)
        with open(out.with_suffix(".paths.txt"), "a") as f:
            f.write("/torn/pa")
    else:  # a part being written when the process was killed
        (out / "part-00001.parquet.tmp").write_bytes(b"PAR1 torn")
    result = fastvit.embed(checkpoints["dinov2"], [root], out=out, **kwargs)
    assert result.resumed == 4 and len(result.paths) == len(good) - 4
    assert read_embeddings(out)[0] == read_embeddings(whole)[0] == good
    assert np.array_equal(read_embeddings(out)[1], read_embeddings(whole)[1])
    if suffix == ".npy":
        assert out.read_bytes() == whole.read_bytes()
        assert np.load(out).shape == (len(good), 32)
    else:
        assert not list(out.glob("*.tmp"))
        meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
        assert meta[b"model"] == str(checkpoints["dinov2"]).encode() and meta[b"pooling"] == b"cls"
        assert meta[b"dtype"] == b"float32" and meta[b"dim"] == b"32" and meta[b"fastvit_version"]
        table = pq.read_table(out)
        assert table.schema.field("embedding").type.list_size == 32
        assert str(table.schema.field("embedding").type.value_type) == "float"
    again = fastvit.embed(checkpoints["dinov2"], [root], out=out, **kwargs)  # all done: nothing recomputed
    assert again.paths == [] and again.resumed == len(good)
    with pytest.raises(ValueError, match="pooling"):
        fastvit.embed(checkpoints["dinov2"], [root], out=out, pool="mean", **kwargs)


def test_cli_embed(folder, checkpoints, tmp_path, capsys):
    from fastvit.cli import main

    good, bad = folder
    out = tmp_path / "cli.parquet"
    code = main(["embed", str(checkpoints["convnext"]), *good[:3], bad[0], "--out", str(out), "--quiet",
                 "--num-workers", "0", "--batch-size", "2", "--eager"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 images" in captured.out and "1 skipped" in captured.out
    assert f"skipped {bad[0]}" in captured.err
    paths, rows = read_embeddings(out)
    assert paths == good[:3] and rows.shape == (3, 32)
    assert main(["embed", str(checkpoints["convnext"]), good[0], "--out", str(tmp_path / "x"), "--pool", "cls",
                 "--quiet", "--num-workers", "0", "--eager"]) == 2  # fmt: skip
    assert "no CLS token" in capsys.readouterr().err


def test_missing_pyarrow_names_the_extra(folder, checkpoints, tmp_path, monkeypatch):
    good, _ = folder
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"fastvit\[pipeline\]"):
        fastvit.embed(checkpoints["dinov2"], good[:1], out=tmp_path / "o.parquet", fused=False, num_workers=0)
    result = fastvit.embed(checkpoints["dinov2"], good[:1], out=tmp_path / "o.npy", fused=False, num_workers=0)
    assert result.paths == good[:1]  # .npy needs no extra


def test_gpu_jpeg_decode_path_with_a_stand_in_decoder(folder, monkeypatch):
    """The nvJPEG path's bookkeeping (bytes from the workers, batch decode, per-file fallback to PIL, errors), run on
    CPU with a PIL-backed stand-in for ``torchvision.io.decode_jpeg`` (no GPU / torchvision here)."""
    import types

    from fastvit.embedding import _Collate, _decode_jpegs_on_gpu, _Images
    from fastvit.preprocess import TENSOR_PATH_MAX_LEVELS

    def decode_jpeg(data, mode, device):
        def one(d):
            try:
                return torch.from_numpy(np.asarray(load_image(d.numpy().tobytes())).copy()).permute(2, 0, 1)
            except ValueError as e:
                raise RuntimeError(str(e)) from e

        return [one(d) for d in data] if isinstance(data, list) else one(data)

    fake = types.ModuleType("torchvision.io")
    fake.ImageReadMode, fake.decode_jpeg = types.SimpleNamespace(RGB="RGB"), decode_jpeg
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", fake)
    good, bad = folder
    paths = good + bad
    processor = SMALL["dinov2"]
    dataset = _Images(paths, processor, raw_jpeg=True)
    batch = _Collate(len(paths) + 2, processor.output_size)([dataset[i] for i in range(len(paths))])
    jpegs = {paths[i] for _, i, _ in batch.jpegs}
    assert jpegs == {p for p in paths if p.endswith(".jpg") and "empty" not in p and "text" not in p}
    _decode_jpegs_on_gpu(batch, processor, torch.device("cpu"), paths)
    assert sorted(paths[i] for i, _ in batch.errors) == bad and not batch.jpegs
    assert [paths[i] for i in batch.indices] == good
    bound = TENSOR_PATH_MAX_LEVELS / 255 / min(processor.image_std) + 1e-6
    for slot, i in zip(batch.slots, batch.indices, strict=True):
        expected = processor.preprocess_one(load_image(paths[i]))
        err = (batch.pixels[slot] - expected).abs().max().item()
        assert err <= (bound if paths[i] in jpegs else 0.0), paths[i]
    assert batch.pixels[len(paths) :].abs().max() == 0  # padding slots stay zero


KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import fastvit
calls = []
real_replace = os.replace

def replace(src, dst):  # SIGKILL between writing the second part and renaming it into place
    calls.append(src)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace
fastvit.embed({ckpt!r}, [{root!r}], out={out!r}, fused=False, batch_size=2, num_workers=0, chunk_size=4)
"""


def test_sigkill_mid_chunk_loses_only_that_chunk(folder, checkpoints, tmp_path):
    import os
    import signal
    import subprocess

    good, _ = folder
    root = good[0].rsplit("/", 1)[0]
    out = tmp_path / "killed.parquet"
    ckpt = str(checkpoints["dinov2"])
    code = KILLED_CHILD.format(tests=os.path.dirname(__file__), ckpt=ckpt, root=root, out=str(out))
    # the child computes with this process's thread count, so that its rows are bit-identical to ours
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.glob("*.tmp"))) == 1 and len(read_embeddings(out)[0]) == 4  # part 0 intact, part 1 torn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastvit.embed(checkpoints["dinov2"], [root], out=out, fused=False, batch_size=2, num_workers=0, chunk_size=4)
        whole = fastvit.embed(checkpoints["dinov2"], [root], fused=False, batch_size=2, num_workers=0)
    paths, rows = read_embeddings(out)
    assert paths == whole.paths == good and np.array_equal(rows, whole.embeddings)
