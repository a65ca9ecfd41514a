"""Memory a long run frees goes back to the operating system, so a process's size stays flat however many rows
it scores. The engine applies this policy (after every micro-batch and every call); scorers need not."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# Freed memory the process may hold before the engine hands it back within a call: freed blocks fragment the heap,
# so, unreturned, a batch's peak climbs over a long run. bench: python bench/bench_scale.py --layers 2
FREED_MEMORY_SLACK = 256 * 2**20

# Kernels oneDNN (the CPU's matrix products) keeps, one per matrix shape (~0.6 MB each; its default is 1,024):
# micro-batches bring new shapes all through a run, and 256 still holds every kernel a micro-batch reuses.
# bench: python bench/bench_scale.py --layers 2
ONEDNN_CACHE_CAPACITY = 256


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``); 0 where there is no ``/proc``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_resident_after_release = 0  # resident bytes right after the last hand-back (the heap is the process's, so is this)


def release_freed_memory(if_grown_by: int = 0) -> bool:
    """Hand memory that scoring freed back to the operating system; True if some was returned.

    glibc's allocator keeps freed blocks of every size a run allocates (each micro-batch has its own tensor
    shapes), so without this the resident size of a long run climbs with the rows scored; it takes milliseconds.
    With ``if_grown_by``, it does so only once the process has grown that many bytes since the last hand-back,
    at the cost of reading ``/proc``."""
    global _resident_after_release
    trim = _malloc_trim()
    if trim is None or (if_grown_by and resident_bytes() < _resident_after_release + if_grown_by):
        return False
    released = bool(trim(0))
    _resident_after_release = resident_bytes()
    return released


def bound_onednn_cache() -> None:
    """Caps oneDNN's kernel cache at :data:`ONEDNN_CACHE_CAPACITY` unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``. oneDNN reads it when it first runs, so the engine calls this before its
    first pass."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))
