"""Which build of the scheduling core the tests run on: pure Python or compiled.

``SHOAL_COMPILE=1 pip install .`` compiles the modules that pyproject.toml
lists under ``[tool.shoal.compile]``.  Compiled code calls methods and reads
types directly, so a test that swaps a method or subclasses a dict to watch
what the cycle does watches nothing there: such tests run on the pure-Python
build only (``pure_python_only``), and CI runs them there.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def compiled_modules() -> list[str]:
    """The dotted names of the modules a compiled build compiles."""
    config = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))
    paths = config["tool"]["shoal"]["compile"]["modules"]
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


def is_compiled(name: str) -> bool:
    source = importlib.import_module(name).__file__ or ""
    return not source.endswith(".py")


pure_python_only = pytest.mark.skipif(
    is_compiled("shoal.policy.admission"),
    reason="watches the cycle by patching its methods or types, which compiled modules "
    "do not look up; runs on the pure-Python build (CI runs both)",
)
