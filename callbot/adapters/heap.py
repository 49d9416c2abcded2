"""Hands freed heap memory back to the operating system when the last call has ended.

CPython and numpy return freed memory to the C allocator, and glibc's malloc keeps most of it:
after a burst of calls the server's RSS stayed well above its idle baseline although nothing
was leaked (the next burst reuses it; the figures: bench/README.md#code-figures).
`malloc_trim(0)` releases the free pages of every malloc arena, so RSS goes back down once the
server is idle. Where the C library has no `malloc_trim` (musl, macOS) only the garbage
collection runs.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger("callbot.heap")


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Collect garbage, then return free heap pages to the OS; True if the allocator could (glibc).

    Meant for an idle server (no call in progress), as it stops the event loop for a moment, the
    longer the more calls just ended (bench/README.md#code-figures). Nearly all of that is the
    collection of the cycles the calls left, which the collector would otherwise run in the
    middle of later calls; the trim itself is a small part."""
    started = time.perf_counter()
    gc.collect()  # the cycles a finished call left, before the pages they hold are trimmed
    if _MALLOC_TRIM is None:
        return False
    collected = time.perf_counter()
    released = _MALLOC_TRIM(0)
    log.debug(
        "idle: garbage collected in %.1f ms, heap trimmed (%s) in %.1f ms",
        (collected - started) * 1000,
        "pages released" if released else "nothing to release",
        (time.perf_counter() - collected) * 1000,
    )
    return True
