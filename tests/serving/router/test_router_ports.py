"""A service keeps its router's port across control-plane restarts (``ServiceRouters``)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.serving.routers import ServiceRouters


def nobody(token: str) -> None:
    return None


@pytest.fixture
def opened() -> Iterator[list[ServiceRouters]]:
    made: list[ServiceRouters] = []
    yield made
    for routers in made:
        routers.close()


def routers(ports: Path, opened: list[ServiceRouters]) -> ServiceRouters:
    made = ServiceRouters(nobody, ports=ports)
    opened.append(made)
    return made


def test_a_restarted_plane_serves_a_service_at_the_same_url(
        tmp_path: Path, opened: list[ServiceRouters]) -> None:
    ports = tmp_path / "router-ports.json"
    first = routers(ports, opened)
    url = first.ensure("team-a/digits", "digits", "team-a")
    first.close()
    assert json.loads(ports.read_text()) == {"team-a/digits": int(url.rsplit(":", 1)[1])}
    assert routers(ports, opened).ensure("team-a/digits", "digits", "team-a") == url


def test_a_port_taken_meanwhile_moves_the_router_and_is_remembered(
        tmp_path: Path, opened: list[ServiceRouters]) -> None:
    ports = tmp_path / "router-ports.json"
    first = routers(ports, opened)
    old = int(first.ensure("team-a/digits", "digits", "team-a").rsplit(":", 1)[1])
    first.close()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        moved = routers(ports, opened).ensure("team-a/digits", "digits", "team-a")
    new = int(moved.rsplit(":", 1)[1])
    assert new != old
    assert json.loads(ports.read_text()) == {"team-a/digits": new}


def test_a_deleted_service_forgets_its_port(tmp_path: Path, opened: list[ServiceRouters]) -> None:
    ports = tmp_path / "router-ports.json"
    host = routers(ports, opened)
    host.ensure("team-a/digits", "digits", "team-a")
    host.remove("team-a/digits")
    assert json.loads(ports.read_text()) == {}


@pytest.mark.parametrize("planted", ["link", "junk", "fifo"])
def test_a_ports_file_that_is_not_ours_is_ignored(
        planted: str, tmp_path: Path, opened: list[ServiceRouters]) -> None:
    """Attack: whatever sits at the file's path is never followed, parsed into a port
    outside 1-65535, nor blocked on; the next save replaces it."""
    ports = tmp_path / "router-ports.json"
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"team-a/digits": 1}))
    if planted == "link":
        ports.symlink_to(target)
    elif planted == "junk":
        ports.write_text('{"team-a/digits": 70000, "x": "y"')
    else:
        os.mkfifo(ports)
    url = routers(ports, opened).ensure("team-a/digits", "digits", "team-a")
    assert not url.endswith(":1") and not url.endswith(":70000")
    assert not ports.is_symlink() and ports.is_file()
    assert json.loads(target.read_text()) == {"team-a/digits": 1}, "the link's target is untouched"
