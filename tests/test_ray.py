"""Scale out (issue 19): fastvit.ray.Embedder on Ray Data, ``fastvit embed --ray``, torchrun ranks.

One local Ray cluster (2 CPUs) for the module; tiny DINOv2 checkpoint, eager fp32 (the Ray and torchrun outputs must
equal single-process ``fastvit embed`` on the same files: same rows in the same order, same embeddings).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_utils import make_image_folder, tiny_model

import fastvit.ray  # importable without ray: ray is imported where it is used
from fastvit.cli import main
from fastvit.distributed import share
from fastvit.embedding import read_embeddings
from fastvit.preprocess import ImageProcessor, load_image

pq = pytest.importorskip("pyarrow.parquet")
try:
    import ray
    import ray.data
except ImportError:  # the torchrun and batch-format tests still run
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="needs Ray Data: pip install -e '.[ray]'")

# fp32 eager on CPU, one thread everywhere: the same batch gives the same bits; 1e-5 leaves room for another
# blocking of the matmuls (batch composition) at |embedding| ~ 1
ATOL = 1e-5
FAST = ["--eager", "--quiet", "--batch-size", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    processor = ImageProcessor(kind="bit", size={"shortest_edge": 32}, crop_size=28)
    return tiny_model("dinov2").save_pretrained(tmp_path_factory.mktemp("ckpt") / "dinov2", processor=processor)


@pytest.fixture(scope="module")
def single(folder, checkpoint, tmp_path_factory):
    """Single-process ``fastvit embed`` of the whole folder: (out directory, paths, rows)."""
    out = tmp_path_factory.mktemp("single") / "single.parquet"
    root = Path(folder[0][0]).parent
    assert main(["embed", str(checkpoint), str(root), "--out", str(out), "--num-workers", "0", *FAST]) == 0
    return (out, *read_embeddings(out))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _metadata(out: Path) -> dict:
    return {k: v for k, v in pq.read_schema(next(out.glob("part-*.parquet"))).metadata.items()}


def _assert_same_rows(paths, rows, ref_paths, ref_rows):
    assert paths == ref_paths
    err = np.abs(rows - ref_rows).max()
    assert err <= ATOL, f"max |distributed - single process| = {err:.3g}"


@needs_ray
def test_submodule_does_not_shadow_ray():
    assert fastvit.ray._require_ray() is ray and ray.__file__ != fastvit.ray.__file__  # `import ray` is absolute
    assert sys.modules["fastvit.ray"] is fastvit.ray and hasattr(ray.data, "read_binary_files")


def test_share_is_a_partition():
    items = [f"f{i}" for i in range(11)]
    for world in (1, 2, 3, 4, 12):
        shares = [share(items, r, world) for r in range(world)]
        assert [p for s in shares for p in s] == items  # no duplicates, no gaps, in order
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_embedder_batch_formats(folder, checkpoint, single):
    """The actor's __call__ without a cluster: bytes (read_binary_files), arrays (read_images), paths, pandas."""
    good, bad = folder
    _, ref_paths, ref_rows = single
    ref = dict(zip(ref_paths, ref_rows, strict=True))
    embedder = fastvit.ray.Embedder(checkpoint, fused=False, batch_size=4)
    files = good[:5] + bad
    batch = {"bytes": np.array([Path(p).read_bytes() for p in files], dtype=object), "path": np.array(files)}
    out = embedder(batch)
    assert sorted(out) == ["embedding", "path"] and list(out["path"]) == good[:5]  # bad rows dropped
    np.testing.assert_allclose(out["embedding"], [ref[p] for p in good[:5]], atol=ATOL)

    arrays = np.empty(3, dtype=object)  # read_images(mode="RGB") of mixed sizes: an object array of HWC uint8
    arrays[:] = [np.asarray(load_image(p)) for p in good[:3]]
    out = embedder({"image": arrays, "label": np.array([7, 8, 9])})
    assert list(out["label"]) == [7, 8, 9] and out["embedding"].shape == (3, 32)  # other columns pass through
    np.testing.assert_allclose(out["embedding"], [ref[p] for p in good[:3]], atol=ATOL)

    column = fastvit.ray.Embedder(checkpoint, fused=False, errors="column")
    out = column({"path": np.array([good[0], bad[1]])})
    assert out["error"][0] == "" and "empty" in out["error"][1]
    assert np.isnan(out["embedding"][1]).all() and np.allclose(out["embedding"][0], ref[good[0]], atol=ATOL)
    frame = column(pytest.importorskip("pandas").DataFrame({"path": [good[1]]}))
    np.testing.assert_allclose(frame["embedding"][0], ref[good[1]], atol=ATOL)
    with pytest.raises(KeyError, match="image columns"):
        column({"text": np.array(["x"])})


