"""pytest-benchmark collection for ``pytest bench/ --benchmark-only``.

The benchmark files are named ``bench_*.py`` (so the main ``pytest`` run over ``tests/`` never sees them); this
conftest collects them and parametrizes their ``test_*(benchmark, bench_item)`` functions over every
(shape, provider) of the module's ``SPECS`` for the current device: small shapes on CPU, real ones on CUDA.
``torch.compile`` providers run on CUDA, and on CPU only with ``FASTVIT_BENCH_COMPILE=1`` (compilation takes
minutes on a small CPU machine). The Triton interpreter is not turned on here: on CPU the fastvit provider is
the torch fallback, timed as such.
"""

from __future__ import annotations

import pytest

from bench.common import bench_items, default_device


def pytest_collect_file(file_path, parent):
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's own collector takes it
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc):
    if "bench_item" in metafunc.fixturenames:
        items = bench_items(metafunc.module, default_device())
        metafunc.parametrize("bench_item", items, ids=[item.id for item in items])
