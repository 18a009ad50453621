"""Sandboxed pods with bubblewrap (``bwrap``) and gang network namespaces.

A sandboxed pod gets:

- new PID, IPC and UTS namespaces: it sees only its own processes (its command
  is PID 2, bwrap's init is PID 1) and can signal nobody else;
- a read-only view of the host (``--ro-bind / /``), a minimal ``/dev``, its own
  ``/proc``, a private ``/tmp``; only its workdir and the ``writable`` paths
  (e.g. the checkpoint directory) are bound read-write;
- an empty tmpfs over the runtime's jobs root, with only its own workdir bound
  back, so that it cannot read other tenants' workdirs;
- no capabilities (``--cap-drop ALL``) even when Shoal runs as root;
- the ``/dev/nvidia*`` device nodes only when it was given GPUs;
- networking: the pods of one gang share the namespace ``shoal-<network>``
  (made by :func:`create_network`, loopback up, entered with ``ip netns exec``)
  so that they reach each other on 127.0.0.1; a pod without a network gets a
  private one (``--unshare-net``, loopback only).

``--die-with-parent`` is deliberately *not* used: pods must survive a crash or
SIGKILL of the control plane, which re-adopts them after its restart. Nor is
``--new-session``: the pod already runs in its own session without a terminal
(so TIOCSTI is moot), and staying in the launcher's process group lets the
runtime signal the whole pod at once.

bwrap's outer process dies at once on SIGTERM instead of waiting for the
sandboxed command, so the runtime sends SIGTERM to the pod's other processes
only (see ``process.py``); bwrap then exits with the command's exit status
(128 + n when the command died of signal n).
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from shoal.errors import ShoalError

NETNS_DIR = Path("/run/netns")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SandboxUnavailableError(ShoalError):
    """Sandbox isolation was asked for but this machine cannot provide it."""

    code = "sandbox_unavailable"


def bwrap_path() -> str | None:
    """The bubblewrap executable, or None when it is not installed."""
    return shutil.which("bwrap")


def netns_name(network: str) -> str:
    """The ``ip netns`` name of a gang network (``shoal-`` + a safe form of ``network``)."""
    return "shoal-" + _UNSAFE.sub("_", network)


def network_exists(network: str) -> bool:
    return (NETNS_DIR / netns_name(network)).exists()


def create_network(network: str) -> str:
    """Create the gang network namespace with loopback up (idempotent); return its name."""
    name = netns_name(network)
    if not network_exists(network):
        _ip("netns", "add", name)
    _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
    return name


def delete_network(network: str) -> None:
    """Delete the gang network namespace; a missing one is fine."""
    if network_exists(network):
        _ip("netns", "delete", netns_name(network))


def _ip(*args: str) -> None:
    ip = shutil.which("ip")
    if ip is None:
        raise SandboxUnavailableError(
            "gang networks need the ip command", hint="install iproute2"
        )
    done = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SandboxUnavailableError(
            f"ip {' '.join(args)} failed: {done.stderr.strip() or done.returncode}",
            hint="network namespaces need root (CAP_SYS_ADMIN)",
        )


def sandbox_argv(
    command: Sequence[str],
    *,
    workdir: Path,
    hostname: str,
    writable: Sequence[Path] = (),
    jobs_root: Path | None = None,
    network: str | None = None,
    gpus: bool = False,
) -> list[str]:
    """The argv that runs ``command`` (already resolved) inside a sandbox."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailableError(
            "sandbox isolation needs bubblewrap", hint="apt-get install -y bubblewrap"
        )
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if gpus:
        # --dev gives a fresh /dev without GPUs; pods that were given some get the nodes back.
        for node in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", node, node]
    if jobs_root is not None:
        # Hide every tenant's workdir; the pod's own is bound back below.
        argv += ["--tmpfs", str(jobs_root)]
    for path in (workdir, *writable):
        argv += ["--bind", str(path), str(path)]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", hostname]
    if network is None:
        argv.append("--unshare-net")
    argv += ["--cap-drop", "ALL", "--chdir", str(workdir), "--", *command]
    if network is None:
        return argv
    if not network_exists(network):
        raise SandboxUnavailableError(
            f"network {network!r} does not exist", hint="create it with create_network()"
        )
    # ip execs bwrap in place (no fork), so the pod's PID stays the launcher's.
    ip = shutil.which("ip") or "ip"
    return [ip, "netns", "exec", netns_name(network), *argv]
