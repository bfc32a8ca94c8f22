"""Keep freed memory for reuse (glibc).

By default glibc hands every freed block above 128 KB straight back to the kernel, so each forward
pass over a large image faults in and zeroes gigabytes of fresh pages again: at 237x1820 that
halves the speed of legacy_xception on a CPU (bench/RESULTS.md). Keeping freed blocks in the heap
costs no more than the peak one batch needs, which the process reaches anyway.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
LARGEST = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask the C library to serve large blocks from the heap and not to return freed ones;
    False where it cannot (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST))
