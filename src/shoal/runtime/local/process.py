"""The embedded runtime's pod launcher: every pod is a real local process.

Each pod runs in its own session and process group, with stdin from /dev/null,
stdout and stderr appended to its log file, and its own cgroup (``cgroups.py``)
when the machine allows it: a tiny ``sh`` launcher joins the cgroup and then
execs the rest, so the limits hold from its first instruction. The rest,
outermost first: the exit recorder (below) when the spec has an
``exit_file``; in a sandbox, bwrap (see ``sandbox.py``); the command. The
pod's PID is the outermost one's, which stays the same for the pod's life.

Exit status: only a parent can collect one. For the pods it started, this
runtime reaps them and reports ``succeeded``/``failed``/``signalled``/
``oom_killed`` with the exit code (128 + n after signal n). After a
control-plane restart it *adopts* its pods by PID and start time; they are no
longer its children, so when an adopted pod ends its exit code is gone (init
collected it). Hence the exit recorder: a small ``sh`` that runs the rest as
its child and writes the exit code to ``exit_file`` before it exits, outside
any sandbox, so sandboxed pods get it too and cannot write that file. An
adopted pod that ended is reported from that file, else ``oom_killed`` when
its cgroup counted an OOM kill, else ``lost``.

A pod ends with its main process: what it leaves behind in its process group
or cgroup is killed then, as Kubernetes does with a container's processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from shoal.control.records import PodStatus
from shoal.errors import InternalError
from shoal.runtime.local import sandbox
from shoal.runtime.local.cgroups import Cgroups, Limits, cgroup_name, join_then_exec
from shoal.runtime.local.discover import first_of, stdin_name
from shoal.runtime.local.listen import LISTEN_FD_ENV, bind_listener
from shoal.runtime.local.pods import (
    RUNNING,
    CommandNotFoundError,
    PodStartError,
    WorkdirError,
    environment,
    exit_status,
    hostname,
    pod_name,
    resolve_command,
)
from shoal.runtime.local.podspec import PodHandle, PodSpec
from shoal.runtime.local.procfs import children, group_members, in_group, read_stat, wait_exits
from shoal.runtime.local.users import drop_privileges, give, unreachable

__all__ = [
    "CommandNotFoundError",
    "LocalProcesses",
    "PodHandle",
    "PodSpec",
    "PodStartError",
    "PodStatus",
    "WorkdirError",
]

_log = logging.getLogger(__name__)
_SANDBOX_PIDS = 2  # bwrap's monitor and its PID-namespace init count against pids.max
_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT
_LOST = "exited while Shoal was not its parent (after a restart); exit code unknown"


# Runs the command as a child and writes its exit code to a file, so that a
# control plane restarted after the pod ended still knows how it ended.  The
# group's SIGTERM reaches the command directly; the shell only waits it out.
# In a sandbox it runs bwrap (outside it, so that the pod cannot write the file),
# and what it records is bwrap's status: the command's, 128 + n after signal n.
# Only built-ins after the first fork: a pod that used up its pids.max must not
# keep its exit code from being written. The command gets the recorder's stdin
# (a background job would get /dev/null).
_RECORD_EXIT = """: > "$SHOAL_EXIT_FILE.started" || exit 125
exec 3<&0 0</dev/null
"$@" <&3 3<&- &
child=$!
exec 3<&-
trap : TERM INT HUP
while :; do
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "$code" > "$SHOAL_EXIT_FILE"
exit "$code"
"""
# The last step before the command, already as the pod's user (inside any sandbox):
# take the pod's environment and working folder from stdin, give the command
# /dev/null instead, and become the command.
_ENTER = '. /dev/stdin || exit 125; exec "$@" </dev/null'
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _environment_script(env: dict[str, str], workdir: Path) -> bytes:
    """``sh`` text that enters ``workdir`` and exports exactly ``env`` (values quoted)."""
    lines = ["unset SHOAL_EXIT_FILE", f"cd -- {_quote(str(workdir))} || exit 125"]
    lines += [f"export {name}={_quote(value)}" for name, value in sorted(env.items())]
    return ("\n".join(lines) + "\n").encode()


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _anonymous(content: bytes, name: str) -> int:
    """An in-memory file holding ``content``, open for reading from its start."""
    fd = os.memfd_create(name)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def started_marker(exit_file: Path) -> Path:
    """The file the exit recorder creates before it runs the command."""
    return exit_file.with_name(exit_file.name + ".started")


def _signal_codes(spec: PodSpec) -> bool:
    """Whether the pod's main process reports its command's death by signal n as 128 + n."""
    return spec.isolation == "sandbox" or spec.exit_file is not None  # bwrap, the sh recorder


def _recorded_exit(path: Path | None) -> int | None:
    try:
        return int(path.read_text().strip()) if path is not None else None
    except (OSError, ValueError):
        return None


class LocalProcesses:
    """Starts, watches, stops and re-adopts pods as local processes."""

    def __init__(
        self,
        root_cgroup: str = "shoal",
        warn: Callable[[str], None] = _log.warning,
        jobs_root: Path | None = None,
        private_root: bool = False,
    ) -> None:
        self.cgroups = Cgroups(root_cgroup)  # detected once, here
        if private_root:  # pods run as other users: they must not list the tree
            self.cgroups.hide_root()
        self.jobs_root = jobs_root  # hidden from sandboxed pods but for their own workdir
        self._root = root_cgroup
        self._warn, self._warned = warn, False
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._killed: dict[int, PodHandle] = {}  # children to reap even if nobody polls them
        self._final: dict[tuple[int, int], PodStatus] = {}
        self._unremoved: set[str] = set()  # cgroups whose killed processes were still exiting

    def start(self, spec: PodSpec) -> PodHandle:
        """Start the pod; :class:`PodStartError` (an InputError) when its spec cannot run."""
        self._collect()
        env = environment(spec)
        listener = bind_listener(spec.listen) if spec.listen is not None else None
        try:
            if listener is not None:
                env[LISTEN_FD_ENV] = str(listener)
            return self._start(spec, env, listener)
        finally:
            if listener is not None:
                os.close(listener)  # the pod holds it now (or it failed to start)

    def _start(self, spec: PodSpec, env: dict[str, str], listener: int | None) -> PodHandle:
        if spec.user is not None:
            env["HOME"] = str(spec.workdir)  # the plane's HOME is not the pod's to read
        argv = [resolve_command(spec, env), *spec.command[1:]]
        self._make_folders(spec)
        if spec.user is not None:
            self._hand_over(spec, argv[0])
        # The job's environment is the job's to choose (LD_PRELOAD included): it must
        # never reach what runs as root before privileges are dropped (the shells
        # below, setpriv, ip, bwrap). They run with a fixed environment; the job's
        # travels on stdin, an anonymous file that the last step, already the pod's
        # user, reads (``_ENTER``). The exit file's path (tenant and job names) stays
        # out of the long-lived recorder's argv, which every user may read.
        # Its name finds the pod's first process after a crash (``discover``).
        script = _anonymous(_environment_script(env, spec.workdir),
                            stdin_name(env.get("SHOAL_POD_UID", "")))
        root_env = {"PATH": _ROOT_PATH, "SHOAL_POD_UID": env.get("SHOAL_POD_UID", "")}
        enter = ["/bin/sh", "-c", _ENTER, "shoal-pod"]
        if spec.isolation == "sandbox":
            argv = self._sandboxed(spec, argv, env, enter)
        else:
            argv = [*(drop_privileges(spec.user) if spec.user else []), *enter, *argv]
        if spec.exit_file is not None:
            # Outside any sandbox and before privileges are dropped: the pod gets
            # no write access to it.
            root_env["SHOAL_EXIT_FILE"] = str(spec.exit_file)
            argv = ["/bin/sh", "-c", _RECORD_EXIT, "shoal-pod", *argv]
        cgroup = self._cgroup_for(spec)
        if cgroup is not None:
            try:
                argv = join_then_exec(self.cgroups.create(cgroup, self._limits(spec)), argv)
            except OSError as exc:
                self._release(cgroup)
                raise InternalError(f"pod {pod_name(spec)}: cannot set up cgroup {cgroup}: {exc}") from exc
        try:
            log = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            self._release(cgroup)
            raise WorkdirError(f"pod {pod_name(spec)}: cannot open {spec.log_path}: {exc.strerror}") from exc
        try:
            # umask 077: what a pod writes in shared places (/tmp, /dev/shm at the
            # process level) is its own unless it says otherwise.
            child = subprocess.Popen(
                argv, stdin=script, stdout=log, stderr=subprocess.STDOUT,
                cwd="/" if spec.user is not None else spec.workdir, env=root_env,
                start_new_session=True, umask=0o077,
                pass_fds=() if listener is None else (listener,),
            )
        except OSError as exc:
            self._release(cgroup)
            raise PodStartError(f"pod {pod_name(spec)}: cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(log)
            os.close(script)
        stat = read_stat(child.pid)  # an unreaped child is always in /proc
        assert stat is not None
        self._children[child.pid] = child
        return PodHandle(child.pid, stat.start_ticks, cgroup, spec)

    def _sandboxed(self, spec: PodSpec, argv: list[str], env: dict[str, str],
                   enter: list[str]) -> list[str]:
        try:
            return sandbox.sandbox_argv(
                argv, workdir=spec.workdir, hostname=hostname(spec), writable=spec.writable,
                jobs_root=self.jobs_root, network=spec.network, gpus=bool(spec.gpus),
                search_path=env.get("PATH", os.defpath), user=spec.user, enter=enter,
                readable=spec.readable, shared=spec.shared,
            )
        except sandbox.SandboxPathError as exc:
            raise sandbox.SandboxPathError(f"pod {pod_name(spec)}: {exc.message}", hint=exc.hint) from None

    def _make_folders(self, spec: PodSpec) -> None:
        """Create the pod's folders that Shoal owns; a job's own ``workingDir`` must exist
        (root creates nothing where a tenant points it)."""
        records = () if spec.exit_file is None else (spec.exit_file.parent,)
        own = spec.own if spec.user is not None else (spec.workdir, *spec.writable)
        for path in (*own, spec.log_path.parent, *records):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkdirError(f"pod {pod_name(spec)}: cannot create {path}: {exc.strerror}") from exc
        if not spec.workdir.is_dir():
            raise WorkdirError(f"pod {pod_name(spec)}: its working folder {spec.workdir} is gone")

    def _hand_over(self, spec: PodSpec, program: str) -> None:
        """Give the pod's own folders to its user; check it can reach what it runs."""
        assert spec.user is not None
        for log_dir in {spec.log_path.parent} | ({spec.exit_file.parent} if spec.exit_file else set()):
            log_dir.chmod(0o700)  # logs and exit codes are the plane's: the pod writes through an fd
        for path in spec.own:
            try:
                give(path, spec.user)
            except OSError as exc:
                raise WorkdirError(
                    f"pod {pod_name(spec)}: cannot hand {path} to uid {spec.user.uid}: {exc.strerror}"
                ) from exc
        for what, path in (("working folder", spec.workdir), ("program", Path(program))):
            if what == "working folder" and path in spec.own:
                continue
            problem = unreachable(path, spec.user, sandboxed=spec.isolation == "sandbox")
            if problem is not None:
                raise WorkdirError(
                    f"pod {pod_name(spec)} runs as uid {spec.user.uid} (tenant "
                    f"{spec.tenant}), which cannot reach its {what} {path}: {problem}",
                    hint="put it where other users may read it, or run the control plane "
                    "with --pod-user self (pods then run as the plane's user)",
                )

    def poll(self, handle: PodHandle) -> PodStatus:
        """Where the pod stands, without blocking; reaps it once it has ended."""
        self._collect()
        final = self._final.get((handle.pid, handle.start_ticks))
        if final is not None:
            return final
        if handle.pid in self._children:
            return self._poll_child(handle)
        stat = read_stat(handle.pid)
        if stat is not None and stat.start_ticks == handle.start_ticks and not stat.exited:
            return RUNNING
        # Adopted, so not our child: its exit code went to its new parent,
        # unless the pod's wrapper wrote it down.
        self._signal(handle, signal.SIGKILL)
        recorded = _recorded_exit(handle.spec.exit_file)
        if recorded is not None:
            return self._ended(handle, exit_status(
                recorded, signal_codes=True, oom_kills=self._oom_kills(handle),
                memory_mib=handle.spec.memory_mib,
            ))
        if self._oom_kills(handle):
            limit = handle.spec.memory_mib
            return self._ended(handle, PodStatus("oom_killed", None, f"OOMKilled: memory limit {limit}Mi"))
        return self._ended(handle, PodStatus("lost", None, _LOST))

    def _poll_child(self, handle: PodHandle) -> PodStatus:
        child = self._children[handle.pid]
        try:
            # WNOWAIT: look without reaping, so that the PID (and the process group
            # named after it) cannot be reused while the stragglers are killed.
            if os.waitid(os.P_PID, handle.pid, _PEEK) is None:
                return RUNNING
        except ChildProcessError:  # reaped behind our back (SIGCHLD ignored)
            del self._children[handle.pid]
            return self._ended(handle, PodStatus("lost", None, "reaped elsewhere; exit code unknown"))
        self._signal(handle, signal.SIGKILL)
        status = exit_status(
            child.wait(), signal_codes=_signal_codes(handle.spec),
            oom_kills=self._oom_kills(handle), memory_mib=handle.spec.memory_mib,
        )
        del self._children[handle.pid]
        self._killed.pop(handle.pid, None)
        return self._ended(handle, status)

    def _ended(self, handle: PodHandle, status: PodStatus) -> PodStatus:
        self._final[(handle.pid, handle.start_ticks)] = status
        self._release(handle.cgroup)
        return status

    def terminate(self, handle: PodHandle, grace_s: float) -> None:
        """Send SIGTERM now; the caller calls :meth:`kill` if it still runs after ``grace_s``."""
        del grace_s  # the caller owns the clock; every runtime takes the same arguments
        # bwrap's monitor would die at once on SIGTERM, and the pod would look gone while
        # its command still shuts down: spare it (the leader, or the exit recorder's
        # child), it exits after the command.
        self._signal(handle, signal.SIGTERM, spare_launcher=handle.spec.isolation == "sandbox")

    def kill(self, handle: PodHandle) -> None:
        """SIGKILL every process of the pod; its cgroup goes as soon as they are gone."""
        self._signal(handle, signal.SIGKILL)
        if handle.pid in self._children:
            self._killed[handle.pid] = handle
        self._release(handle.cgroup)

    def forget(self, handle: PodHandle) -> None:
        """Drop what is kept of an ended pod, once its job no longer asks."""
        self._final.pop((handle.pid, handle.start_ticks), None)

    def adopt(self, pid: int, start_ticks: int, spec: PodSpec, cgroup: str | None) -> PodHandle | None:
        """Take back a pod after a restart: ours iff the PID still has the recorded start time."""
        stat = read_stat(pid)
        if stat is None or stat.start_ticks != start_ticks or stat.exited:
            return None
        return PodHandle(pid, start_ticks, cgroup, spec)

    def wait_any(self, handles: Sequence[PodHandle], timeout_s: float | None) -> list[PodHandle]:
        """Block until one of ``handles`` ends or ``timeout_s`` passes; return the ended ones.

        It wakes at the exit itself (pidfds, no sleeping); :meth:`poll` gives the status.
        """
        done = [h for h in handles if (h.pid, h.start_ticks) in self._final]
        if done:
            return done
        return [handles[i] for i in wait_exits([(h.pid, h.start_ticks) for h in handles], timeout_s)]

    def _signal(self, handle: PodHandle, sig: signal.Signals, *, spare_launcher: bool = False) -> None:
        """Signal the pod's process group and every process in its cgroup, once each.

        ``spare_launcher``: not the group's leader nor the leader's children (in a
        sandbox, bwrap's monitor is one of them: the leader, or the child of the
        exit recorder that leads the group).
        """
        if (handle.pid, handle.start_ticks) in self._final:
            return
        # The group is named after the leader's PID: use it only while that PID is
        # provably ours (an unreaped child, or the same start time) or used by nobody.
        stat = read_stat(handle.pid)
        owned = handle.pid in self._children or stat is None or stat.start_ticks == handle.start_ticks
        targets, spared = set(), set()
        if owned and spare_launcher:
            targets = group_members(handle.pid)
            spared = {handle.pid} | children(handle.pid, targets)
        elif owned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, sig)
        if handle.cgroup is not None and self.cgroups.available:
            # Those that left the group (setsid), not the others again: a second SIGTERM
            # may land after Python restored SIG_DFL on its way out. A PID reused between
            # reading and killing is the race left (v1 has no atomic cgroup kill).
            members = self.cgroups.pids(handle.cgroup)
            targets |= {p for p in members if not (owned and in_group(p, handle.pid))}
        for pid in targets - spared:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def cgroup_of(self, spec: PodSpec) -> str | None:
        """The pod's cgroup (None where cgroups are not used): a function of the spec alone,
        so that a pod started by a control plane that died before recording it is found."""
        if not self.cgroups.available:
            return None
        # Tenant and pod id in the name: job names may repeat across tenants,
        # and a retry must not collide with a previous attempt still exiting.
        uid = spec.env.get("SHOAL_POD_UID", "")[:8]
        owner = "-".join(part for part in (spec.tenant, spec.job, uid) if part)
        return cgroup_name(self._root, owner, spec.index)

    def first_member(self, spec: PodSpec) -> tuple[int, int] | None:
        """``(pid, start ticks)`` of the first process in the pod's cgroup, or None: the
        pod's first process joins it before it runs anything else, so a pod whose
        process is in the middle of an ``execve`` is found here."""
        cgroup = self.cgroup_of(spec)
        return None if cgroup is None else first_of(self.cgroups.pids(cgroup))

    def never_watched(self, spec: PodSpec) -> PodStatus:
        """How a pod that no process carries and no handle names ended, or ``absent``.

        The control plane died between recording the pod and recording its
        process: the exit recorder's files say whether it started and how it
        ended (its cgroup is removed either way).
        """
        self._release(self.cgroup_of(spec))
        recorded = _recorded_exit(spec.exit_file)
        if recorded is not None:
            return exit_status(recorded, signal_codes=True, oom_kills=0,
                               memory_mib=spec.memory_mib)
        if spec.exit_file is not None and not started_marker(spec.exit_file).exists():
            return PodStatus("absent", None, "never started")
        return PodStatus("lost", None, _LOST)

    def _cgroup_for(self, spec: PodSpec) -> str | None:
        limited = bool(spec.cpu_milli or spec.memory_mib or spec.pids_limit)
        if self.cgroups.problem and limited and not self._warned:
            self._warned = True
            self._warn(f"shoal: {self.cgroups.problem}; pod CPU, memory and PID limits are not enforced")
        cgroup = self.cgroup_of(spec)
        if cgroup is None:
            return None
        if self.cgroups.pids(cgroup):
            raise PodStartError(f"pod {pod_name(spec)} is already running (cgroup {cgroup} is in use)")
        return cgroup

    def _limits(self, spec: PodSpec) -> Limits:
        # The launcher's own processes do not count against the pod's PID limit.
        extra = (_SANDBOX_PIDS if spec.isolation == "sandbox" else 0) + int(spec.exit_file is not None)
        return Limits(spec.cpu_milli, spec.memory_mib, spec.pids_limit + extra if spec.pids_limit else 0)

    def _oom_kills(self, handle: PodHandle) -> int:
        if handle.cgroup is None or not self.cgroups.available:
            return 0
        return self.cgroups.oom_kills(handle.cgroup)

    def _release(self, cgroup: str | None) -> None:
        if cgroup is not None and self.cgroups.available and not self.cgroups.remove(cgroup):
            self._unremoved.add(cgroup)

    def _collect(self) -> None:
        """Reap killed children and remove cgroups whose processes had not yet exited."""
        for pid, handle in list(self._killed.items()):
            if pid in self._children:
                self._poll_child(handle)
        self._unremoved = {cg for cg in self._unremoved if not self.cgroups.remove(cg)}
