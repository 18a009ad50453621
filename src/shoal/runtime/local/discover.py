"""Find a pod's process by the unique id in its environment.

Used after a control-plane crash between "pod marked starting" and "pid
recorded": the process may or may not exist, and only its environment can
tell.  Returns ``(pid, start_ticks)`` so the pod can be adopted, never
started a second time.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")


def find_pod(uid: str) -> tuple[int, int] | None:
    needle = f"SHOAL_POD_UID={uid}".encode()
    with os.scandir(_PROC) as entries:  # closed even when it returns early
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                environ = (_PROC / entry.name / "environ").read_bytes()
                if needle not in environ.split(b"\0"):
                    continue
                stat = (_PROC / entry.name / "stat").read_text()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            # Field 22 (start time) follows the parenthesised command name.
            fields = stat[stat.rfind(")") + 2 :].split()
            return int(entry.name), int(fields[19])
    return None
