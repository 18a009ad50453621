"""The embedded control plane end to end: real processes, real SQLite, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.api import launch
from shoal.api.client import ShoalClient
from shoal.errors import (
    ConflictError,
    Forbidden,
    ImmutableError,
    InputError,
    NotFoundError,
    Unauthorized,
)
from tests.control.conftest import CLUSTER, job, phase, wait_for, zombie

QUICK_EXIT = ["python", "-c", "pass"]
SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]



def pod_pid(record: dict[str, Any]) -> int | None:
    """The first pod's pid, from the runtime's handle (None until it started)."""
    pods = record.get("pods") or []
    handle = pods[0].get("handle") if pods else None
    return int(json.loads(handle)["pid"]) if handle else None

def test_job_runs_with_gang_environment_and_logs(admin: ShoalClient) -> None:
    script = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['CUDA_VISIBLE_DEVICES'])"
    admin.apply_text(job("hello", "team-a", ["python", "-c", script], pods=2), "j.yaml")
    wait_for(lambda: phase(admin, "hello") == "Succeeded")
    lines = sorted(admin.logs("hello", pod=i).strip() for i in (0, 1))
    assert [line.split()[:2] for line in lines] == [["0", "2"], ["1", "2"]]
    assert {line.split()[2] for line in lines} == {"0", "1"}  # one GPU each, distinct


def test_tenants_are_isolated(plane: launch.Running, admin: ShoalClient) -> None:
    token_a = admin.create_token("team-a")
    token_b = admin.create_token("team-b")
    with ShoalClient(plane.url, token_a) as a, ShoalClient(plane.url, token_b) as b:
        _check_isolation(plane, admin, a, b)


def _check_isolation(
    plane: launch.Running, admin: ShoalClient, a: ShoalClient, b: ShoalClient
) -> None:
    a.apply_text(job("mine", "team-a", SLEEPER), "j.yaml")
    assert [j["name"] for j in a.jobs()] == ["mine"]
    assert b.jobs() == []
    with pytest.raises(NotFoundError):
        b.job("mine")
    with pytest.raises(NotFoundError):
        b.logs("mine")
    with pytest.raises(NotFoundError):
        b.delete("mine")
    with pytest.raises(Forbidden, match="team-b"):
        b.apply_text(job("sneaky", "team-a", SLEEPER), "j.yaml")
    with pytest.raises(Forbidden, match="admin"):
        a.apply_text("apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {}\n", "t.yaml")
    with pytest.raises(Unauthorized, match="missing token"), ShoalClient(plane.url, None) as anon:
        anon.jobs()
    with pytest.raises(Unauthorized, match="unknown"), ShoalClient(plane.url, "shoal_x_y") as bad:
        bad.jobs()
    a.delete("mine")
    wait_for(lambda: phase(admin, "mine") == "Cancelled")
    assert [p["state"] for p in admin.job("mine")["pods"]] == ["signalled"]


def test_reclaim_preempts_the_borrower_which_resumes(admin: ShoalClient) -> None:
    # team-a borrows all 4 GPUs; team-b's job takes its 2 back.
    admin.apply_text(job("a-big", "team-a", SLEEPER, gpus=4, priority="low"), "a.yaml")
    wait_for(lambda: phase(admin, "a-big") == "Running")
    admin.apply_text(job("b-small", "team-b", ["python", "-c", "pass"], gpus=2), "b.yaml")
    wait_for(lambda: phase(admin, "b-small") == "Succeeded")

    def decisions() -> list[tuple[str, str]]:
        return [(e["kind"], e["job"]) for e in admin.events() if e["kind"] in ("admitted", "preempted")]

    wait_for(lambda: len(decisions()) == 4)
    record = admin.job("a-big")
    assert record["preemptions"] == 1 and record["lost_seconds"] > 0
    assert decisions() == [("admitted", "a-big"), ("preempted", "a-big"), ("admitted", "b-small"),
                     ("admitted", "a-big")]


def test_failures_retry_then_fail_with_the_reason(admin: ShoalClient) -> None:
    admin.apply_text(job("flaky", "team-a", ["python", "-c", "raise SystemExit(3)"], retries=2),
                     "j.yaml")
    wait_for(lambda: phase(admin, "flaky") == "Failed")
    record = admin.job("flaky")
    assert record["attempts"] == 3
    assert "exit" in record["reason"].lower() or "3" in record["reason"]
    assert [e["kind"] for e in record["events"]].count("retrying") == 2


def test_out_of_memory_is_reported_with_the_limit(admin: ShoalClient) -> None:
    if not os.access("/sys/fs/cgroup/memory", os.W_OK) and not os.access("/sys/fs/cgroup", os.W_OK):
        pytest.skip("cgroups are not writable here: memory limits are not enforced")
    hog = ["python", "-c", "x = bytearray(400 * 1024 * 1024); print(len(x))"]
    admin.apply_text(job("hog", "team-a", hog, memory="64Mi"), "j.yaml")
    wait_for(lambda: phase(admin, "hog") == "Failed")
    assert "OOMKilled" in admin.job("hog")["reason"]


BAD_SUBMISSIONS = [
    ("too big for any node", job("huge", "team-a", SLEEPER, gpus=8), "cannot run on any node"),
    ("unknown tenant", job("lost", "team-z", SLEEPER), "tenant 'team-z' does not exist"),
    ("missing command", job("typo", "team-a", ["pyhton", "x.py"]), "'pyhton' was not found"),
    ("unknown field", job("f", "team-a", SLEEPER).replace("maxRetries", "maxRetires"), "maxRetires"),
]


@pytest.mark.parametrize(("case", "text", "needle"), BAD_SUBMISSIONS, ids=[b[0] for b in BAD_SUBMISSIONS])
def test_bad_submissions_are_rejected_whole(admin: ShoalClient, case: str, text: str, needle: str) -> None:
    before = admin.jobs()
    # A valid job in the same request must not be created either.
    with pytest.raises(InputError, match=needle):
        admin.apply_text(job("innocent", "team-a", SLEEPER) + "---\n" + text, "bad.yaml")
    assert admin.jobs() == before


def test_unwritable_checkpoint_dir_is_rejected(plane: launch.Running, admin: ShoalClient) -> None:
    blocker = plane.plane.checkpoint_dir("team-a/blocked")  # the job's key
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the directory should be")
    with pytest.raises(InputError, match="not writable"):
        admin.apply_text(job("blocked", "team-a", SLEEPER), "j.yaml")


def test_restart_after_sigkill_readopts_running_pods(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state = tmp_path / "state"
    port = launch.free_port()
    cmd = [sys.executable, "-m", "shoal", "server", "--state-dir", str(state), "--port", str(port)]
    servers: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        servers.append(server)
        assert server.stdout is not None
        assert "control plane on" in server.stdout.readline()
        return server

    def stop_all() -> None:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
            assert server.stdout is not None
            server.stdout.close()

    request.addfinalizer(stop_all)
    server = start()
    api = ShoalClient(f"http://127.0.0.1:{port}", (state / "admin-token").read_text().strip())
    request.addfinalizer(api.close)
    api.apply_text(CLUSTER + "---\n" + job("survivor", "team-a", SLEEPER), "j.yaml")
    pid = wait_for(lambda: pod_pid(api.job("survivor")))
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    start()
    record = api.job("survivor")
    assert record["phase"] == "Running" and record["attempts"] == 1
    assert pod_pid(record) == pid and os.path.exists(f"/proc/{pid}")
    api.delete("survivor")
    wait_for(lambda: api.job("survivor")["phase"] == "Cancelled")
    assert not os.path.exists(f"/proc/{pid}") or zombie(pid)
    # describe tells how the adopted pod ended, not "running" forever.
    assert [p["state"] for p in api.job("survivor")["pods"]] == ["signalled"]



@pytest.mark.parametrize(("code", "final"), [(0, "Succeeded"), (3, "Failed")])
def test_pod_that_ends_while_no_plane_runs_keeps_its_exit_code(
    tmp_path: Path, code: int, final: str
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    waiter = ["python", "-c", "import sys; open(sys.argv[1]).read(); sys.exit(int(sys.argv[2]))",
              str(fifo), str(code)]
    first = launch.start(tmp_path / "state")
    with ShoalClient(first.url, first.token) as api:
        api.apply_text(CLUSTER + "---\n" + job("offline", "team-a", waiter), "j.yaml")
        pid = wait_for(lambda: pod_pid(api.job("offline")))
    first.stop()
    with fifo.open("w") as release:  # the pod ends now, with no control plane watching
        release.write("go")
    second = launch.start(tmp_path / "state")
    try:
        with ShoalClient(second.url, second.token) as api:
            wait_for(lambda: api.job("offline")["phase"] == final)
            assert api.job("offline")["attempts"] == 1
    finally:
        second.stop()
        os.waitpid(pid, 0)  # the pod was this test process's child


def test_working_dir_inside_the_state_folder_is_refused(plane: launch.Running, admin: ShoalClient) -> None:
    text = job("peek", "team-a", SLEEPER).replace(
        "  maxRetries", f"  workingDir: {plane.plane.state_dir}\n  maxRetries"
    )
    with pytest.raises(InputError, match="state folder"):
        admin.apply_text(text, "j.yaml")


def test_a_reused_name_starts_clean(admin: ShoalClient) -> None:
    admin.apply_text(job("reused", "team-a", ["python", "-c", "print('secret of team-a')"]), "a.yaml")
    wait_for(lambda: phase(admin, "reused") == "Succeeded")
    assert "secret of team-a" in admin.logs("reused")
    with pytest.raises(ImmutableError, match="immutable"):
        admin.apply_text(job("reused", "team-a", QUICK_EXIT), "a.yaml")
    admin.delete("reused")
    admin.apply_text(job("reused", "team-a", ["python", "-c", "print('again')"]), "a.yaml")
    wait_for(lambda: phase(admin, "reused") == "Succeeded")
    record = admin.job("reused")
    assert "secret" not in admin.logs("reused") and "again" in admin.logs("reused")
    assert [e["kind"] for e in record["events"]] == ["submitted", "admitted", "succeeded"]


def test_job_names_are_per_tenant(plane: launch.Running, admin: ShoalClient) -> None:
    """Like names in Kubernetes namespaces: each tenant has its own "train"."""
    tokens = {t: admin.create_token(t) for t in ("team-a", "team-b")}
    users = {t: ShoalClient(plane.url, token) for t, token in tokens.items()}
    try:
        for tenant, user in users.items():
            applied = user.apply_text(
                job("train", tenant, ["python", "-c", f"print('{tenant} trains')"]), "j.yaml")
            assert applied[0]["result"] == "created", "another tenant's name is no conflict"
        for tenant, user in users.items():
            wait_for(lambda u=user: u.job("train")["phase"] == "Succeeded")
            assert user.logs("train") == f"{tenant} trains\n"
            assert [j["name"] for j in user.jobs()] == ["train"]
        # The admin sees both, and names the tenant where the name is ambiguous.
        assert sorted((j["tenant"], j["name"]) for j in admin.jobs()) == [
            ("team-a", "train"), ("team-b", "train")]
        with pytest.raises(InputError, match="exists in tenants team-a, team-b"):
            admin.job("train")
        assert admin.logs("train", tenant="team-b") == "team-b trains\n"
        # A tenant naming another tenant gets "not found", as for a name nobody has.
        with pytest.raises(NotFoundError):
            users["team-a"].job("train", tenant="team-b")
        users["team-a"].delete("train")
        assert admin.job("train", tenant="team-b")["deleted"] is False
    finally:
        for user in users.values():
            user.close()


def test_arguments_no_process_can_take_are_refused_at_apply(admin: ShoalClient) -> None:
    for field, value in (("command", '["python", "a\\0b"]'), ("env", '{"A=B": "1"}'),
                         ("env", '{"A": "x\\0y"}')):
        text = job("odd", "team-a", ["python", "-c", "pass"]) + f"  {field}: {value}\n"
        if field == "command":
            text = text.replace('  command: ["python", "-c", "pass"]\n', "")
        with pytest.raises(InputError, match=f"spec.{field}"):
            admin.apply_text(text, "odd.yaml")
    assert admin.jobs() == []


FORKS = """
import os, time
started = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started += 1
print("started", started, flush=True)
"""


def test_every_pod_has_a_pid_limit_a_fork_bomb_hits(admin: ShoalClient) -> None:
    if not Path("/sys/fs/cgroup/pids").is_dir() and not Path(
            "/sys/fs/cgroup/cgroup.controllers").is_file():
        pytest.skip("no pids cgroup controller on this machine")
    text = job("bomb", "team-a", ["python", "-c", FORKS]) + "  pidsLimit: 32\n"
    admin.apply_text(text, "bomb.yaml")
    wait_for(lambda: "started" in admin.logs("bomb"))
    started = int(admin.logs("bomb").split()[-1])
    assert started < 32, f"{started} forks: pids.max must stop the pod at 32"
    # Without pidsLimit a pod still gets the default limit (1024), never "max".
    admin.apply_text(job("plain", "team-a", SLEEPER), "plain.yaml")
    handle = wait_for(lambda: (admin.job("plain")["pods"] or [{}])[0].get("handle"))
    cgroup = json.loads(handle)["cgroup"]
    limits = [p for p in (Path("/sys/fs/cgroup/pids") / cgroup / "pids.max",
                          Path("/sys/fs/cgroup") / cgroup / "pids.max") if p.exists()]
    # (plus the processes the runtime itself puts there: the exit-code wrapper)
    assert limits and 1024 <= int(limits[0].read_text()) <= 1027


def test_links_planted_in_a_checkpoint_folder_are_never_followed(
        admin: ShoalClient, tmp_path: Path) -> None:
    victim = tmp_path / "host-file"
    victim.write_text("precious")
    plant = ("import os; d = os.environ['SHOAL_CHECKPOINT_DIR']; "
             f"[os.symlink({str(victim)!r}, os.path.join(d, n)) for n in "
             "('.shoal-write-test', 'shoal-progress.json', 'ckpt.pt')]")
    admin.apply_text(job("planter", "team-a", ["python", "-c", plant]), "p.yaml")
    wait_for(lambda: phase(admin, "planter") == "Succeeded")
    with pytest.raises(ConflictError):  # the same name again, while the job is live
        admin.apply_text(job("planter", "team-a", ["python", "-c", "pass"]), "p.yaml")
    admin.delete("planter")  # finished: its name is free again at once
    admin.apply_text(job("planter", "team-a", ["python", "-c", "pass"]), "p.yaml")  # reused name
    wait_for(lambda: phase(admin, "planter") == "Succeeded")
    assert victim.read_text() == "precious", "no write, truncation or removal through a link"
    assert victim.exists()
