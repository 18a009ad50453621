"""What both parts of ``reliability.py`` share: the server, readings, leaks and output.

Starting, killing and stopping a ``shoal server`` on a fixed state folder and
port (``Server``), free ports and temporary state folders, CPU and RSS
readings, the scans for this run's leaked cgroups and processes and their
clean-up, the cluster and job YAML builders, admin calls and JSON output.
Imported by ``reliability_crash``, ``reliability_fuzz`` and ``reliability``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

CGROUP_MOUNT = Path("/sys/fs/cgroup")
READY_LINE = "Shoal control plane on"
MiB = 1024 * 1024


# -- common: one shoal server process ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def machine_cpu_seconds() -> float:
    """CPU seconds used by the whole machine so far (every process, not only ours)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (VmRSS, VmHWM), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Server:
    """``shoal server`` on a fixed state folder and port, started again after each kill.

    Only processes started here are ever signalled, by their own pid.  The
    CPU time of each ended incarnation (with the pods it reaped itself)
    comes from ``wait4``.
    """

    started: ClassVar[list[Server]] = []  # every one, to stop them all when the script fails

    def __init__(self, state: Path, port: int, log: Path) -> None:
        Server.started.append(self)
        self.state, self.port, self.log = state, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.log_offset = 0
        self.cpu_seconds = 0.0
        self.incarnations = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            out.write(f"--- start {self.incarnations} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal", "server", "--state-dir", str(self.state),
                 "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.spawned_at = time.monotonic()
        self.incarnations += 1

    def announced(self) -> bool:
        """Whether this incarnation printed that its API is up (cheap: no request)."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.log_offset)
                return READY_LINE.encode() in handle.read()
        except OSError:
            return False

    def token(self) -> str:
        return (self.state / "admin-token").read_text().strip()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until this incarnation answers ``/v1/health`` with its own pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"shoal server exited at start; see {self.log}")
            if self.announced():
                try:
                    answer = httpx.get(f"{self.url}/v1/health", timeout=5,
                                       headers={"Authorization": f"Bearer {self.token()}"})
                    if answer.status_code == 200 and answer.json().get("pid") == self.pid:
                        return
                except (httpx.HTTPError, OSError, ValueError):
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"shoal server did not answer within {timeout:.0f} s; see {self.log}")

    def _reap(self, block: bool) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_seconds += usage.ru_utime + usage.ru_stime
        return True

    def kill(self) -> None:
        """SIGKILL this incarnation (our own child, by pid) and reap it."""
        assert self.proc is not None and self.pid > 1
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(block=True)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean stop), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.pid > 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self._reap(block=False):
            if time.monotonic() > deadline:
                self.kill()
                return
            time.sleep(0.05)


def temporary_root(base: str | None) -> Path:
    # Pods may run as other users: they must be able to pass through to their folders.
    root = Path(tempfile.mkdtemp(prefix="shoal-reliability-", dir=base))
    root.chmod(0o711)
    return root


def cluster_yaml(tenants: list[str], per_tenant: int) -> str:
    pool = """apiVersion: shoal.dev/v1alpha1
kind: NodePool
metadata: {name: reliability}
spec: {count: 1, cpu: 16, memory: 16Gi}
"""
    docs = [pool]
    for tenant in tenants:
        docs.append(f"""apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {{name: {tenant}}}
spec:
  quota:
    cpu: {{nominal: {100 * per_tenant}m}}
    memory: {{nominal: {32 * per_tenant}Mi}}
""")
    return "---\n".join(docs)


def job_yaml(name: str, tenant: str, command: list[str], cpu: str = "100m",
             memory: str = "32Mi") -> str:
    return f"""---
apiVersion: shoal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  tenant: {tenant}
  podSets: [{{resources: {{cpu: {cpu}, memory: {memory}}}}}]
  command: {json.dumps(command)}
"""


def admin_call(server: Server, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {server.token()}"}
    answer = httpx.request(method, server.url + path, headers=headers, timeout=60, **kwargs)
    answer.raise_for_status()
    return answer.json()


def emit(result: dict[str, Any], path: str | None) -> None:
    if path is None:
        return
    text = json.dumps(result, indent=2, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
        print(f"JSON written to {path}")


# -- leaks: cgroups and processes of this run ----------------------------------------------


def run_cgroups(tag: str, mount: Path = CGROUP_MOUNT) -> list[dict[str, Any]]:
    """Cgroup folders under every ``shoal*`` root whose names hold ``tag``."""
    found: list[dict[str, Any]] = []
    bases = [mount, *(p for p in mount.iterdir() if p.is_dir() and not p.is_symlink())]
    for base in bases:
        for root in base.glob("shoal*"):
            if not root.is_dir():
                continue
            for folder, dirs, _files in os.walk(root):
                depth = Path(folder).relative_to(root).parts
                if len(depth) >= 3:
                    dirs[:] = []
                for name in dirs:
                    if tag in name:
                        path = Path(folder) / name
                        found.append({"path": str(path), "procs": _cgroup_procs(path)})
    return sorted(found, key=lambda c: str(c["path"]))


def _cgroup_procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def run_processes(tenants: set[str]) -> list[dict[str, Any]]:
    """Live processes whose environment says they are a pod of one of ``tenants``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                       if b"=" in item)
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        tenant = env.get(b"SHOAL_TENANT", b"").decode(errors="replace")
        state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
        if tenant in tenants and state != "Z":
            found.append({
                "pid": int(entry.name), "ppid": int(stat.rsplit(")", 1)[1].split()[1]),
                "state": state, "tenant": tenant,
                "job": env.get(b"SHOAL_JOB", b"").decode(errors="replace"),
                "uid": env.get(b"SHOAL_POD_UID", b"").decode(errors="replace"),
                "attempt": env.get(b"SHOAL_ATTEMPT", b"").decode(errors="replace"),
                "cmdline": cmdline[:200]})
    return found


def clean_up(processes: list[dict[str, Any]], cgroups: list[dict[str, Any]], tenants: set[str]) -> None:
    """SIGKILL this run's leaked pods (checked again by environment) and remove its cgroups."""
    for proc in processes:
        pid = int(proc["pid"])
        if pid > 1 and any(p["pid"] == pid for p in run_processes(tenants)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    for group in sorted(cgroups, key=lambda c: -len(str(c["path"]))):
        with contextlib.suppress(OSError):
            Path(group["path"]).rmdir()
