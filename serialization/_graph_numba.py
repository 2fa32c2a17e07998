"""CPU numba kernel for uniform random walks (one loop over the walks, serial on purpose).

A walk is a loop over steps by nature; one pass per walk replaces ~10 full-array torch passes
per step. Importing this module raises ImportError without numba (callers use torch).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["walks"]


@numba.njit(cache=True)
def walks(rowptr, col, start, u):
    """Same rule as ``graph.random_walks``: ``(W,)`` starts, ``(W, L)`` uniforms -> ``(W, L+1)``."""
    w, length = u.shape
    out = np.empty((w, length + 1), dtype=np.int64)
    for j in range(w):
        cur = start[j]
        out[j, 0] = cur
        for i in range(length):
            lo = rowptr[cur]
            deg = rowptr[cur + 1] - lo
            if deg > 0:
                pick = np.int64(u[j, i] * deg)
                if pick > deg - 1:
                    pick = deg - 1
                cur = col[lo + pick]
            out[j, i + 1] = cur
    return out
