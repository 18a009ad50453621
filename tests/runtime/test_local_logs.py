"""Pod logs are rotated by copy and truncate while the pod keeps writing through its fd."""

from __future__ import annotations

import os
from pathlib import Path

from tests.control.conftest import CLUSTER, job, phase, wait_for

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.runtime.local.logs import LogLimits, rotate_if_full, rotated_files


def test_a_full_log_is_copied_and_truncated_and_the_writer_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "pod-0.log"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as the pod holds it
    limits = LogLimits(max_bytes=100, files=2)
    try:
        os.write(writer, b"a" * 60)
        assert not rotate_if_full(log, limits), "not full yet"
        os.write(writer, b"b" * 60)
        assert rotate_if_full(log, limits)
        os.write(writer, b"after\n")
        assert log.read_bytes() == b"after\n", "the next write lands at the new end"
        assert (tmp_path / "pod-0.log.1").read_bytes() == b"a" * 60 + b"b" * 60
        for round_ in range(3):
            os.write(writer, bytes([ord("c") + round_]) * 120)
            assert rotate_if_full(log, limits)
        assert rotated_files(log, limits) == [tmp_path / "pod-0.log.1", tmp_path / "pod-0.log.2"]
        assert not (tmp_path / "pod-0.log.3").exists(), "only `files` rotated files are kept"
        assert (tmp_path / "pod-0.log.1").read_bytes() == b"e" * 120
        assert (tmp_path / "pod-0.log.2").read_bytes() == b"d" * 120
        assert os.stat(log).st_size == 0
    finally:
        os.close(writer)


def test_a_link_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 500)
    log = tmp_path / "pod-0.log"
    log.symlink_to(secret)
    assert not rotate_if_full(log, LogLimits(max_bytes=1, files=1))
    assert secret.read_bytes() == b"s" * 500


def test_a_chatty_pod_s_log_is_rotated_and_served_from_its_new_start(tmp_path: Path) -> None:
    """A real plane and API: the log stays bounded while the pod writes on."""
    go = tmp_path / "go"
    limits = LogLimits(max_bytes=64 * 1024, files=2)
    running = launch.start(tmp_path / "state", grace_seconds=3.0, log_limits=limits)
    chatty = ("i=0; while [ $i -lt 4000 ]; do echo line-$i-0123456789abcdef0123456789abcdef; "
              f"i=$((i+1)); done; while [ ! -e {go} ]; do sleep 0.05; done; echo last-line")
    try:
        with ShoalClient(running.url, running.token) as admin:
            admin.apply_text(CLUSTER, "c.yaml")
            admin.apply_text(job("chatty", "team-a", ["/bin/sh", "-c", chatty], gpus=0), "j.yaml")
            log = running.plane.log_path("team-a/chatty", 0)
            wait_for(lambda: (log.parent / "pod-0.log.1").exists(), timeout=60)
            _, offset = admin.log_page("chatty", offset=0, limit=10**6)
            assert offset < limits.max_bytes, "the live log was truncated"
            go.touch()
            wait_for(lambda: phase(admin, "chatty") == "Succeeded", timeout=60)
            # A reader past the (rotated) end is sent back to the new start.
            data, following = admin.log_page("chatty", offset=10**9)
            assert data.endswith(b"last-line\n") and following == len(data)
            rotated = (log.parent / "pod-0.log.1").read_bytes()
            assert rotated.startswith(b"line-") and len(rotated) > limits.max_bytes
    finally:
        running.stop()
