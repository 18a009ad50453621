"""Build hook: ``SHOAL_COMPILE=1`` compiles the scheduling hot path with mypyc.

Everything else about the package is in pyproject.toml, the list of compiled
modules too (``[tool.shoal.compile]``).  The compiled build takes the same
decisions as the pure-Python one (CI runs the policy and simulation tests
against it and compares the contended replay's digests); docs/benchmarks.md,
"Compiled scheduling core", says what it is for.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup


def ext_modules() -> list[Any]:
    if os.environ.get("SHOAL_COMPILE", "") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(
            "SHOAL_COMPILE=1 needs mypy in the build environment (pip's default "
            "isolated build installs it; with --no-build-isolation: pip install mypy)"
        ) from None

    config = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
    modules = config["tool"]["shoal"]["compile"]["modules"]
    # A compiled build copies whatever an earlier one left in build/ into the
    # wheel: a module taken off the list would ship compiled all the same.
    for stale in (*Path("build").glob("lib.*"), *Path("build").glob("temp.*")):
        shutil.rmtree(stale)
    return list(mypycify([f"src/{path}" for path in modules], opt_level="3"))


setup(ext_modules=ext_modules())
