"""Waiting for objects to change, for ``shoal get -w`` on a cluster: watches, not polling.

``Changes(kube, kinds, namespace)`` lists each kind once, for the
resourceVersion to start from, then follows a watch per kind in a thread of
its own, resumed from the last resourceVersion it saw when the server ends
it (``WATCH_S``), and from a fresh listing after ``410 Gone``.  ``wait()``
returns once something changed since the last call (a burst is one
change); an error of a watch is raised there, in the caller's thread.  An
idle cluster costs the open watches and nothing else.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from shoal.runtime.kubernetes.client import Kube

WATCH_S = 300.0
"""How long the server keeps one watch open before it is resumed."""


class Changes:
    """Watches of ``kinds`` (in ``namespace``, or everywhere) started now."""

    def __init__(self, kube: Kube, kinds: Sequence[str], namespace: str | None) -> None:
        self.kube, self.namespace = kube, namespace
        self._woken: queue.Queue[Exception | None] = queue.Queue()
        self._stop = threading.Event()
        # Listed before the caller's first read: nothing after it is missed.
        marks = {kind: self._mark(kind) for kind in kinds}
        for kind, since in marks.items():
            threading.Thread(target=self._follow, args=(kind, since), daemon=True,
                             name=f"watch-{kind}").start()

    def wait(self) -> None:
        """Block until something changed since the last call; a watch's error is raised."""
        items = [self._woken.get()]
        while not self._woken.empty():
            items.append(self._woken.get_nowait())
        for item in items:
            if item is not None:
                raise item

    def close(self) -> None:
        """Stop following (the threads end with their watch, or with the process)."""
        self._stop.set()

    def _mark(self, kind: str) -> str:
        listing = self.kube.listing(kind, self.namespace)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _follow(self, kind: str, since: str) -> None:
        try:
            while not self._stop.is_set():
                for event, obj in self.kube.watch(kind, self.namespace, since=since,
                                                  timeout_s=WATCH_S, bookmarks=True):
                    if event == "ERROR":  # 410 Gone: too old to resume from; list again
                        since = self._mark(kind)
                        self._woken.put(None)
                        break
                    since = str((obj.get("metadata") or {}).get("resourceVersion", since))
                    if event != "BOOKMARK":
                        self._woken.put(None)
        except Exception as exc:  # handed to the caller's thread, which reports it
            self._woken.put(exc)
