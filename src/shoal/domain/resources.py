"""Resource names and exact integer arithmetic on resource vectors.

A resource vector maps a resource name to an integer amount: ``cpu`` in
millicores, ``memory`` in MiB, ``gpu/<model>`` in milli-GPUs, so half a
GPU is 500 and nothing is ever rounded, and ``pods`` in pods (every pod
counts one, for pod quotas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CPU = "cpu"
MEMORY = "memory"
PODS = "pods"
GPU_PREFIX = "gpu/"
MILLI = 1000

Vector = Mapping[str, int]


def gpu_resource(model: str) -> str:
    return f"{GPU_PREFIX}{model}"


def is_gpu(resource: str) -> bool:
    return resource.startswith(GPU_PREFIX)


def gpu_model(resource: str) -> str:
    return resource[len(GPU_PREFIX) :]


def add(a: Vector, b: Vector) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


def sub(a: Vector, b: Vector) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) - value
    return out


def total(vectors: Iterable[Vector]) -> dict[str, int]:
    out: dict[str, int] = {}
    for vector in vectors:
        for key, value in vector.items():
            out[key] = out.get(key, 0) + value
    return out


def scale(a: Vector, factor: int) -> dict[str, int]:
    return {key: value * factor for key, value in a.items()}


def fits(request: Vector, free: Vector) -> bool:
    return all(free.get(key, 0) >= value for key, value in request.items() if value > 0)


def describe(vector: Vector) -> str:
    """Human form: ``cpu=4 memory=16Gi gpu/A100=1.5``."""
    parts = []
    for key, value in sorted(vector.items()):
        if key == CPU:
            parts.append(f"cpu={value / 1000:g}")
        elif key == MEMORY:
            parts.append(f"memory={value / 1024:g}Gi")
        elif is_gpu(key):
            parts.append(f"{key}={value / MILLI:g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