@needs_ray
def test_ray_cli_equals_single_process_and_resumes(cluster, folder, checkpoint, single, tmp_path, capsys):
    good, bad = folder
    ref_out, ref_paths, ref_rows = single
    root = str(Path(good[0]).parent)
    out = tmp_path / "ray.parquet"
    # a previous (single-process) run wrote the first 3 rows: the Ray run resumes after them
    assert main(["embed", str(checkpoint), *good[:3], "--out", str(out), "--num-workers", "0", *FAST]) == 0
    capsys.readouterr()
    code = main(["embed", str(checkpoint), root, "--out", str(out), "--ray", "--actors", "2", "--chunk-size", "3",
                 *FAST])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{len(good) - 3} images" in captured.out and f"{len(bad)} skipped" in captured.out
    assert "3 already in" in captured.out
    assert sorted(line.split(":")[0].removeprefix("skipped ") for line in captured.err.splitlines()
                  if line.startswith("skipped ")) == bad  # fmt: skip
    _assert_same_rows(*read_embeddings(out), ref_paths, ref_rows)
    assert _metadata(out) == _metadata(ref_out)  # model, pooling, dtype, normalize, dim, fastvit_version
    assert pq.read_table(out).schema == pq.read_table(ref_out).schema


@needs_ray
def test_killed_actor_every_row_exactly_once(cluster, folder, checkpoint, single, tmp_path):
    """The README's recipe (read_binary_files -> map_batches -> rows), with one actor killed in the middle of a batch:
    Ray restarts it and retries the batch."""
    good, _ = folder
    _, ref_paths, ref_rows = single
    marker = tmp_path / "killed"

    class DiesOnce(fastvit.ray.Embedder):  # local class: Ray pickles it by value
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # only the first actor to get here dies
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    ds = ray.data.read_binary_files(str(Path(good[0]).parent), include_paths=True)
    ds = ds.map_batches(
        DiesOnce,
        fn_constructor_kwargs=dict(model=checkpoint, fused=False, batch_size=2),
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.5,  # leaves a CPU for the read tasks
        batch_size=2,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["path"])
    assert marker.exists()  # an actor did die mid-run
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths))  # exactly once
    _assert_same_rows(paths, np.stack([r["embedding"] for r in rows]), ref_paths, ref_rows)


def test_torchrun_two_ranks_equal_single_process(folder, checkpoint, single, tmp_path):
    good, _ = folder
    ref_out, ref_paths, ref_rows = single
    out = tmp_path / "torchrun.parquet"
    # a previous run wrote the first 4 rows, and a killed torchrun run left rank 1's first part and a torn one: the
    # ranks split the whole list, skip those 6 rows and merge the leftover part too
    assert main(["embed", str(checkpoint), *good[:4], "--out", str(out), "--num-workers", "0", *FAST]) == 0
    left = out / "_ranks" / "rank-00001"
    assert main(["embed", str(checkpoint), *good[8:], "--out", str(left), "--num-workers", "0", *FAST]) == 0
    (left / "part-00001.parquet.tmp").write_bytes(b"PAR1 torn")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*torchrun, "-m", "fastvit", "embed", str(checkpoint), str(Path(good[0]).parent), "--out", str(out),
           "--num-workers", "0", *FAST]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(good) - 6} images" in proc.stdout and "3 skipped" in proc.stdout and "6 already in" in proc.stdout
    assert proc.stdout.count("images in") == 1  # rank 0 prints the summary
    assert not (out / "_ranks").exists()
    paths, rows = read_embeddings(out)
    order = np.argsort(paths)  # resumed: the leftover part of rank 1 comes before its new rows
    _assert_same_rows([paths[i] for i in order], rows[order], ref_paths, ref_rows)
    assert _metadata(out) == _metadata(ref_out)
