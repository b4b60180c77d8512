"""Handing freed memory back to the system between the large steps of a phase.

Arrow's memory pool (mimalloc) and glibc's heaps keep what a step has freed, for the next allocation. In a
phase whose peak is an in-memory index plus what the steps around it use, that kept memory counts toward the
peak as if still in use: after a 20,000-chunk load of 1,536-d vectors glibc kept 376 MB (the reader thread's
heap, Chroma's batches) and phase 03's verification then peaked 350 MB higher than it did once that was
returned. ``release`` returns it; it costs milliseconds, so it runs between shards and steps, not per record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

_libc = None


def _trim() -> bool:
    """glibc's ``malloc_trim(0)``: return the free memory of every heap (False where there is no glibc)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # musl and others have no malloc_trim
            _libc = False
    return bool(_libc) and bool(_libc.malloc_trim(0))


def release() -> None:
    """Collect Python's garbage, and return what Arrow's pool and the C heaps hold unused to the system."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):  # pyarrow < 9 has no release_unused
        pass
    _trim()
