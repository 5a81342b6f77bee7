"""Keep the whole-slide engine's peak RSS down: give freed heap memory back to the OS.

The network export copies the weights several times, and each region allocates and frees a few
hundred MB of map arrays. glibc's malloc raises its mmap threshold after large frees (up to
32 MB), so later arrays of that size come from the heap, which keeps the freed pages until it
is trimmed. ``malloc_trim`` after the compile and after each region returns them (measured on
the shipped model, 2-core CPU: -170 MB after the compile). A lower fixed mmap threshold
(``mallopt``) saved more memory but halved PyTorch's CPU speed (every activation became a
fresh mapping), so it is not used. Other C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc); False where the C library has no ``malloc_trim``."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
