"""GPU assignment through the environment: whole GPUs, fractions, NVML discovery."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from shoal.runtime.local.gpus import discover, gpu_env
from shoal.runtime.local.process import LocalProcesses, PodSpec, PodStartError, PodStatus

Spec = Callable[..., PodSpec]
Finish = Callable[..., PodStatus]


def test_no_gpu_means_an_empty_device_list() -> None:
    assert gpu_env(())["CUDA_VISIBLE_DEVICES"] == ""
    assert gpu_env((), fraction=0.5) == gpu_env(())


def test_whole_gpus() -> None:
    env = gpu_env((2, 5))
    assert env == {"CUDA_VISIBLE_DEVICES": "2,5", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_fraction_with_a_memory_cap() -> None:
    env = gpu_env((3,), fraction=0.25, memory_mib=20_000, total_memory_mib=80_000)
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    # MPS numbers devices after CUDA_VISIBLE_DEVICES: the pod's only GPU is 0.
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20000M"
    assert env["SHOAL_GPU_FRACTION"] == "0.25"
    assert env["SHOAL_GPU_MEMORY_FRACTION"] == "0.2500"


def test_fraction_without_known_memory() -> None:
    env = gpu_env((0,), fraction=0.5)
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in env, "no cap to pin without a size"
    assert env["SHOAL_GPU_MEMORY_FRACTION"] == "0.5000"
    half_of_known = gpu_env((0,), fraction=0.5, total_memory_mib=16_000)
    assert half_of_known["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8000M"


def test_pod_gets_its_gpu_environment(pods: LocalProcesses, spec: Spec, finish: Finish,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the host's must not leak through
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    pod = spec([sys.executable, "-c", code], gpus=(1,), gpu_fraction=0.5, gpu_memory_mib=8000,
               env={"CUDA_VISIBLE_DEVICES": "0"})
    assert finish(pods.start(pod)).state == "succeeded"
    env = json.loads(pod.log_path.read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "1", "the assignment wins over the spec's env"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8000M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"


def test_fraction_out_of_range_is_an_input_error(pods: LocalProcesses, spec: Spec) -> None:
    with pytest.raises(PodStartError, match="gpu_fraction must be in"):
        pods.start(spec(["true"], gpus=(0,), gpu_fraction=1.5))


def test_discover_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert discover() == []
