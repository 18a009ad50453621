"""The router program's table file: a ConfigMap folder as the kubelet writes it
(``..data`` -> a timestamped folder, ``routes.json`` -> ``..data/routes.json``),
changes picked up, bad content keeping the last good table, links out of the
folder refused, a size limit."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from shoal.serving.router.routes_file import RoutesError, RoutesFile, parse_table

R1 = {"name": "digits-r1", "weight": 100, "replicas": ["http://10.0.0.1:8080"],
      "model": "digits"}


def table(*revisions: dict[str, Any], activating: tuple[str, ...] = ()) -> bytes:
    return json.dumps({"revisions": list(revisions), "activating": list(activating)}).encode()


class ConfigMapFolder:
    """A mounted ConfigMap: each ``write`` is a new timestamped folder and an
    atomic swap of ``..data``, as the kubelet's atomic writer does it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.generation = 0
        folder.mkdir(exist_ok=True)
        (folder / "routes.json").symlink_to("..data/routes.json")

    def write(self, content: bytes) -> None:
        self.generation += 1
        stamp = f"..2026_12_02_{self.generation:04d}"
        (self.folder / stamp).mkdir()
        (self.folder / stamp / "routes.json").write_bytes(content)
        (self.folder / "..data_tmp").symlink_to(stamp)
        os.replace(self.folder / "..data_tmp", self.folder / "..data")

    @property
    def path(self) -> Path:
        return self.folder / "routes.json"


def test_the_table_is_read_through_the_kubelets_links_and_changes_are_picked_up(
        tmp_path: Path) -> None:
    mount = ConfigMapFolder(tmp_path / "routes")
    mount.write(table(R1))
    routes = RoutesFile(mount.path)
    first = routes.poll()
    assert first is not None
    assert [(r.name, r.weight, r.replicas, r.model) for r in first.revisions] == [
        ("digits-r1", 100, ("http://10.0.0.1:8080",), "digits")]
    assert routes.poll() is None  # unchanged: nothing read again

    r2 = {"name": "digits-r2", "weight": 20, "replicas": [], "model": "digits"}
    mount.write(table({**R1, "weight": 80}, r2, activating=("digits-r2",)))
    second = routes.poll()
    assert second is not None
    assert [(r.name, r.weight) for r in second.revisions] == [("digits-r1", 80),
                                                              ("digits-r2", 20)]
    assert second.activating == ("digits-r2",)
    assert routes.table == second and routes.error is None


def test_a_file_rewritten_in_place_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(table(R1))
    routes = RoutesFile(path)
    assert routes.poll() is not None
    path.write_bytes(table({**R1, "replicas": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]}))
    changed = routes.poll()
    assert changed is not None and len(changed.revisions[0].replicas) == 2


@pytest.mark.parametrize(("content", "expected"), [
    (b"{not json", "not JSON"),
    (b"[]", "expected a JSON object with 'revisions', got list"),
    (table({**R1, "weight": 101}), "revisions[0].weight: Input should be less than or equal"),
    (table({**R1, "colour": "red"}), "revisions[0].colour: unknown field"),
    (json.dumps({"revisions": [], "extra": 1}).encode(), "extra: unknown field"),
    (table({**R1, "replicas": ["10.0.0.1:8080"]}), "is not an http://<host>:<port> base URL"),
    (table(R1, R1), "names must be unique"),
])
def test_bad_content_is_logged_once_and_the_last_good_table_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, expected: str) -> None:
    mount = ConfigMapFolder(tmp_path / "routes")
    mount.write(table(R1))
    routes = RoutesFile(mount.path)
    good = routes.poll()
    mount.write(content)
    with caplog.at_level(logging.WARNING, logger="shoal.serving.router.routes_file"):
        assert routes.poll() is None
        assert routes.poll() is None  # the same bad file: not read, not logged again
    assert routes.table == good
    assert routes.error is not None and expected in routes.error
    assert str(mount.path) in routes.error
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and expected in lines[0] and "last good table is kept" in lines[0]
    mount.write(table({**R1, "weight": 50}))  # fixed: taken again
    fixed = routes.poll()
    assert fixed is not None and fixed.revisions[0].weight == 50 and routes.error is None


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_bytes(table(R1))
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "routes.json").symlink_to(outside)
    routes = RoutesFile(folder / "routes.json")
    assert routes.poll() is None and routes.table is None
    assert routes.error is not None and "a link out of its folder" in routes.error
    with pytest.raises(RoutesError, match="a link out of its folder"):
        routes.read()

    # through the kubelet's own link, too: ..data pointing out of the mount
    mount = ConfigMapFolder(tmp_path / "mount")
    (mount.folder / "..data").symlink_to(tmp_path)
    (tmp_path / "routes.json").write_bytes(table(R1))
    with pytest.raises(RoutesError, match="a link out of its folder"):
        RoutesFile(mount.path).read()


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    content = table(R1)
    path.write_bytes(content)
    assert RoutesFile(path, max_bytes=len(content)).poll() is not None
    routes = RoutesFile(path, max_bytes=len(content) - 1)
    assert routes.poll() is None
    assert routes.error == f"{path}: over the limit of {len(content) - 1} bytes"


def test_a_missing_file_is_no_table_until_it_appears(tmp_path: Path) -> None:
    mount = ConfigMapFolder(tmp_path / "routes")
    routes = RoutesFile(mount.path)
    assert routes.poll() is None and routes.table is None
    assert routes.error is not None and "cannot read it" in routes.error
    mount.write(table(R1))
    assert routes.poll() is not None


def test_parse_table_names_where_it_read_from() -> None:
    with pytest.raises(RoutesError, match=r"^somewhere: revisions\[0\]\.name: "):
        parse_table(table({**R1, "name": ""}), "somewhere")
