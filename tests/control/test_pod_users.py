"""Pods run as their tenant's own unprivileged user: each attack of a hostile pod fails.

A real control plane as root (``--pod-user tenant``), real processes, both
isolation levels. Tenant A's pod tries, from a shell, what a hostile tenant
would: read the plane's secrets and another tenant's files, signal another
tenant's pod and the plane, change its own limits, leave its cgroup, write to
the host, gain privileges. Every attempt must fail, and the pod must still be
able to use its own folders (so the test could fail the other way too).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.errors import InputError
from tests.control.conftest import CLUSTER, job, phase, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pod users need a root control plane")

BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None,
                           reason="bubblewrap (bwrap) is not installed")

# Each line: a name, then a shell command that succeeds only if the attack worked.
ATTACKS = {
    "read-admin-token": 'cat "$STATE/admin-token"',
    "read-database": 'cat "$STATE/state.db"',
    "list-state-folder": 'ls "$STATE" | grep -q state.db',
    "list-tenants": 'ls "$STATE/jobs" | grep -qx team-b',
    "list-other-tenants-jobs": 'ls "$STATE/jobs/team-b" | grep -qx victim',
    "read-other-checkpoint": 'cat "$STATE/jobs/team-b/victim/checkpoints/model.ckpt"',
    "list-other-checkpoints": 'ls "$STATE/jobs/team-b/victim/checkpoints" | grep -q model',
    "write-other-checkpoint": 'echo x > "$STATE/jobs/team-b/victim/checkpoints/model.ckpt"',
    "read-other-log": 'grep -q victim-secret "$STATE/jobs/team-b/victim/logs/pod-0.log"',
    "read-own-exit-record-folder": 'ls "$STATE/jobs/team-a/attacker/logs"',
    "kill-other-pod": 'kill -KILL "$VICTIM_PID"',
    "signal-control-plane": 'kill -0 "$PLANE_PID"',
    "write-etc": "touch /etc/shoal-attack",
    "read-shadow": "cat /etc/shadow",
    "list-cgroup-tree": 'for d in /sys/fs/cgroup/*/shoal /sys/fs/cgroup/shoal; do '
                        'ls "$d" 2>/dev/null | grep -q victim && exit 0; done; exit 1',
    "raise-memory-limit": 'for f in /sys/fs/cgroup/memory"$(grep :memory: /proc/self/cgroup | '
                          'cut -d: -f3)"/memory.limit_in_bytes "/sys/fs/cgroup$(grep ^0:: '
                          '/proc/self/cgroup | cut -d: -f3)/memory.max"; do '
                          '[ -f "$f" ] && echo 8589934592 > "$f" && exit 0; done; exit 1',
    "leave-cgroup": 'for f in /sys/fs/cgroup/memory/cgroup.procs /sys/fs/cgroup/pids/cgroup.procs '
                    '/sys/fs/cgroup/cgroup.procs; do [ -f "$f" ] && echo $$ > "$f" && exit 0; '
                    'done; exit 1',
    "mount": "mount -t tmpfs none /mnt",
    "chroot": "chroot / true",
    "change-owner": 'chown 0 "$HOME"',
    "bind-low-port": "python3 -c 'import socket; socket.socket().bind((\"0.0.0.0\", 81))'",
}
ATTACK_SCRIPT = "\n".join(
    f'if ( {command} ) >/dev/null 2>&1; then echo "ESCAPED {name}"; else echo "blocked {name}"; fi'
    for name, command in ATTACKS.items()
) + """
echo mine > own-file && echo "ok workdir"
echo step > "$SHOAL_CHECKPOINT_DIR/model.ckpt" && echo "ok checkpoint"
echo "uid $(id -u) gid $(id -g) groups $(id -G)"
grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status
"""

VICTIM = """
echo victim-secret
echo weights > "$SHOAL_CHECKPOINT_DIR/model.ckpt"
echo saved
exec sleep 600
"""


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[launch.Running]:
    running = launch.start(tmp_path / "state", grace_seconds=3.0, pod_user="tenant")
    try:
        yield running
    finally:
        with ShoalClient(running.url, running.token) as admin:
            for row in admin.jobs():
                if row["phase"] in ("Pending", "Running", "Preempting"):
                    admin.delete(row["name"], row["tenant"])
            wait_for(lambda: all(r["phase"] not in ("Running", "Preempting")
                                 for r in admin.jobs()))
        running.stop()


@pytest.fixture
def admin(plane: launch.Running) -> Iterator[ShoalClient]:
    with ShoalClient(plane.url, plane.token) as client:
        yield client


def _tenants(isolation: str) -> str:
    return CLUSTER.replace("spec: {cohort: lab,", f"spec: {{isolation: {isolation}, cohort: lab,")


def _pid(admin: ShoalClient, name: str) -> int:
    handle = admin.job(name)["pods"][0]["handle"]
    return int(json.loads(handle)["pid"])


@pytest.mark.parametrize("isolation", ["process", pytest.param("sandbox", marks=BWRAP)])
def test_every_attack_of_a_hostile_pod_fails(
    plane: launch.Running, admin: ShoalClient, isolation: str,
) -> None:
    admin.apply_text(_tenants(isolation), "cluster.yaml")
    admin.apply_text(job("victim", "team-b", ["/bin/sh", "-c", VICTIM], gpus=0), "v.yaml")
    wait_for(lambda: "saved" in admin.logs("victim", pod=0), timeout=60)
    victim_pid = _pid(admin, "victim")
    state = plane.plane.state_dir
    script = f'STATE={state}; VICTIM_PID={victim_pid}; PLANE_PID={os.getpid()}\n' + ATTACK_SCRIPT
    admin.apply_text(job("attacker", "team-a", ["/bin/sh", "-c", script], gpus=0), "a.yaml")
    wait_for(lambda: phase(admin, "attacker") in ("Succeeded", "Failed"), timeout=60)
    log = admin.logs("attacker", pod=0)

    assert phase(admin, "attacker") == "Succeeded", log
    blocked = {line.split()[1] for line in log.splitlines() if line.startswith("blocked ")}
    escaped = [line for line in log.splitlines() if line.startswith("ESCAPED ")]
    assert escaped == [], log
    assert blocked == set(ATTACKS), log
    # ... while its own folders work, so the attacks failed for the right reason.
    assert "ok workdir" in log and "ok checkpoint" in log, log
    uid_line = next(line for line in log.splitlines() if line.startswith("uid "))
    uid = int(uid_line.split()[1])
    assert uid >= 2_000_000_000 and uid_line == f"uid {uid} gid {uid} groups {uid}"
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log
    # The victim runs on untouched, as another user, its checkpoint intact.
    assert phase(admin, "victim") == "Running"
    ckpt = state / "jobs" / "team-b" / "victim" / "checkpoints" / "model.ckpt"
    assert ckpt.read_text() == "weights\n"
    assert ckpt.stat().st_uid not in (0, uid)
    assert not Path("/etc/shoal-attack").exists()


def test_state_folder_is_private_and_pod_folders_belong_to_their_tenant(
    plane: launch.Running, admin: ShoalClient,
) -> None:
    admin.apply_text(CLUSTER, "cluster.yaml")
    for name, tenant in (("one", "team-a"), ("two", "team-b"), ("three", "team-a")):
        admin.apply_text(job(name, tenant, ["/bin/sh", "-c", "id -u; echo x > own"], gpus=0),
                         f"{name}.yaml")
    for name in ("one", "two", "three"):
        wait_for(lambda n=name: phase(admin, n) == "Succeeded", timeout=60)
    uids = {name: int(admin.logs(name, pod=0).split()[0]) for name in ("one", "two", "three")}
    # One user per tenant: the same for both of team-a's jobs, another for team-b.
    assert uids["one"] == uids["three"] != uids["two"]

    state = plane.plane.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    assert stat.S_IMODE((state / "jobs").stat().st_mode) == 0o711
    for entry in state.iterdir():
        if entry.is_file():
            assert stat.S_IMODE(entry.stat().st_mode) & 0o077 == 0, entry
    one = state / "jobs" / "team-a" / "one"
    work, logs = one / "pod-0", one / "logs"
    assert stat.S_IMODE(one.parent.stat().st_mode) == 0o711, "its jobs' names are private"
    assert (work.stat().st_uid, stat.S_IMODE(work.stat().st_mode)) == (uids["one"], 0o700)
    assert (work / "own").stat().st_uid == uids["one"]
    assert (logs.stat().st_uid, stat.S_IMODE(logs.stat().st_mode)) == (0, 0o700)


def test_a_tenant_keeps_its_user_across_restarts(tmp_path: Path) -> None:
    from shoal.runtime.local.plane import EmbeddedPlane

    first = EmbeddedPlane(tmp_path / "state", pod_user="tenant")
    a, b = first.users.of("team-a"), first.users.of("team-b")
    first.stop()
    again = EmbeddedPlane(tmp_path / "state", pod_user="tenant")
    assert again.users.of("team-b") == b and again.users.of("team-a") == a
    c = again.users.of("team-c")
    assert c not in (a, b)
    again.store.put_tenant("team-a", {})
    again.store.delete_tenant("team-a")  # deleted, then created again: a new user
    again.stop()
    third = EmbeddedPlane(tmp_path / "state", pod_user="tenant")
    assert third.users.of("team-a") not in (a, b, c) and third.users.of("team-b") == b
    third.stop()


@pytest.mark.parametrize("isolation", ["process", pytest.param("sandbox", marks=BWRAP)])
def test_a_program_in_a_folder_closed_to_the_pod_user(
    admin: ShoalClient, tmp_path: Path, isolation: str,
) -> None:
    """A process pod cannot run it (refused at apply); a sandbox shows just that program."""
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o700)  # as /root, where a Python installation may live
    (closed / "secret").write_text("root's\n")
    program = closed / "tools" / "train.sh"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\nls {closed}; cat {closed}/secret; echo ran as $(id -u)\n")
    program.chmod(0o755)
    admin.apply_text(_tenants(isolation), "cluster.yaml")
    manifest = job("hidden", "team-a", [str(program)], gpus=0)
    if isolation == "process":
        with pytest.raises(InputError, match="is not a program the tenant's pods may run"):
            admin.apply_text(manifest, "h.yaml")
        return
    admin.apply_text(manifest, "h.yaml")
    wait_for(lambda: phase(admin, "hidden") in ("Succeeded", "Failed"), timeout=60)
    log = admin.logs("hidden", pod=0)
    assert admin.job("hidden")["phase"] == "Succeeded", log
    assert log.splitlines()[0] == "tools", "only what the pod runs is shown"
    assert "root's" not in log and "ran as 2" in log


def test_apply_cannot_probe_folders_the_pods_cannot_reach(admin: ShoalClient,
                                                          tmp_path: Path) -> None:
    """A closed folder and a missing one get the same answer: nothing is learnt of root's."""
    closed = tmp_path / "closed"
    (closed / "inside").mkdir(parents=True)
    (closed / "run.sh").write_text("#!/bin/sh\n")
    (closed / "run.sh").chmod(0o755)
    closed.chmod(0o700)
    admin.apply_text(CLUSTER, "cluster.yaml")
    answers = []
    for folder in (closed / "inside", tmp_path / "missing"):
        text = job("probe", "team-a", ["/bin/true"], gpus=0) + f"  workingDir: {folder}\n"
        with pytest.raises(InputError) as refused:
            admin.apply_text(text, "p.yaml")
        answers.append(str(refused.value).replace(str(folder), "FOLDER"))
    assert answers[0] == answers[1]
    assert "does not exist or is not a folder the tenant's pods may enter" in answers[0]
    for program in (closed / "run.sh", tmp_path / "missing.sh"):
        with pytest.raises(InputError, match="is not a program the tenant's pods may run"):
            admin.apply_text(job("probe", "team-a", [str(program)], gpus=0), "p.yaml")
    assert admin.jobs() == []


