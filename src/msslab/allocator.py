"""Keep freed memory in the process instead of handing it back to the kernel (glibc's malloc).

glibc serves every allocation of 32 MB or more (less, before its adaptive threshold has
grown) with a fresh ``mmap`` and unmaps it on ``free``, so a training step that makes and
drops the same large tensors each time (the sources' STFT frames and spectrograms of a
44.1 kHz batch: 34 MB each at ``experiment=fullband``) pays the kernel's page faults and
zeroing for all of them again on every step, in system time that the CPU clock counts.
Raising the mmap and trim thresholds keeps such blocks on the heap for the next step:
the resident size stays at the peak instead of falling back between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # blocks larger than this (1 GiB) are still mmapped and unmapped when freed
TRIM_THRESHOLD = (1 << 31) - 1  # free memory kept at the top of the heap (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the loader workers it forks).

    Returns whether both settings took; False where the C library is not glibc (nothing changes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
