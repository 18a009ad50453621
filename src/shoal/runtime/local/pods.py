"""What a pod runs with: its errors, environment, resolved command and exit status.

``PodSpec``, ``PodHandle`` and ``PodStatus`` are the control plane's records
(:mod:`shoal.control.records`), so that the control loop and this runtime share
one definition; :mod:`shoal.runtime.local.process` re-exports them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

from shoal.control.records import PodStatus
from shoal.errors import InputError
from shoal.runtime.local.gpus import gpu_env, memory_mib
from shoal.runtime.local.podspec import PodSpec

# The control plane's environment may hold credentials: pods inherit only these.
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ")


class PodStartError(InputError):
    """A pod cannot start because of what its spec asks for."""

    code = "pod_start_failed"


class CommandNotFoundError(PodStartError):
    """The pod's command is not an executable file (on PATH or at the given path)."""

    code = "command_not_found"


class WorkdirError(PodStartError):
    """The pod's workdir, log file or writable paths cannot be created."""

    code = "workdir_unavailable"


RUNNING = PodStatus("running", None, "running")


def exit_status(returncode: int, *, signal_codes: bool, oom_kills: int, memory_mib: int) -> PodStatus:
    """How a pod ended, from its main process's return code (Popen's: -n after signal n).

    ``signal_codes``: the main process is a launcher (bwrap, the shell that records
    the exit code) that reports its command's death by signal n as 128 + n.
    """
    if returncode == 0:
        return PodStatus("succeeded", 0, "exited with code 0")
    code = 128 - returncode if returncode < 0 else returncode
    if oom_kills:
        limit = f": memory limit {memory_mib}Mi" if memory_mib else ""
        return PodStatus("oom_killed", code, f"OOMKilled{limit}")
    signum = -returncode if returncode < 0 else (returncode - 128 if signal_codes else 0)
    if 0 < signum < signal.NSIG:
        return PodStatus("signalled", code, f"killed by signal {_signal_name(signum)}")
    return PodStatus("failed", code, f"exited with code {code}")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def pod_name(spec: PodSpec) -> str:
    """How messages name a pod: ``tenant/job-index``."""
    return f"{spec.tenant}/{spec.job}-{spec.index}"


def hostname(spec: PodSpec) -> str:
    """The sandbox's hostname: ``job-index`` as a valid DNS label."""
    label = re.sub(r"[^a-z0-9-]", "-", f"{spec.job}-{spec.index}".lower()).strip("-")
    return (label or "pod")[:63]


def environment(spec: PodSpec) -> dict[str, str]:
    """The pod's whole environment: a few host variables, Shoal's, the spec's, then GPUs."""
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}
    env |= {"PYTHONUNBUFFERED": "1", "SHOAL_JOB": spec.job, "SHOAL_TENANT": spec.tenant}
    env |= {"SHOAL_POD_INDEX": str(spec.index), **spec.env}
    # GPU variables come last: a pod must never reach GPUs it was not given.
    # The GPU's size only matters for a fraction without its own memory cap.
    total = memory_mib(spec.gpus[0]) if spec.gpus and spec.gpu_fraction and not spec.gpu_memory_mib else 0
    try:
        env |= gpu_env(spec.gpus, spec.gpu_fraction, spec.gpu_memory_mib, total)
    except ValueError as exc:
        raise PodStartError(f"pod {pod_name(spec)}: {exc}") from exc
    return env


def resolve_command(spec: PodSpec, env: dict[str, str]) -> str:
    """The absolute path of the pod's program, looked up on the pod's own PATH."""
    if not spec.command:
        raise CommandNotFoundError(f"pod {pod_name(spec)}: empty command")
    program = spec.command[0]
    if "/" in program:  # a path: a relative one is relative to the workdir, as in a shell there
        found = shutil.which(str(spec.workdir / program))
        hint = "check the path; it must be an executable file"
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        hint = "is it installed and on the pod's PATH?"
    if found is None:
        raise CommandNotFoundError(f"pod {pod_name(spec)}: command {program!r} not found", hint=hint)
    return str(Path(found).absolute())
