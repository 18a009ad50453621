"""Sandboxed pods with bubblewrap (``bwrap``) and gang network namespaces.

A sandboxed pod gets:

- new PID, IPC and UTS namespaces: it sees only its own processes (its command
  is PID 2, bwrap's init is PID 1) and can signal nobody else;
- a read-only view of the host (``--ro-bind / /``), a minimal ``/dev`` (with a
  private ``/dev/shm``, 1777), its own
  ``/proc``, a private ``/tmp`` (mode 1777), an empty ``/sys/fs/cgroup`` (the tree names
  every tenant's pods); only its workdir and the ``writable`` paths
  (e.g. the checkpoint directory) are bound read-write;
- an empty tmpfs over the runtime's jobs root, with only its own workdir bound
  back, so that it cannot read other tenants' workdirs;
- read-only binds of what it needs to run where the two tmpfs would hide it:
  the program, its ``#!`` interpreters (and what ``#!/usr/bin/env NAME``
  finds on the pod's PATH), the virtual environment around either (the folder
  of the ``pyvenv.cfg`` next to or above its ``bin``) and the Python
  installation that the venv's ``home`` names or that an interpreter lives
  in (see :class:`Exposure`). Links on the way are recreated as links
  (``--symlink``), never followed into a bind: only real paths are bound.
  Nothing under the jobs root is bound but the pod's own folders, and what a
  link, script or ``pyvenv.cfg`` in the pod's own (tenant-writable) folders
  names is never bound: :class:`SandboxPathError` says what cannot be shown
  and why, instead of bwrap failing to exec it;
- no capabilities (``--cap-drop ALL``) even when Shoal runs as root, and
  the tenant's own unprivileged user (see ``users.py``): bubblewrap keeps
  only what ``setpriv`` needs to switch to it, and nothing is left to the
  command;
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

bwrap's outer process (its monitor) dies at once on SIGTERM instead of
waiting for the sandboxed command, so the runtime sends SIGTERM neither to it
nor to the pod's leader (the monitor itself, or the exit recorder that runs
it), only to the pod's other processes (see ``process.py``); bwrap then exits
with the command's exit status (128 + n when the command died of signal n).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from shoal.errors import ShoalError
from shoal.runtime.local.pods import PodStartError
from shoal.runtime.local.users import PodUser, drop_privileges, passable

NETNS_DIR = Path("/run/netns")
CGROUP_FS = "/sys/fs/cgroup"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_LINKS = 40  # the kernel's limit before ELOOP
_MAX_INTERPRETERS = 4  # the kernel's limit on nested #! interpreters
_SHEBANG_BYTES = 256  # how much of a script the kernel reads for its #! line
_CONFIG_BYTES = 65536  # a pyvenv.cfg is a few lines
# What setpriv needs, inside the sandbox, to become the pod's user and empty the
# bounding set; it leaves the command none of them.
_SWITCH_USER = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


class SandboxUnavailableError(ShoalError):
    """Sandbox isolation was asked for but this machine cannot provide it."""

    code = "sandbox_unavailable"


class SandboxPathError(PodStartError):
    """Something the pod needs to run cannot be shown inside its sandbox."""

    code = "sandbox_path_hidden"


def bwrap_path() -> str | None:
    """The bubblewrap executable, or None when it is not installed."""
    return shutil.which("bwrap")


def netns_name(network: str) -> str:
    """The ``ip netns`` name of a gang network: ``shoal-`` and a digest of ``network``
    (the job's key), which appears in process listings every user can read."""
    return "shoal-" + hashlib.sha256(network.encode()).hexdigest()[:16]


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
    search_path: str = os.defpath,
    user: PodUser | None = None,
    enter: Sequence[str] = (),
    readable: Sequence[Path] = (),
    shared: Sequence[Path] = (),
) -> list[str]:
    """The argv that runs ``command`` (its program already resolved) inside a sandbox.

    ``search_path`` is the pod's PATH, where ``#!/usr/bin/env NAME`` finds NAME.
    ``user``: who the command runs as; bubblewrap keeps just the capabilities
    that ``setpriv`` needs to switch to it, and ``setpriv`` drops them all.
    ``enter``: what runs the command once inside (and after the switch); it
    enters the working folder itself.
    ``readable``: what the pod reads besides its program (an inference replica's
    model file), shown read-only as the program is: only what it names is
    bound, never a whole hidden area nor anything in the jobs root.
    ``shared``: folders Shoal made inside the jobs root for another job of the
    same tenant (the checkpoint folder a replica's model is in), bound
    read-only as they are, and only when no link leads to them.
    :class:`SandboxPathError` when what the pod runs cannot be shown to it.
    """
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailableError(
            "sandbox isolation needs bubblewrap", hint="apt-get install -y bubblewrap"
        )
    exposure = Exposure(workdir, (workdir, *writable), jobs_root, search_path, user)
    exposure.program(Path(command[0]))
    for path in readable:
        exposure.show(path, "model", trusted=True)
    for path in shared:
        if _real(path) != path.absolute():
            raise SandboxPathError(f"model folder {path}: a link leads to it")
    # /dev/shm as on a host (1777): POSIX shared memory and semaphores, which
    # multiprocessing and PyTorch's data loaders need, work for the pod's user.
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--perms", "1777", "--tmpfs",
            "/dev/shm", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
    for folder in exposure.closed:
        argv += ["--tmpfs", str(folder)]  # e.g. /root, where the pod's Python may live
    if Path(CGROUP_FS).is_dir():
        # The cgroup tree names every pod on the machine (tenant and job).
        argv += ["--tmpfs", CGROUP_FS]
    if gpus:
        # --dev gives a fresh /dev without GPUs; pods that were given some get the nodes back.
        for node in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", node, node]
    # After the tmpfs on /tmp that would hide them; before the one on the jobs root,
    # which hides again whatever of it lies inside a bind.
    argv += exposure.argv()
    if jobs_root is not None:
        # Hide every tenant's workdir; the pod's own is bound back below.
        argv += ["--tmpfs", str(jobs_root)]
    for path in shared:
        argv += ["--ro-bind", str(path), str(path)]
    for path in (workdir, *writable):
        argv += ["--bind", str(path), str(path)]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", hostname]
    if network is None:
        argv.append("--unshare-net")
    # bwrap makes the missing parents of a mount point 0700 (root's): closed to the
    # pod's user. Make them first, passable: read-only views 0755, the jobs root 0711.
    argv = _passable_parents(argv, [(area, "0755") for area in exposure.hidden] + (
        [(jobs_root, "0711")] if jobs_root is not None else []))
    argv += ["--cap-drop", "ALL"]
    if user is None:
        argv += ["--chdir", str(workdir), "--", *enter, *command]
    else:
        # The workdir is the pod user's own (0700): only that user may enter it,
        # so it is entered after the switch (by ``enter``), not by bwrap.
        argv += [arg for cap in _SWITCH_USER for arg in ("--cap-add", cap)]
        argv += ["--chdir", "/", "--", *drop_privileges(user), *enter, *command]
    if network is None:
        return argv
    if not network_exists(network):
        raise SandboxUnavailableError(
            f"network {network!r} does not exist", hint="create it with create_network()"
        )
    # ip execs bwrap in place (no fork), so the pod's PID stays the launcher's.
    ip = shutil.which("ip") or "ip"
    return [ip, "netns", "exec", netns_name(network), *argv]


