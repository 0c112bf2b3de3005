"""The results file: one JSON line per measurement, appended (``bench/out/results.jsonl`` by default).

Shared by the harness (``bench/common.py``, which writes rows) and the report (``bench/report.py``, which reads
them), so that neither imports the other's internals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "out"
RESULTS_NAME = "results.jsonl"
OURS_PREFIX = "fastvit"  # providers whose name starts with this are ours; the rest are baselines
METRICS = {"GB/s": True, "TFLOP/s": True, "images/s": True, "ms": False, "s": False}  # metric -> higher is better


def append_results(rows: Sequence[dict], out_dir: str | Path = DEFAULT_OUT) -> Path:
    """Append ``rows`` as JSON lines to ``out_dir/results.jsonl``; returns the file."""
    path = Path(out_dir) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    return path


def load_results(path: str | Path) -> list[dict]:
    """The rows of a results file (or of ``results.jsonl`` in a directory); [] when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
