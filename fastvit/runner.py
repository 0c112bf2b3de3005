"""Run an unchanged Python script with transformers patched: ``python -m fastvit run script.py [args]``."""

from __future__ import annotations

import os
import runpy
import sys
import traceback


def run_script(path: str, argv: list[str], **flags: bool) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *argv]`` after :func:`fastvit.patch_transformers`.

    HF models of the five families that the script creates come out fused. The script's directory is put first
    on ``sys.path`` as when it runs directly; ``sys.argv``/``sys.path`` and transformers are restored afterwards.

    Args:
        path: the script file. argv: its arguments. flags: kernel flags for :func:`fastvit.patch`.
    Returns:
        The exit code the script would have had: 0, its ``sys.exit`` code (1 for a message, printed to stderr), or
        1 after printing the traceback of an uncaught exception.
    """
    from .patching import patch_transformers, unpatch_transformers

    if not os.path.isfile(path):
        print(f"fastvit run: no such file: {path}", file=sys.stderr)
        return 2
    patch_transformers(**flags)  # first: if it raises (no transformers, bad flag), sys.argv/sys.path are untouched
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        runpy.run_path(path, run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - report like the interpreter does, as an exit code
        traceback.print_exc()
        return 1
    finally:
        unpatch_transformers()
        sys.argv = old_argv
        sys.path[:] = old_path
