"""The compiled build is all or nothing, and CI's compiled run is compiled."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.compiled import compiled_modules, is_compiled


def test_every_module_of_the_core_comes_from_the_same_build() -> None:
    # A half-compiled core would mix builds no test run covers.
    built = {name: is_compiled(name) for name in compiled_modules()}
    assert len(set(built.values())) == 1, built
    expected = os.environ.get("SHOAL_EXPECT_COMPILED")
    if expected is not None:
        assert all(built.values()) == (expected == "1"), built


def _backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile_: bool) -> ModuleType:
    """The build backend, its hooks run in a copy of the source tree (setuptools
    writes egg-info where it runs: not in the checkout)."""
    root = Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        tree.mkdir(exist_ok=True)
        shutil.copy(root / name, tree / name)
    for name in ("buildtools", "src"):
        shutil.copytree(root / name, tree / name, ignore=skip)
    monkeypatch.chdir(tree)  # PEP 517 runs a backend's hooks in the source tree
    if compile_:
        monkeypatch.setenv("SHOAL_COMPILE", "1")
    else:
        monkeypatch.delenv("SHOAL_COMPILE", raising=False)
    spec = importlib.util.spec_from_file_location("shoal_build", tree / "buildtools/shoal_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_compiled_build_asks_for_mypy_and_the_types_it_compiles_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend(tmp_path, monkeypatch, compile_=True)
    needs = backend.get_requires_for_build_wheel()
    names = {re.split(r"[<>=\[ ;,]", spec)[0] for spec in needs}
    assert {"mypy", "numpy", "pydantic"} <= names
    assert backend._name("numpy<3,>=1.26; python_version >= '3.11'") == "numpy"


def test_a_plain_build_asks_for_no_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs = _backend(tmp_path, monkeypatch, compile_=False).get_requires_for_build_wheel()
    assert not any(spec.startswith("mypy") for spec in needs)


def test_a_compiled_editable_install_is_refused_with_the_way_to_do_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend(tmp_path, monkeypatch, compile_=True)
    for hook in (backend.get_requires_for_build_editable,
                 lambda: backend.prepare_metadata_for_build_editable("unused")):
        with pytest.raises(SystemExit, match=r"pip install \.`, not `pip install -e"):
            hook()


def test_a_source_distribution_is_never_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path, monkeypatch, compile_=True)
    # The sdist hooks run without the variable, and put it back after.
    seen = backend._plain(lambda: os.environ.get("SHOAL_COMPILE"))()
    assert seen is None and os.environ["SHOAL_COMPILE"] == "1"
    plain = (backend.get_requires_for_build_sdist, backend.build_sdist,
             backend.prepare_metadata_for_build_wheel)
    for hook in plain:
        assert hook.__qualname__ == "_plain.<locals>.run"
    needs = backend.get_requires_for_build_sdist()  # setup.py runs, and compiles nothing
    assert not any(spec.startswith("mypy") for spec in needs)
    assert os.environ["SHOAL_COMPILE"] == "1"


def test_a_mistyped_compile_switch_is_refused_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend(tmp_path, monkeypatch, compile_=False)
    monkeypatch.setenv("SHOAL_COMPILE", "yes")
    with pytest.raises(SystemExit, match=r"SHOAL_COMPILE must be 1 .* or 0, not 'yes'"):
        backend.get_requires_for_build_wheel()
