"""glibc's allocator tuned for a process that allocates and frees tensor-sized buffers all the time (issue 18).

By default glibc gives a freed block of more than ~128 KB–32 MB (its threshold moves) back to the kernel at once
(``munmap``, or trimming the top of the heap past twice that threshold), and the next tensor of that size is
mapped again and page-faulted in, zeroed page by page: a feature-extraction job spent ~7 of its ~25 CPU-s in the
kernel doing this. With the mmap threshold at glibc's maximum (32 MB on 64-bit) and the trim threshold at 1 GB,
freed buffers stay in the process and are reused: that job spends ~3 CPU-s in the kernel and its outputs are the
same bytes (only where memory comes from changes; every tensor keeps torch's 64-byte alignment). Peak memory is
unchanged; up to 1 GB that was in use may stay mapped after it is freed.

``tune()`` does nothing where the C library is not glibc, or where the user set either setting already
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``): that
is also how to opt out, e.g. ``MALLOC_TRIM_THRESHOLD_=131072``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024**3
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def tune() -> bool:
    """Set both thresholds in this process (``mallopt``) and in the environment of the processes it starts (loader
    workers, renderers); True when set."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ENV):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False  # a C library whose mallopt takes neither (musl's does nothing)
    os.environ.update(ENV)
    return True
