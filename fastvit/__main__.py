"""``python -m fastvit`` and the ``fastvit`` console script: see :mod:`fastvit.cli`."""

from __future__ import annotations

from fastvit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
