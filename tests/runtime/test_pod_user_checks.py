"""The start-time check: a pod whose program its user cannot reach fails with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.runtime.local.podspec import PodSpec
from shoal.runtime.local.process import LocalProcesses, WorkdirError
from shoal.runtime.local.users import PodUser, unreachable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_unreachable_names_the_closed_folder(tmp_path: Path) -> None:
    user = PodUser(2_000_000_123, 2_000_000_123)
    closed = tmp_path / "closed"
    (closed / "bin").mkdir(parents=True)
    program = closed / "bin" / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    closed.chmod(0o700)
    assert unreachable(program, user) == f"{closed} is mode 0700, owned by uid 0"
    assert unreachable(program, user, sandboxed=True) is None, "a sandbox recreates the way"
    program.chmod(0o700)
    assert unreachable(program, user, sandboxed=True) == f"{program} is mode 0700, owned by uid 0"
    assert unreachable(Path("/bin/sh"), user) is None


def test_a_pod_that_cannot_reach_its_program_fails_to_start_with_why(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    program = closed / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    closed.chmod(0o700)
    spec = PodSpec(job="j", tenant="t", index=0, command=[str(program)], workdir=tmp_path / "w",
                   log_path=tmp_path / "logs" / "pod-0.log", env={},
                   user=PodUser(2_000_000_123, 2_000_000_123), own=(tmp_path / "w",))
    with pytest.raises(WorkdirError, match=f"cannot reach its program {program}: {closed} is mode"):
        LocalProcesses().start(spec)
