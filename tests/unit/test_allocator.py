"""keep_freed_memory: large blocks come from the heap and stay there once freed (glibc)."""

import platform
import subprocess
import sys

import pytest

# Run in a fresh process: the settings are process-wide, and the "before" needs glibc's defaults.
PROBE = """
import ctypes, ctypes.util
from msslab.allocator import keep_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 << 20

def probe():
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(SIZE)
    mapped = libc.mallinfo2().hblkhd - before >= SIZE  # served by its own mmap
    libc.free(block)
    kept = libc.mallinfo2().fordblks >= SIZE  # still free on the heap after free()
    return mapped, kept

print(*probe(), keep_freed_memory(), *probe())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    # glibc's default: a 64 MB block is mmapped and unmapped on free (nothing kept);
    # after keep_freed_memory(): on the heap, and still there once freed.
    assert out == ["True", "False", "True", "False", "True"]
