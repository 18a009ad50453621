"""Shared fixtures: the real traces beside the checkout, skipped cleanly when absent;
folders that the tenants' unprivileged pod users can pass through.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from shoal.runtime.local.users import ENV_MODE, PodUser, unreachable

_PROBE = PodUser(2_147_000_000, 2_147_000_000)  # any user but root
_NOTE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # A shell that starts the suite in the background (``.ci/run &`` in a script) leaves
    # SIGINT ignored, and an ignored signal stays ignored in every program the tests
    # start: the tests of Ctrl-C would then press a key nobody hears. A caught signal is
    # reset to its default across exec, so catching it here gives children a real Ctrl-C.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # As root, pods run as unprivileged per-tenant users, which must be able to run
    # this interpreter. One installed in a private folder (e.g. under /root) cannot
    # be run by them: there the suite runs its Python pods as root (and says so in
    # its header); the tests of pod users pass --pod-user tenant and run system
    # programs.
    if os.geteuid() == 0 and ENV_MODE not in os.environ:
        problem = unreachable(Path(sys.executable), _PROBE)
        if problem is not None:
            os.environ[ENV_MODE] = "self"
            config.stash[_NOTE] = (f"pods run as root (pod users cannot run "
                                   f"{sys.executable}: {problem})")


def pytest_report_header(config: pytest.Config) -> str | None:
    return config.stash.get(_NOTE, None)


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's tmp_path, passable (not listable) by other users up to /tmp.

    pytest makes its folders 0700; a control plane whose state folder is in one
    could not hand the pods their folders (it refuses to start).
    """
    for folder in (tmp_path, *tmp_path.parents):
        info = folder.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & 0o001:
            folder.chmod(info.st_mode | 0o111)
    return tmp_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"


@pytest.fixture(scope="session")
def openb_dir() -> Path:
    folder = SHARED / "alibaba-openb-2023"
    if not (folder / "openb_pod_list_default.csv").is_file():
        pytest.skip(f"openb trace not found at {folder} (../shared is absent)")
    return folder


@pytest.fixture(scope="session")
def azure_trace() -> Path:
    path = SHARED / "azure-llm-code" / "AzureLLMInferenceTrace_code.csv"
    if not path.is_file():
        pytest.skip(f"Azure LLM trace not found at {path} (../shared is absent)")
    return path
