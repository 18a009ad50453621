"""Running the control loop in a test: a thread that ends with the block, and tenant clean-up."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.runtime.kubernetes.client import Kube
    from shoal.runtime.kubernetes.loop import KubeControl


@contextlib.contextmanager
def running(control: KubeControl, join_s: float = 60.0) -> Iterator[threading.Event]:
    """``control.run`` in a thread for the block; yields an event set after every pass."""
    stop, passed = threading.Event(), threading.Event()
    thread = threading.Thread(target=control.run, args=(stop,),
                              kwargs={"on_pass": passed.set}, daemon=True)
    thread.start()
    try:
        yield passed
    finally:
        stop.set()
        control.wake.set()
        thread.join(timeout=join_s)


def drop(kube: Kube, name: str) -> None:
    """The tenant's jobs let go (finalizers off), then the tenant and its namespace."""
    for job in kube.list("TrainingJob", name):
        meta = job["metadata"]
        with contextlib.suppress(Exception):
            kube.replace({**job, "metadata": {**meta, "finalizers": []}})
        kube.delete("TrainingJob", meta["name"], name)
    kube.delete("Tenant", name)
    kube.delete("Namespace", name)
