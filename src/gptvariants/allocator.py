"""Host memory: keep freed large buffers for reuse instead of handing them back to the OS.

glibc serves every allocation above 32 MiB with its own mmap and unmaps it on free. A
training step at GPT-2's vocabulary frees and re-allocates dozens of such tensors (logits
chunks, the (V, C) output-layer gradient, the Bayesian head's noise and weight draw), so each
step page-faults them in afresh: on the 2-core CPU of benchmarks/README.md that was ~20 % of
a GPT-2-shape step, and more for the Bayesian head. ``keep_freed_memory`` sets M_MMAP_MAX = 0
(large blocks come from the heap) and M_TRIM_THRESHOLD = INT_MAX (the heap is not shrunk),
the effect of jemalloc's or tcmalloc's caching without preloading either. The same buffers
are reused step after step, so peak memory barely changes.
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
