"""The compiled build is all or nothing, and CI's compiled run is compiled."""

from __future__ import annotations

import importlib.util
import os
import re
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


def _backend(monkeypatch: pytest.MonkeyPatch, compile_: bool) -> ModuleType:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # PEP 517 runs a backend's hooks in the source tree
    if compile_:
        monkeypatch.setenv("SHOAL_COMPILE", "1")
    else:
        monkeypatch.delenv("SHOAL_COMPILE", raising=False)
    spec = importlib.util.spec_from_file_location("shoal_build", root / "buildtools/shoal_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_compiled_build_asks_for_mypy_and_the_types_it_compiles_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs = _backend(monkeypatch, compile_=True).get_requires_for_build_wheel()
    names = {re.split(r"[<>=\[ ]", spec)[0] for spec in needs}
    assert {"mypy", "numpy", "pydantic"} <= names


def test_a_plain_build_asks_for_no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    needs = _backend(monkeypatch, compile_=False).get_requires_for_build_wheel()
    assert not any(spec.startswith("mypy") for spec in needs)


def test_a_compiled_editable_install_is_refused_with_the_way_to_do_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend(monkeypatch, compile_=True)
    with pytest.raises(SystemExit, match=r"pip install \.`, not `pip install -e"):
        backend.get_requires_for_build_editable()


def test_a_source_distribution_is_never_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(monkeypatch, compile_=True)
    # The sdist hooks run without the variable, and put it back after.
    seen = backend._plain(lambda: os.environ.get("SHOAL_COMPILE"))()
    assert seen is None and os.environ["SHOAL_COMPILE"] == "1"
    for hook in (backend.get_requires_for_build_sdist, backend.build_sdist):
        assert hook.__qualname__ == "_plain.<locals>.run"
    needs = backend.get_requires_for_build_sdist()  # setup.py runs, and compiles nothing
    assert not any(spec.startswith("mypy") for spec in needs)
    assert os.environ["SHOAL_COMPILE"] == "1"