_MOUNTS = {"--bind": 2, "--ro-bind": 2, "--dev-bind": 2, "--symlink": 2, "--tmpfs": 1}
_FLAGS = {"--perms": 1, "--hostname": 1, "--dir": 1, "--dev": 1, "--proc": 1}


def _passable_parents(argv: list[str], areas: list[tuple[Path, str]]) -> list[str]:
    """``argv`` with ``--perms MODE --dir`` before each mount whose parents a tmpfs area lacks."""
    out, made, i = argv[:1], set(), 1
    while i < len(argv):
        option = argv[i]
        width = _MOUNTS.get(option, _FLAGS.get(option, 0))
        step = argv[i:i + 1 + width]
        if option in _MOUNTS:
            dest = Path(step[-1])
            for area, mode in areas:
                if dest != area and _under(dest, area):
                    for parent in reversed(dest.parents):
                        if parent != area and _under(parent, area) and parent not in made:
                            made.add(parent)
                            out += ["--perms", mode, "--dir", str(parent)]
            if option == "--tmpfs":
                made = {p for p in made if not _under(p, dest)}  # a new tmpfs hides them
        out += step
        i += 1 + width
    return out


class Exposure:
    """Plans what a sandbox must show of the hidden ``/tmp`` for a pod's program to run.

    bwrap mounts, in order: the host read-only, a tmpfs on /tmp, the binds and
    links planned here, a tmpfs on the jobs root, the pod's own folders
    read-write. A path is shown when the last of those covering it is not a
    tmpfs. Paths are planned by walking them one component at a time, as the
    kernel does: a link in a hidden place is recreated as a link (which shows
    nothing by itself) and only the real file or folder at the end is bound.

    The pod's own folders are the tenant's to write, so whatever is named by a
    link, a ``#!`` line or a ``pyvenv.cfg`` found there is *untrusted*: the pod
    sees it as the sandbox shows it anyway, and needing it bound is an error.
    """

    def __init__(self, workdir: Path, own: Sequence[Path], jobs_root: Path | None,
                 search_path: str, user: PodUser | None = None) -> None:
        self.workdir = workdir
        self.own = [_real(path) for path in own]
        self.jobs_root = None if jobs_root is None else _real(jobs_root)
        self.tmp = _real(Path("/tmp"))
        self.search_path = search_path
        self.user = user
        self.closed: list[Path] = []
        """Host folders closed to the pod's user (e.g. /root) on the way to what it runs:
        each becomes an empty tmpfs, like /tmp, and only what the pod needs is bound back."""
        self.binds: list[Path] = []
        self.links: dict[Path, str] = {}  # where -> what the link says

    @property
    def hidden(self) -> list[Path]:
        """The tmpfs areas that binds show parts of: /tmp and the closed folders."""
        return [self.tmp, *self.closed]

    def argv(self) -> list[str]:
        """bwrap's arguments for the planned binds (read-only) and links."""
        args: list[str] = []
        for path in self.binds:
            if not any(path != other and _under(path, other) for other in self.binds):
                args += ["--ro-bind", str(path), str(path)]
        for where, target in self.links.items():
            if not self._bound(where):  # a bind planned later shows it already
                args += ["--symlink", target, str(where)]
        return args

    def program(self, path: Path, what: str = "command", trusted: bool = True,
                depth: int = 0) -> None:
        """Show the program at ``path``, its virtual environment and its interpreters."""
        path = self.workdir / path  # relative to the pod's cwd, as the kernel does
        self._venv(path, trusted)
        real, trusted = self.show(path, what, trusted)
        if real.name.startswith("python") and real.parent.name == "bin":
            self._python(real.parent, trusted)  # a base interpreter needs its library
        interpreter = _shebang(real) if depth < _MAX_INTERPRETERS else None
        if interpreter is None:
            return
        program, argument = interpreter
        self.program(Path(program), "interpreter", trusted, depth + 1)
        if Path(program).name == "env" and argument:
            # #!/usr/bin/env NAME: env looks NAME up on the pod's PATH.
            names = [word for word in argument.split() if not word.startswith("-") and "=" not in word]
            found = shutil.which(names[0], path=self.search_path) if names else None
            if found is not None:
                self.program(Path(found).absolute(), "interpreter", trusted, depth + 1)

    def show(self, path: Path, what: str, trusted: bool) -> tuple[Path, bool]:
        """Make ``path`` resolve in the sandbox as on the host.

        Returns its real path, and whether what is read from it may name more
        to show: not when it lies in, or was reached through a link in, the
        pod's own folders.
        """
        path = self.workdir / path  # as the kernel does: relative to the pod's cwd
        current, pending, hops = Path("/"), list(path.parts[1:]), 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                current = current.parent  # of the real folder, as the kernel does
                continue
            step = current / part
            if not step.is_symlink():
                current = step
                if pending:
                    self._close_if_closed(current)
                continue
            hops += 1
            if hops > _MAX_LINKS:
                raise SandboxPathError(f"{what} {path}: too many levels of symbolic links")
            try:
                target = os.readlink(step)
            except OSError as exc:  # replaced meanwhile
                raise SandboxPathError(f"{what} {path}: cannot read the link {step}: {exc.strerror}") from exc
            if self._owned(step):
                trusted = False  # the tenant wrote this link; the pod sees it as it is
            elif not self._shown(step):
                self._check(step, path, what, trusted)
                self.links[step] = target
            parts = Path(target).parts
            if parts and parts[0] == "/":
                current, parts = Path("/"), parts[1:]
            pending[:0] = parts
        if os.path.lexists(current) and not self._shown(current):
            self._check(current, path, what, trusted)
            self.binds.append(current)
        return current, trusted and not self._owned(current)

    def _venv(self, program: Path, trusted: bool) -> None:
        """Show the virtual environment around ``program``, found as Python finds it."""
        for folder in (program.parent, program.parent.parent):
            if (folder / "pyvenv.cfg").is_file():
                real, trusted = self.show(folder, "virtual environment", trusted)
                home = _venv_home(real / "pyvenv.cfg")
                if home is not None:
                    self._python(home, trusted)
                return

    def _python(self, bin_dir: Path, trusted: bool) -> None:
        """Show the Python installation whose executables are in ``bin_dir``."""
        prefix = bin_dir.parent
        if any(prefix.glob("lib/python3*/os.py")):
            self.show(prefix, "Python installation", trusted)
        else:
            self.show(bin_dir, "Python installation", trusted)

    def _close_if_closed(self, folder: Path) -> None:
        """Hide ``folder`` behind a tmpfs when the pod's user may not pass through it."""
        if self.user is None or self._shown(folder) is False or self._owned(folder):
            return
        if any(_under(folder, area) for area in self.closed):
            return
        try:
            info = folder.stat()
        except OSError:
            return
        if stat.S_ISDIR(info.st_mode) and not passable(info, self.user):
            self.closed.append(folder)

    def _check(self, real: Path, path: Path, what: str, trusted: bool) -> None:
        """Refuse to bind (or link) ``real``, reached from ``path``, unless that is safe."""
        named = f"{what} {path}" + ("" if real == path else f" (at {real})")
        if self.jobs_root is not None and _under(real, self.jobs_root):
            raise SandboxPathError(
                f"{named} is inside {self.jobs_root}, which the sandbox hides but for the "
                "pod's own folders", hint="install it outside the control plane's state folder",
            )
        if not trusted:
            raise SandboxPathError(
                f"{named} is hidden by the sandbox, and was named by a file written in the "
                "pod's own folders: only what the sandbox shows anyway may be named there",
                hint="name it in the job's command, not through a link, script or pyvenv.cfg there",
            )
        if real in self.hidden:
            raise SandboxPathError(
                f"{named} would show all of {real} to the pod", hint="move it to a folder of its own"
            )

    def _owned(self, path: Path) -> bool:
        return any(_under(path, own) for own in self.own)

    def _bound(self, path: Path) -> bool:
        return any(_under(path, bind) for bind in self.binds)

    def _shown(self, path: Path) -> bool:
        """Whether the sandbox shows the host's ``path`` (the last mount covering it wins)."""
        if self._owned(path):
            return True
        if self.jobs_root is not None and _under(path, self.jobs_root):
            return False
        return not any(_under(path, area) for area in self.hidden) or self._bound(path)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _head(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file; None for anything else.

    Non-blocking and checked after opening: a FIFO named by a tenant must not
    hang the control plane.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # unreadable or gone: nothing to show
        return None
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _shebang(path: Path) -> tuple[str, str] | None:
    """A script's interpreter and its one optional argument, as the kernel splits them."""
    head = _head(path, _SHEBANG_BYTES)
    if head is None or not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    words = line.split(None, 1)  # the kernel splits at the first space or tab
    return (words[0], words[1] if len(words) > 1 else "") if words else None


def _venv_home(config: Path) -> Path | None:
    """The ``home`` (the base interpreter's folder) that a ``pyvenv.cfg`` names."""
    text = _head(config, _CONFIG_BYTES)
    for line in (text or b"").decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None