PRELOAD = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void grab(void) {
    if (geteuid() == 0) { FILE *f = fopen(MARK, "w"); if (f) { fputs("root", f); fclose(f); } }
}
"""


@pytest.mark.parametrize("isolation", ["process", pytest.param("sandbox", marks=BWRAP)])
def test_the_jobs_environment_never_reaches_what_runs_as_root(
    admin: ShoalClient, tmp_path: Path, isolation: str,
) -> None:
    """LD_PRELOAD in a job's env would run the tenant's code in the root wrappers."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    mark = tmp_path / "rooted"
    library = tmp_path / "evil.so"
    if compiler is not None:
        source = tmp_path / "evil.c"
        source.write_text(PRELOAD)
        subprocess.run([compiler, "-shared", "-fPIC", f'-DMARK="{mark}"', "-o", str(library),
                        str(source)], check=True)
    admin.apply_text(_tenants(isolation), "cluster.yaml")
    text = job("preload", "team-a", ["/bin/sh", "-c", "echo up; exec sleep 600"], gpus=0)
    admin.apply_text(text + f'  env: {{LD_PRELOAD: "{library}", SHOAL_MARK: leak}}\n', "p.yaml")
    wait_for(lambda: "up" in admin.logs("preload", pod=0), timeout=60)
    try:
        leader = _pid(admin, "preload")
        seen = {"root": 0, "pod": 0}
        for pid in _group(leader):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            owner = Path(f"/proc/{pid}").stat().st_uid
            if owner == 0:
                seen["root"] += 1
                assert not any(e.startswith((b"LD_PRELOAD=", b"SHOAL_MARK=")) for e in environ)
            elif b"SHOAL_MARK=leak" in environ:
                seen["pod"] += 1
        assert seen["root"] >= 1 and seen["pod"] >= 1, seen
    finally:
        admin.delete("preload")
    wait_for(lambda: phase(admin, "preload") == "Cancelled", timeout=60)
    assert not mark.exists(), "the tenant's library ran as root"


def _group(leader: int) -> list[int]:
    """The processes of the pod's process group (its leader's pid names the group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat_fields[2]) == leader:
                found.append(int(entry.name))
    return found


def test_a_state_folder_the_pods_cannot_reach_is_refused_up_front(tmp_path: Path) -> None:
    from shoal.runtime.local.plane import EmbeddedPlane, StateFolderClosedError

    closed = tmp_path / "home"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)  # as /root
    with pytest.raises(StateFolderClosedError, match=f"{closed} is closed to other users"):
        EmbeddedPlane(closed / "state", pod_user="tenant")
    EmbeddedPlane(closed / "state", pod_user="self").stop()  # its own user's pods: fine
