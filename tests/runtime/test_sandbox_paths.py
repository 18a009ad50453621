"""What a sandboxed pod runs must be visible inside its sandbox, wherever it lives.

The sandbox hides ``/tmp`` and the jobs root behind empty tmpfs mounts, so a
program, a virtual environment or an interpreter under either must be bound
back read-only; what would expose something hidden (another job's folder, a
target picked by a link the tenant wrote) is refused with one clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.errors import InputError
from shoal.runtime.local.process import LocalProcesses, PodSpec, PodStatus
from shoal.runtime.local.sandbox import SandboxPathError, bwrap_path

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or os.geteuid() != 0,
    reason="sandbox tests need bubblewrap (apt-get install -y bubblewrap) and root",
)
Spec = Callable[..., PodSpec]
Finish = Callable[..., PodStatus]
SHOW_PREFIX = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"
PY_NAME = f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def under_tmp(tmp_path: Path) -> Iterator[Path]:
    """A folder under /tmp, which sandboxes hide: tmp_path, unless pytest put it elsewhere."""
    if tmp_path.resolve().is_relative_to("/tmp"):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        yield Path(folder)


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_virtual_environment_under_tmp(pods: LocalProcesses, sandboxed: Spec, finish: Finish,
                                         under_tmp: Path) -> None:
    # What CI does when the checkout lives under /tmp: bin/python links to the base interpreter.
    env = under_tmp / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env)
    assert (env / "bin" / "python").is_symlink()
    pod = sandboxed([str(env / "bin" / "python"), "-c", SHOW_PREFIX])
    status = finish(pods.start(pod))
    assert status == PodStatus("succeeded", 0, "exited with code 0"), pod.log_path.read_text()
    assert json.loads(pod.log_path.read_text()) == [str(env), sys.base_prefix]


@pytest.fixture
def layout(under_tmp: Path) -> Path:
    """Everything under /tmp: a base interpreter (a link to the real one), a venv on it,
    a script run by the venv's Python, and a copied binary."""
    base = under_tmp / "base"
    base.symlink_to(sys.base_prefix, target_is_directory=True)
    env = under_tmp / "env"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\ninclude-system-site-packages = false\n")
    (env / "bin" / "python").symlink_to(Path("..", "..", "base", "bin", PY_NAME))
    executable(under_tmp / "tools" / "show", f"#!{env / 'bin' / 'python'}\n{SHOW_PREFIX}\n")
    executable(under_tmp / "tools" / "show-env", f"#!/usr/bin/env python\n{SHOW_PREFIX}\n")
    shutil.copy2("/bin/echo", under_tmp / "tools" / "echo")
    return under_tmp


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["env/bin/python", "-c", SHOW_PREFIX], ["env", "base"]),
        (["tools/show"], ["env", "base"]),
        (["tools/show-env"], ["env", "base"]),  # env finds the venv's python on the pod's PATH
        (["tools/echo", "copied"], "copied"),
    ],
    ids=["venv-on-a-linked-base", "script", "env-script", "binary"],
)
def test_programs_and_interpreters_under_tmp(pods: LocalProcesses, sandboxed: Spec,
                                             finish: Finish, layout: Path, command: list[str],
                                             expected: object) -> None:
    path = f"{layout / 'env' / 'bin'}:{os.defpath}"
    pod = sandboxed([str(layout / command[0]), *command[1:]], env={"PATH": path})
    status = finish(pods.start(pod))
    assert status.state == "succeeded", pod.log_path.read_text()
    out = pod.log_path.read_text().strip()
    if isinstance(expected, list):
        assert json.loads(out) == [str(layout / expected[0]), str(layout / expected[1])]
    else:
        assert out == expected


def test_a_program_in_another_jobs_folder_is_refused(pods: LocalProcesses, sandboxed: Spec,
                                                     jobs_root: Path, under_tmp: Path) -> None:
    tool = executable(jobs_root / "team-b" / "other" / "0" / "tool", "#!/bin/sh\necho secret\n")
    (under_tmp / "shortcut").symlink_to(tool)
    for command in (tool, under_tmp / "shortcut"):
        with pytest.raises(SandboxPathError, match=f"inside {jobs_root}, which the sandbox hides") as info:
            pods.start(sandboxed([str(command)], job="curious"))
        assert isinstance(info.value, InputError) and info.value.code == "sandbox_path_hidden"
        assert str(info.value).startswith("pod team-a/curious-0: ")


def test_links_the_tenant_wrote_expose_nothing(pods: LocalProcesses, sandboxed: Spec,
                                               finish: Finish, under_tmp: Path) -> None:
    """The pod's folders are the tenant's: what they name is shown only if already visible."""
    private = executable(under_tmp / "private" / "bin" / "tool", "#!/bin/sh\necho private\n")
    planted = {
        "link": lambda w: (w / "link").symlink_to(private),
        "script": lambda w: executable(w / "script", f"#!{private}\n"),
        "venv": lambda w: (
            (w / "bin").mkdir(),
            (w / "pyvenv.cfg").write_text(f"home = {private.parent}\n"),
            (w / "bin" / "python").symlink_to(sys.executable),
        ),
    }
    for name, plant in planted.items():
        pod = sandboxed([f"./{'bin/python' if name == 'venv' else name}"], job=name)
        pod.workdir.mkdir(parents=True)
        plant(pod.workdir)
        with pytest.raises(SandboxPathError, match="written in the pod's own folders") as info:
            pods.start(pod)
        assert str(private.parent) in str(info.value)

    # A link to what the sandbox shows anyway is fine.
    pod = sandboxed(["./true"], job="fine")
    pod.workdir.mkdir(parents=True)
    (pod.workdir / "true").symlink_to(shutil.which("true") or "/bin/true")
    assert finish(pods.start(pod)).state == "succeeded"


def test_a_fifo_named_as_the_command_does_not_hang_the_start(
    pods: LocalProcesses, sandboxed: Spec, finish: Finish,
) -> None:
    pod = sandboxed(["./trap"])
    pod.workdir.mkdir(parents=True)
    os.mkfifo(pod.workdir / "trap", 0o755)  # nobody writes: opening it to read would block
    started: list[PodStatus] = []
    starter = threading.Thread(target=lambda: started.append(finish(pods.start(pod))), daemon=True)
    starter.start()
    starter.join(20)
    assert started and started[0].state == "failed", "the pod fails to exec it; start returns"
