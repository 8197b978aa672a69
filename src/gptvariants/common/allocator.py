"""Host memory: keep freed large buffers for reuse instead of handing them back to the OS.

glibc serves every allocation above 32 MiB with its own mmap and unmaps it on free. A
training step at GPT-2's vocabulary frees and re-allocates several such tensors (the
(V, C) output-layer gradient, the Bayesian head's noise, weight draw and their gradients),
so each step page-faults them in afresh. ``keep_freed_memory`` sets M_MMAP_MAX = 0
(large blocks come from the heap) and M_TRIM_THRESHOLD = INT_MAX (the heap is not shrunk),
the effect of jemalloc's or tcmalloc's caching without preloading either. Measured at the
GPT-2 shape (benchmarks/README.md): steps 11 % faster for the baseline and 32 % for the
Bayesian head, for ~15 % more peak resident memory, since the heap keeps freed blocks.
It is a whole-process choice, so only the ``gptv`` entry point makes it; library calls such
as ``train()`` leave a notebook's allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def keep_freed_memory() -> bool:
    """Apply the setting once per process; True when glibc accepted it.

    A no-op returning False off Linux/glibc (macOS, Windows, musl) and when the environment
    sets GPTV_MALLOC_TUNING=0.
    """
    global _done
    if _done:
        return True
    if os.environ.get("GPTV_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
