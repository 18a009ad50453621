"""GPUs of the local machine: discovery through NVML and the environment that shares them.

Whole GPUs are handed out with ``CUDA_VISIBLE_DEVICES`` (physical indices, in
PCI bus order, as ``nvidia-smi`` numbers them). A pod without GPUs gets
``CUDA_VISIBLE_DEVICES=""`` so that it cannot use one by accident.

A *fraction* of one GPU is enforced by CUDA MPS when the node runs the MPS
control daemon (``nvidia-cuda-mps-control -d``):

- ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` = fraction x 100 caps the share of the
  GPU's streaming multiprocessors the pod's kernels may occupy;
- ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` = ``"0=<N>M"`` caps the device memory the
  pod may allocate. MPS reads the ordinal as the *client* sees it, after
  ``CUDA_VISIBLE_DEVICES`` has renumbered the devices, so the pod's single GPU
  is always ``0`` there, whatever its physical index.

Without the MPS daemon CUDA ignores both variables, so Shoal also sets
``SHOAL_GPU_FRACTION`` and ``SHOAL_GPU_MEMORY_FRACTION`` (the share of the
GPU's memory, 0-1) for cooperative pods, which call
``torch.cuda.set_per_process_memory_fraction(float(os.environ["SHOAL_GPU_MEMORY_FRACTION"]))``
so that PyTorch's caching allocator stays within the share.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML reports it."""

    index: int
    uuid: str
    name: str
    memory_mib: int


def discover() -> list[GpuInfo]:
    """The machine's GPUs through NVML (``nvidia-ml-py``); [] without the library or a driver."""
    try:
        import pynvml  # optional (nvidia-ml-py): only GPU nodes need it
    except ImportError:
        return []
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without GPUs
        return []
    try:
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            device = nvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                GpuInfo(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(device)),
                    name=_text(nvml.nvmlDeviceGetName(device)),
                    memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(device).total) // (1024 * 1024),
                )
            )
        return found
    finally:
        nvml.nvmlShutdown()


@functools.cache
def memory_mib(index: int) -> int:
    """The memory of physical GPU ``index`` (0 when unknown); NVML is asked once."""
    return next((gpu.memory_mib for gpu in discover() if gpu.index == index), 0)


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def gpu_env(
    gpus: Sequence[int],
    fraction: float | None = None,
    memory_mib: int = 0,
    total_memory_mib: int = 0,
) -> dict[str, str]:
    """Environment variables that give a pod ``gpus`` or a ``fraction`` of one.

    ``memory_mib`` is the pod's GPU memory cap; without it the cap is
    ``fraction`` of ``total_memory_mib`` (the GPU's memory, when known).
    """
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
        # Match nvidia-smi's numbering; CUDA's default "fastest first" order would not.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if fraction is None or not gpus:
        return env
    if not 0 < fraction <= 1:
        raise ValueError(f"gpu_fraction must be in (0, 1], got {fraction}")
    cap = memory_mib or (math.floor(fraction * total_memory_mib) if total_memory_mib else 0)
    env["SHOAL_GPU_FRACTION"] = f"{fraction:g}"
    env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, round(fraction * 100)))
    if cap:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={cap}M"
    share = cap / total_memory_mib if cap and total_memory_mib else fraction
    env["SHOAL_GPU_MEMORY_FRACTION"] = f"{min(share, 1.0):.4f}"
    return env
