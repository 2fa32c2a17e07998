"""Keep numba's and torch's CPU thread counts in agreement around numba kernel calls.

numba's OpenMP threading layer shares the OpenMP runtime with torch: its first parallel call
sets the runtime's thread count to numba's own (all cores), which silently overrides
``torch.set_num_threads`` / ``OMP_NUM_THREADS`` for every later torch op. On a busy machine
that oversubscribes the cores and makes small torch ops wait at barriers. Kernels therefore
run with as many numba threads as torch has, and torch's count is restored afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import torch


@contextmanager
def threads_like_torch():
    """Run the enclosed numba kernels on ``torch.get_num_threads()`` threads; restore torch's."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
