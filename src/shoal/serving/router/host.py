"""An event loop in its own thread for the routers of a threaded control plane.

The embedded control plane runs its loop and its API in threads; routers are
asyncio.  ``RouterHost`` runs one loop in a daemon thread and starts and
stops routers on it from any thread; ``Router.update`` and ``Router.stats``
may then be called from the control plane's own threads, and ``on_cold``
runs on the host's thread (it must be thread-safe: setting an event, say).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from shoal.serving.router.router import Router

T = TypeVar("T")
TIMEOUT_S = 30.0


class RouterHost:
    """One event loop thread serving any number of routers."""

    def __init__(self, name: str = "shoal-routers") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = TIMEOUT_S) -> T:
        """Run ``coroutine`` on the host's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self, router: Router) -> str:
        """Start ``router`` on the host's loop; returns its URL."""
        self.call(router.start())
        return router.url

    def stop(self, router: Router) -> None:
        self.call(router.stop())

    def close(self) -> None:
        """Stop the loop and its thread (stop the routers first)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT_S)
        self._loop.close()
