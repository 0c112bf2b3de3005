"""Images/s of ``fastvit embed --ray`` with 1, 2, ... actors against single-process ``fastvit.embed`` (issue 19).

    python -m bench.ray_scaling                                    # CPU: 64 JPEGs, convnextv2-atto, 1 and 2 actors
    python -m bench.ray_scaling --images 20000 --models dinov2-base --num-gpus 1 --actors 1 2 4 8 --batch-size 256

A local Ray cluster (or ``--address auto``), a folder of generated JPEGs, random weights saved as a checkpoint
directory (speed does not depend on them). Every run is end to end: the driver's model load (for the output
metadata), actor start-up and model loads, decode + preprocess + model in the actors, Parquet parts written by the
driver. Each configuration runs on the first half of the images and on all of them: the difference gives the
marginal images/s (start-up excluded). Prints a Markdown table. Never run as a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["convnextv2-atto"])
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (0: CPU actors)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--address", default=None, help="Ray cluster address (default: a new local one)")
    args = p.parse_args()

    import ray

    import fastvit
    import fastvit.ray
    from bench.bench_embed import make_jpegs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpegs", args.images)
        t0 = time.perf_counter()
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - t0:.1f} s, cluster {ray.cluster_resources()}")
        half = paths[: len(paths) // 2]
        for name in args.models:
            ckpt = fastvit.load(name, pretrained=False, fused=False).save_pretrained(tmp / name)
            runs = {} if args.num_gpus else {"single process, 1 decode worker": None}
            runs.update({f"Ray, {n} actor(s)": n for n in args.actors})
            for run, actors in runs.items():
                seconds = []
                for i, todo in enumerate((half, paths)):
                    out = tmp / f"{name}-{actors}-{i}"
                    if actors is None:
                        res = fastvit.embed(ckpt, todo, out=out, batch_size=args.batch_size, num_workers=1)
                    else:
                        res = fastvit.ray.embed(
                            ckpt, todo, out, actors=actors, num_gpus=args.num_gpus, batch_size=args.batch_size
                        )
                    assert res.images == len(todo), res.summary()
                    seconds.append(res.seconds)
                marginal = (len(paths) - len(half)) / max(seconds[1] - seconds[0], 1e-9)
                rows.append((name, run, seconds[1], len(paths) / seconds[1], marginal))
        ray.shutdown()
    print(f"\n{args.images} JPEGs, batch {args.batch_size}; end to end, and marginal ({len(half)} more images)\n")
    print("| model | run | seconds | images/s end to end | images/s marginal |\n| --- | --- | ---: | ---: | ---: |")
    for name, run, seconds, ips, marginal in rows:
        print(f"| {name} | {run} | {seconds:.1f} | {ips:.1f} | {marginal:.1f} |")


if __name__ == "__main__":
    main()
