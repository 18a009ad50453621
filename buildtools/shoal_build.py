"""Shoal's build backend: setuptools, plus what ``SHOAL_COMPILE=1`` needs.

``SHOAL_COMPILE=1 pip install .`` compiles the scheduling hot path with mypyc
(pyproject.toml lists the modules under ``[tool.shoal.compile]``, setup.py
compiles them; docs/benchmarks.md, "Compiled scheduling core").  Compiling type-checks those modules, so the build environment then
needs mypy and the runtime dependencies whose types they use; without the
variable the build is plain setuptools and pulls nothing more.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from setuptools import build_meta as _setuptools
from setuptools.build_meta import build_wheel  # noqa: F401  (a re-exported hook)

_TYPED_DEPENDENCIES = ("numpy", "pydantic")
"""Runtime dependencies the compiled modules take types from (and mypy's pydantic plugin)."""


def compiling() -> bool:
    value = os.environ.get("SHOAL_COMPILE", "")
    if value not in ("", "0", "1"):
        # A typo must not quietly give the build the user did not ask for.
        raise SystemExit(
            f"SHOAL_COMPILE must be 1 (compile the scheduling core) or 0, not {value!r}"
        )
    return value == "1"


def _compile_requires() -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
    dev = project["project"]["optional-dependencies"]["dev"]
    mypy = [spec for spec in dev if _name(spec) == "mypy"]
    typed = [
        spec for spec in project["project"]["dependencies"]
        if _name(spec) in _TYPED_DEPENDENCIES
    ]
    return mypy + typed


def _name(spec: str) -> str:
    """A requirement's project name (what comes before any version, extra or marker)."""
    found = re.match(r"[A-Za-z0-9._-]+", spec.strip())
    return found.group(0).lower() if found else ""


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    if compiling():
        # Not setuptools' own hook: it runs setup.py, which then needs mypyc
        # before this answer could have installed it.
        return ["wheel", *_compile_requires()]
    return list(_setuptools.get_requires_for_build_wheel(config_settings))


def _no_compiled_editable() -> None:
    if compiling():
        # An editable install would put the compiled modules beside their
        # sources, where they shadow every later edit of the .py files.
        raise SystemExit(
            "SHOAL_COMPILE=1 builds a compiled wheel: install it with `pip install .`, "
            "not `pip install -e .` (compiled modules in the source tree would hide "
            "edits to the .py files)"
        )


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    _no_compiled_editable()
    return list(_setuptools.get_requires_for_build_editable(config_settings))


def build_editable(wheel_directory: str, config_settings: Any = None,
                   metadata_directory: str | None = None) -> str:
    _no_compiled_editable()
    return str(_setuptools.build_editable(wheel_directory, config_settings, metadata_directory))


_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def _plain(hook: _Hook) -> _Hook:
    """The hook with SHOAL_COMPILE unset: a source distribution carries sources
    only, whatever the variable says (and needs no compiler to be made)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        saved = os.environ.pop("SHOAL_COMPILE", None)
        try:
            return hook(*args, **kwargs)
        finally:
            if saved is not None:
                os.environ["SHOAL_COMPILE"] = saved

    return run  # type: ignore[return-value]


get_requires_for_build_sdist = _plain(_setuptools.get_requires_for_build_sdist)
build_sdist = _plain(_setuptools.build_sdist)
# Metadata does not depend on what is compiled: without the variable, setup.py
# does not compile once for the metadata and again for the wheel.
prepare_metadata_for_build_wheel = _plain(_setuptools.prepare_metadata_for_build_wheel)


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: Any = None) -> str:
    _no_compiled_editable()
    return str(_setuptools.prepare_metadata_for_build_editable(metadata_directory,
                                                               config_settings))
