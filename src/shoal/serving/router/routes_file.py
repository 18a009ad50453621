"""The routing table of a router that runs as a program: a JSON file, re-read
when it changes.

On Kubernetes the operator writes the table into a ConfigMap that the
kubelet mounts as a folder; it updates the folder by writing a new
timestamped folder and swapping the ``..data`` link, so ``routes.json`` is
a link to a link.  ``RoutesFile`` resolves links only inside that folder
(one pointing out of it is refused), reads at most ``max_bytes``, and
decides whether the file changed from the resolved path's ``stat`` (device,
inode, size, modification time), so polling it every second costs a few
system calls and no read.

The table is what ``runtime.kubernetes.serving_objects.routes_of`` writes:
``{"revisions": [{"name", "weight", "replicas", "model"}], "activating":
[...]}`` — each revision as ``RevisionRoute``'s fields (replicas as
``http://<ip>:<port>`` base URLs; a revision without one is held by the
activator), and ``activating`` naming those without a ready replica.
Unknown fields are errors.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from shoal.errors import InputError
from shoal.serving.router.router import RevisionRoute

_log = logging.getLogger(__name__)

MAX_BYTES = 1024 * 1024
"""Largest table read (a ConfigMap holds at most 1 MiB)."""


class RoutesError(InputError):
    """A routing table file that cannot be used (missing, too large, not a table)."""

    code = "bad_routes_file"


class RoutesTable(BaseModel):
    """The whole table, as the operator writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    revisions: tuple[RevisionRoute, ...] = ()
    activating: tuple[str, ...] = ()
    """Revisions without a ready replica (informational: their ``replicas`` is empty)."""

    @field_validator("revisions")
    @classmethod
    def _replica_urls(cls, revisions: tuple[RevisionRoute, ...]) -> tuple[RevisionRoute, ...]:
        for revision in revisions:
            for url in revision.replicas:
                parts = urlsplit(url)
                try:
                    port = parts.port
                except ValueError:
                    port = None
                if parts.scheme != "http" or not parts.hostname or port is None \
                        or parts.path not in ("", "/") or parts.query or parts.fragment:
                    raise ValueError(f"revision {revision.name!r}: replica {url!r} is not an "
                                     "http://<host>:<port> base URL")
        return revisions

    @model_validator(mode="after")
    def _unique(self) -> RoutesTable:
        names = [r.name for r in self.revisions]
        if len(set(names)) != len(names):
            raise ValueError(f"revisions: names must be unique, got {names}")
        return self


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        message = ("unknown field" if error["type"] == "extra_forbidden"
                   else error["msg"].removeprefix("Value error, "))
        parts.append(f"{where.lstrip('.') or '(top)'}: {message}")
    return "; ".join(parts)


def parse_table(text: bytes, where: str) -> RoutesTable:
    """``text`` as a table; RoutesError naming ``where`` and the field otherwise."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RoutesError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RoutesError(f"{where}: expected a JSON object with 'revisions', "
                          f"got {type(data).__name__}")
    try:
        return RoutesTable.model_validate(data)
    except ValidationError as exc:
        raise RoutesError(f"{where}: {_describe(exc)}") from exc


Stamp = tuple[str, int, int, int, int]
"""The resolved path and its device, inode, size and modification time."""


class RoutesFile:
    """A table file inside a mounted folder (see the module's docstring)."""

    def __init__(self, path: str | Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(os.path.abspath(path))
        self.folder = Path(os.path.realpath(self.path.parent))
        self.max_bytes = max_bytes
        self.table: RoutesTable | None = None
        """The last good table (None until one was read)."""
        self.error: str | None = None
        """Why the file as it is now was not taken (None: it was)."""
        self._stamp: Stamp | None = None

    def _resolve(self) -> str:
        real = os.path.realpath(self.path)
        if os.path.commonpath([real, str(self.folder)]) != str(self.folder):
            raise RoutesError(f"{self.path}: a link out of its folder {self.folder} "
                              f"(to {real}) is not followed")
        return real

    def _stamp_of(self, real: str) -> Stamp:
        try:
            info = os.stat(real, follow_symlinks=False)
        except OSError as exc:
            raise RoutesError(f"{self.path}: cannot read it: {exc.strerror or exc}") from exc
        return real, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns

    def read(self) -> RoutesTable:
        """Read and parse the file now (RoutesError when it cannot be used)."""
        real = self._resolve()
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise RoutesError(f"{self.path}: cannot read it: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb") as file:
            data = file.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise RoutesError(f"{self.path}: over the limit of {self.max_bytes} bytes")
        return parse_table(data, str(self.path))

    def poll(self) -> RoutesTable | None:
        """The new table when the file changed and is good; None otherwise.

        A file that changed and cannot be used is logged once (one line) and
        the last good table stays; it is read again only when it changes."""
        try:
            stamp = self._stamp_of(self._resolve())
        except RoutesError as exc:
            self._refuse(str(exc), None)
            return None
        if stamp == self._stamp:
            return None
        try:
            table = self.read()
        except RoutesError as exc:
            self._refuse(str(exc), stamp)
            return None
        self._stamp, self.table, self.error = stamp, table, None
        return table

    def _refuse(self, reason: str, stamp: Stamp | None) -> None:
        if reason != self.error or stamp != self._stamp:
            kept = "the last good table is kept" if self.table is not None else "no table yet"
            _log.warning("routing table not taken: %s (%s)", reason, kept)
        self._stamp, self.error = stamp, reason
