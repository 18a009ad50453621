"""This machine as a node: CPUs, memory and the GPUs NVML can see.

Used when the control plane starts with no node registered, so that a fresh
``shoal server`` can run jobs at once.  Without NVML (no GPU, or no driver)
the node has no GPUs; declare virtual ones with a NodePool to exercise GPU
scheduling on a machine without any.
"""

from __future__ import annotations

import os
import re
from typing import Any

from shoal.runtime.local.gpus import discover

LOCAL_NODE = "local"


def _memory_mib() -> int:
    try:
        with open("/proc/meminfo") as handle:
            match = re.search(r"MemTotal:\s+(\d+) kB", handle.read())
    except OSError:
        return 1024
    return int(match.group(1)) // 1024 if match else 1024


def local_node_spec() -> dict[str, Any]:
    """A NodePool spec (JSON form) describing this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec: dict[str, Any] = {"count": 1, "cpu": f"{(cpus or 1) * 1000}m",
                            "memory": f"{_memory_mib()}Mi"}
    gpus = discover()
    if gpus:
        # One model per node: NVML names like "NVIDIA H100 80GB HBM3" become "H100".
        model = _model(gpus[0].name)
        spec["gpus"] = {"model": model, "count": len(gpus),
                        "memory": f"{min(g.memory_mib for g in gpus)}Mi"}
    return spec


def _model(name: str) -> str:
    words = [w for w in re.split(r"[\s_-]+", name) if w and w.upper() not in ("NVIDIA", "TESLA")]
    return words[0] if words else "gpu"
