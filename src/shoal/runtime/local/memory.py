"""Keep the control plane's memory from creeping up under big requests.

glibc gives each thread that allocates its own malloc arena (up to eight per
core) and keeps freed memory in them. The API answers on a pool of worker
threads, so after a few multi-megabyte requests (a 30 MiB apply body, a big
log page) the server holds on to hundreds of MiB it no longer uses. Two
arenas and a fixed threshold for mapping big blocks bound that, and
``malloc_trim`` gives back what is free now and then.
Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

_M_ARENA_MAX = -8  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_FROM = 256 * 1024
_log = logging.getLogger(__name__)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas(count: int = 2) -> None:
    """Use at most ``count`` malloc arenas (call before threads are started), and map
    every block of 256 KiB or more on its own, so that freeing it returns it.

    (glibc otherwise raises that threshold after the first big block is freed,
    and later big request bodies fragment the heap for good.)
    """
    if _LIBC is None:
        return
    if not _LIBC.mallopt(_M_ARENA_MAX, count) or not _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM):
        _log.debug("mallopt refused")


def give_back() -> None:
    """Return the free memory at the top of every arena to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
