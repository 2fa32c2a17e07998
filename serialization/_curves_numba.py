"""CPU numba kernels for the curve codes (Hilbert, Morton, traverse): one loop over the points.

The same formulas as the torch versions in ``curves`` (Skilling's transpose algorithm for
Hilbert); a per-point loop is their natural form and avoids the tens of full-array passes of the
vectorised versions. Serial on purpose: no numba thread pool competing with torch's threads.
Importing this module raises ImportError when numba is missing (callers fall back to torch).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["hilbert_encode", "hilbert_encode_depths", "hilbert_decode", "morton_encode",
           "traverse_encode", "traverse_encode_depths"]


@numba.njit(cache=True, inline="always")
def _interleave_one(a, b, c, depth):
    out = np.int64(0)
    for k in range(depth - 1, -1, -1):
        out = (out << 3) | (((a >> k) & 1) << 2) | (((b >> k) & 1) << 1) | ((c >> k) & 1)
    return out


@numba.njit(cache=True, inline="always")
def _invert_or_exchange(x0, xi, q, p):
    """One step of Skilling's transform on axis ``i``: where ``xi`` has bit ``q`` set, invert
    the low bits ``p`` of ``x0``; else exchange the low bits of ``x0`` and ``xi``."""
    if xi & q:
        return x0 ^ p, xi
    t = (x0 ^ xi) & p
    return x0 ^ t, xi ^ t


@numba.njit(cache=True, inline="always")
def _hilbert_one(x0, x1, x2, depth):
    """The Hilbert code of one cell ``(x0, x1, x2)`` of a ``2^depth`` grid."""
    q = np.int64(1) << (depth - 1)
    while q > 1:
        p = q - 1
        if x0 & q:
            x0 ^= p
        x0, x1 = _invert_or_exchange(x0, x1, q, p)
        x0, x2 = _invert_or_exchange(x0, x2, q, p)
        q >>= 1
    x1 ^= x0
    x2 ^= x1
    t = np.int64(0)
    q = np.int64(1) << (depth - 1)
    while q > 1:
        if x2 & q:
            t ^= q - 1
        q >>= 1
    return _interleave_one(x0 ^ t, x1 ^ t, x2 ^ t, depth)


@numba.njit(cache=True)
def hilbert_encode(g, depth):
    """``g: (N, 3) int64`` cells of a ``2^depth`` grid -> ``(N,) int64`` Hilbert codes."""
    n = g.shape[0]
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = _hilbert_one(np.int64(g[j, 0]), np.int64(g[j, 1]), np.int64(g[j, 2]), depth)
    return out


@numba.njit(cache=True)
def hilbert_encode_depths(g, depths):
    """``hilbert_encode`` with a depth per point: ``g: (N, 3)``, ``depths: (N,) int64`` ->
    ``(N,) int64``, point ``j`` coded on its own ``2^depths[j]`` grid."""
    n = g.shape[0]
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = _hilbert_one(np.int64(g[j, 0]), np.int64(g[j, 1]), np.int64(g[j, 2]),
                              np.int64(depths[j]))
    return out


@numba.njit(cache=True)
def hilbert_decode(code, depth):
    """``code: (N,) int64`` Hilbert codes (no sample bits) -> ``(N, 3) int64`` cells."""
    n = code.shape[0]
    out = np.empty((n, 3), dtype=np.int64)
    for j in range(n):
        h = np.int64(code[j])
        x0 = np.int64(0)
        x1 = np.int64(0)
        x2 = np.int64(0)
        for k in range(depth - 1, -1, -1):
            x0 = (x0 << 1) | ((h >> (3 * k + 2)) & 1)
            x1 = (x1 << 1) | ((h >> (3 * k + 1)) & 1)
            x2 = (x2 << 1) | ((h >> (3 * k)) & 1)
        t = x2 >> 1
        x2 ^= x1
        x1 ^= x0
        x0 ^= t
        q = np.int64(2)
        top = np.int64(2) << (depth - 1)
        while q != top:
            p = q - 1
            x0, x2 = _invert_or_exchange(x0, x2, q, p)
            x0, x1 = _invert_or_exchange(x0, x1, q, p)
            if x0 & q:
                x0 ^= p
            q <<= 1
        out[j, 0] = x0
        out[j, 1] = x1
        out[j, 2] = x2
    return out


@numba.njit(cache=True)
def morton_encode(g, depth):
    """``g: (N, 3) int64`` -> ``(N,) int64`` Morton codes (x most significant per level)."""
    n = g.shape[0]
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = _interleave_one(np.int64(g[j, 0]), np.int64(g[j, 1]), np.int64(g[j, 2]), depth)
    return out


@numba.njit(cache=True, inline="always")
def _traverse_one(a, b, c, depth):
    top = (np.int64(1) << depth) - 1
    if a & 1:
        b = top - b
    if b & 1:
        c = top - c
    return (((a << depth) | b) << depth) | c


@numba.njit(cache=True)
def traverse_encode(g, slow, mid, fast, depth):
    """``g: (N, 3) int64`` -> ``(N,) int64`` snake codes, axis ``slow`` slowest."""
    n = g.shape[0]
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = _traverse_one(np.int64(g[j, slow]), np.int64(g[j, mid]), np.int64(g[j, fast]),
                               np.int64(depth))
    return out


@numba.njit(cache=True)
def traverse_encode_depths(g, slow, mid, fast, depths):
    """``traverse_encode`` with a depth per point (``depths: (N,) int64``)."""
    n = g.shape[0]
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = _traverse_one(np.int64(g[j, slow]), np.int64(g[j, mid]), np.int64(g[j, fast]),
                               np.int64(depths[j]))
    return out
