"""Who a pod runs as: one unprivileged user per tenant, or the control plane's own user.

When the control plane runs as root, every pod runs as its tenant's own
unprivileged uid (and a group of the same number, no supplementary groups):
numbers from ``uid_base`` up, given out in the order tenants first run a pod
and never reused, so that a tenant deleted and created again does not get
another's files. No ``/etc/passwd`` entry is needed: the kernel only knows
numbers.

Privileges are dropped by ``setpriv`` (util-linux) right before the pod's
command, after everything that must stay root (joining the cgroup, the exit
recorder, bubblewrap's mounts): real, effective and saved ids, no
supplementary groups, ``no_new_privs`` (set-uid programs and file
capabilities grant nothing), and empty bounding, inheritable and ambient
capability sets.

``self`` runs pods as the control plane's user: the only choice when it is
not root (it cannot switch users), and a choice a root operator may make on
purpose (``--pod-user self``), knowing that pods then run as root.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shoal.errors import InputError, ShoalError

PodUserMode = Literal["tenant", "self"]
MODES: tuple[str, ...] = ("auto", "tenant", "self")
DEFAULT_UID_BASE = 2_000_000_000
"""Far above the ranges that useradd, systemd and /etc/subuid hand out."""
UID_RANGE = 1_000_000
ENV_MODE = "SHOAL_POD_USER"
"""Environment variable read when the plane is not told who pods run as."""


class PodUserError(ShoalError):
    """Pods cannot run as their tenant's user on this machine."""

    code = "pod_user_unavailable"


@dataclass(frozen=True)
class PodUser:
    """An unprivileged identity for a tenant's pods."""

    uid: int
    gid: int

    def owns(self, info: os.stat_result) -> bool:
        return info.st_uid == self.uid


def resolve_mode(asked: str | None) -> PodUserMode:
    """``auto`` (or nothing) is ``tenant`` for root and ``self`` otherwise."""
    mode = asked or os.environ.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise InputError(f"pod user: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "tenant" if os.geteuid() == 0 else "self"
    if mode == "tenant" and os.geteuid() != 0:
        raise PodUserError(
            "pods can run as their tenant's own user only when the control plane runs as root",
            hint="run it as root, or with --pod-user self (pods then run as you)",
        )
    if mode == "tenant" and shutil.which("setpriv") is None:
        raise PodUserError("running pods as tenant users needs setpriv",
                           hint="apt-get install util-linux")
    return "tenant" if mode == "tenant" else "self"


class PodUsers:
    """Maps tenants to pod users; ``allocate`` keeps the tenant -> uid table durably."""

    def __init__(self, mode: PodUserMode, allocate: Callable[[str], int]) -> None:
        self.mode = mode
        self._allocate = allocate
        self._known: dict[str, PodUser] = {}

    def of(self, tenant: str) -> PodUser | None:
        """The tenant's user; None when pods run as the control plane's user."""
        if self.mode == "self":
            return None
        user = self._known.get(tenant)
        if user is None:
            uid = self._allocate(tenant)
            user = self._known[tenant] = PodUser(uid, uid)
        return user


def drop_privileges(user: PodUser) -> list[str]:
    """The argv prefix that runs the rest as ``user`` with no way back to privilege."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
        "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--",
    ]


def give(path: Path, user: PodUser) -> None:
    """Hand a folder Shoal created to the pod's user, private to it (never through a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def unreachable(path: Path, user: PodUser, *, sandboxed: bool = False) -> str | None:
    """Why ``user`` cannot reach ``path`` by its permission bits, or None if it can.

    Each folder on the way needs search (x) permission, the target read
    permission (and x for a program). ``sandboxed``: a sandbox recreates the
    folders on the way (it hides closed ones and binds back what is needed),
    so only the target's own permissions count. ACLs are not consulted.
    """
    skipped = [Path("/")] if sandboxed else []
    # The way as written (a venv's bin/python is a link: its folders count too)
    # and the real file at the end of it.
    for real in dict.fromkeys((path.parent.resolve() / path.name, path.resolve())):
        for folder in (*reversed(real.parents), real):
            if folder != real and any(folder.is_relative_to(s) for s in skipped):
                continue
            try:
                info = folder.stat()
            except OSError as exc:
                return f"{folder}: {exc.strerror}"
            if not _permits(info, user, _needs(info, last=folder == real)):
                mode = stat.S_IMODE(info.st_mode)
                return f"{folder} is mode {mode:04o}, owned by uid {info.st_uid}"
    return None


def passable(info: os.stat_result, user: PodUser) -> bool:
    """Whether ``user`` may pass through the folder ``info`` describes."""
    return _permits(info, user, stat.S_IXOTH)


def _needs(info: os.stat_result, *, last: bool) -> int:
    if not last or stat.S_ISDIR(info.st_mode):
        return stat.S_IXOTH  # search
    # A binary needs only x; a script, which its interpreter reads, needs r.
    return stat.S_IXOTH if info.st_mode & stat.S_IXUSR else stat.S_IROTH


def _permits(info: os.stat_result, user: PodUser, need: int) -> bool:
    # The class of the user decides which three bits apply (owner, group, others).
    if info.st_uid == user.uid:
        shift = 6
    elif info.st_gid == user.gid:
        shift = 3
    else:
        shift = 0
    granted = (info.st_mode >> shift) & 0o7
    return (granted & need) == need
