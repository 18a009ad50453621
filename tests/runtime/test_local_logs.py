"""Pod logs are rotated by copy and truncate while the pod keeps writing through its fd."""

from __future__ import annotations

import os
from pathlib import Path

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
