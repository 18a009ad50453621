"""User policies from the ``shoal.policies`` entry point group, through a real install.

A tiny distribution is laid out in a folder (package + ``*.dist-info`` with
METADATA and entry_points.txt) and put on PYTHONPATH of a real ``shoal``
process, exactly as ``pip install`` would leave it.  Its policy module is the
example of docs/policies.md, so the documented example is known to work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "two-teams-replay.yaml"


def _example_module() -> str:
    text = (ROOT / "docs" / "policies.md").read_text()
    section = text.split("## A complete example: `my_policies.py`", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/policies.md lost its example module"
    return match.group(1)


def _distribution(site: Path, name: str, version: str, entry_points: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "my_policies.py").write_text(_example_module())
    (site / "broken_policies.py").write_text("NOT_A_FACTORY = 42\n")
    _distribution(
        site, "my-policies", "0.1.0",
        "[shoal.policies]\nmy-policy = my_policies:TightestGpuFit\n",
    )
    _distribution(
        site, "broken-policies", "0.2.0",
        "[shoal.policies]\n"
        "missing-module = no_such_module_xyz:Scorer\n"
        "not-callable = broken_policies:NOT_A_FACTORY\n"
        "fgd = my_policies:TightestGpuFit\n",
    )
    return site


def shoal(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_the_example_scenario_exists() -> None:
    assert SCENARIO.is_file()


def test_sim_runs_a_plugin_policy(site: Path) -> None:
    result = shoal(site, "sim", str(SCENARIO), "--policy", "my-policy,best-fit", "-o", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["policy"] for r in report["results"]] == ["my-policy", "best-fit"]
    mine, builtin = (r["metrics"] for r in report["results"])
    assert mine["jobs_completed"] > 0
    assert mine != builtin  # a different policy, really run
    # the broken plugins that were not asked for are warnings, one line each
    assert "'missing-module'" in result.stderr and "broken-policies 0.2.0" in result.stderr
    assert "'not-callable'" in result.stderr


def test_policies_lists_plugins_with_their_distribution(site: Path) -> None:
    result = shoal(site, "policies")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "my-policy  (plugin: my-policies)" in lines
    assert {"fgd", "best-fit", "random"} <= set(lines)
    assert "missing-module" not in result.stdout
    assert "no_such_module_xyz" in result.stderr


def test_without_plugins_policies_is_unchanged(tmp_path: Path) -> None:
    result = shoal(tmp_path, "policies")
    assert result.returncode == 0, result.stderr
    assert "my-policy" not in result.stdout and result.stderr == ""


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("missing-module", "cannot be loaded: ModuleNotFoundError"),
        ("not-callable", "expected a scorer factory"),
    ],
)
def test_asking_for_a_broken_plugin_is_exit_2_naming_it(site: Path, policy: str, says: str) -> None:
    result = shoal(site, "sim", str(SCENARIO), "--policy", policy, "-o", "json")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert f"policy plugin {policy!r}" in error[0]
    assert "distribution broken-policies 0.2.0" in error[0] and says in error[0]


def test_a_plugin_cannot_replace_a_builtin(site: Path) -> None:
    result = shoal(site, "sim", str(SCENARIO), "--policy", "fgd", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert "'fgd'" in result.stderr and "name is taken" in result.stderr
    assert json.loads(result.stdout)["results"][0]["policy"] == "fgd"


def test_the_refused_plugin_leaves_the_builtin_untouched(site: Path, tmp_path: Path) -> None:
    args = ("sim", str(SCENARIO), "--policy", "fgd", "-o", "json")
    with_plugins, without = shoal(site, *args), shoal(tmp_path, *args)
    assert with_plugins.returncode == without.returncode == 0
    metrics = [json.loads(r.stdout)["results"][0]["metrics"] for r in (with_plugins, without)]
    for m in metrics:
        m.pop("timeline", None)
    assert metrics[0] == metrics[1]


def test_a_factory_that_fails_or_returns_no_scorer_is_one_clear_error() -> None:
    from shoal.errors import InputError
    from shoal.plugins import _checked
    from shoal.policy.placement import ScorerContext

    def boom(context: ScorerContext) -> object:
        raise RuntimeError("bad weights file")

    with pytest.raises(InputError, match="origin: the factory failed: RuntimeError: bad weights"):
        _checked(boom, "origin")(ScorerContext())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="returned a object without score and pick_gpus"):
        _checked(lambda context: object(), "origin")(ScorerContext())  # type: ignore[arg-type,return-value]
