"""CPU runs keep the memory they free, so large tensors reuse pages instead of faulting in new ones.

glibc's malloc serves every allocation above its mmap threshold (which it moves up to at most
32 MiB) with a fresh `mmap` from the kernel, and gives it back with `munmap` when it is freed. A
CPU training step allocates and frees tensors of that size many times: the logits of a
micro-batch alone are tokens x vocabulary x 4 bytes (64 MiB at 2,048 x 8,192), and their
softmax, its gradient and the casts around them are as large. Each new one pays a page fault for
every 4 KiB page the first time it is written. On this project's 2-core Xeon, `exp()` over a
2,048 x 8,192 fp32 tensor into a fresh output took about 21 ms by default and 7 ms with freed pages
reused (`bench/step_ab.py allocator`; docs/performance.md has every run).

`keep_freed_memory` makes malloc serve every size from its heap and never give the heap back
(`mallopt(M_MMAP_MAX, 0)`, `M_TRIM_THRESHOLD` at its maximum): what the jemalloc / tcmalloc
preloads of torch's own CPU launcher (`torch.backends.xeon.run_cpu`) do, without a library to
install. The process's resident memory then stays at its high-water mark rather than following
the live tensors down; the high-water mark itself is what the run's peak is. It is set only for
runs on the CPU (`training.cpu_allocator: auto`); on a GPU the host memory that loading weights
used is better given back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_kept = False


def _glibc():
    """glibc's handle, or None on another C library (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (glibc only; idempotent). True if it is in effect."""
    global _kept
    if _kept:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; set the trim threshold first, so a refusal leaves mmap as it was
    _kept = bool(libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX)) and bool(libc.mallopt(M_MMAP_MAX, 0))
    return _kept
