"""CPU numba kernels of the graph serializations: uniform random walks, the members of every
walk token, the edges inside every token, depth-first orders (serial loops on purpose).

A walk is a loop over steps by nature; one pass per walk replaces ~10 full-array torch passes
per step. The token kernels replace a row-wise sort and a global search over all memberships
(~10x faster on a Peptides-func batch; the data loader builds them, ``tasks.graph.plan``).
Each gives the torch path's result, element for element. Importing this module raises
ImportError without numba (callers use torch).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["walks", "unique_rows", "induced_edges", "dfs_preorder"]


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


@numba.njit(cache=True)
def unique_rows(visited, pad):
    """Sorted distinct values below ``pad`` of every row of ``visited (K, W)``: ``(members
    (nnz,), counts (K,))``, row after row (the torch path's sort + dedup, one pass per row)."""
    k, width = visited.shape
    out = np.empty(k * width, dtype=np.int64)
    counts = np.empty(k, dtype=np.int64)
    buf = np.empty(width, dtype=np.int64)
    total = 0
    for i in range(k):
        m = 0
        for j in range(width):
            v = visited[i, j]
            if v >= pad:
                continue
            p = m  # insertion into the sorted buf[:m], repeats skipped
            while p > 0 and buf[p - 1] > v:
                p -= 1
            if p > 0 and buf[p - 1] == v:
                continue
            for q in range(m, p, -1):
                buf[q] = buf[q - 1]
            buf[p] = v
            m += 1
        for q in range(m):
            out[total + q] = buf[q]
        total += m
        counts[i] = m
    return out[:total].copy(), counts


@numba.njit(cache=True)
def induced_edges(rowptr, col, perm, index, token, ptr):
    """Edges inside every token, between member rows (``models.induced_token_edges``' rule and
    order: member row ascending, then the CSR position of the neighbour): ``(rows, hits,
    edge_ids)``, each ``(E',)``."""
    nnz = index.shape[0]
    bound = 0
    for r in range(nnz):
        bound += rowptr[index[r] + 1] - rowptr[index[r]]
    rows = np.empty(bound, dtype=np.int64)
    hits = np.empty(bound, dtype=np.int64)
    eids = np.empty(bound, dtype=np.int64)
    t = 0
    for r in range(nnz):
        u = index[r]
        lo = ptr[token[r]]
        hi = ptr[token[r] + 1]
        for p in range(rowptr[u], rowptr[u + 1]):
            v = col[p]
            a, b = lo, hi  # binary search of v among the token's sorted members
            while a < b:
                mid = (a + b) // 2
                if index[mid] < v:
                    a = mid + 1
                else:
                    b = mid
            if a < hi and index[a] == v:
                rows[t] = r
                hits[t] = a
                eids[t] = perm[p]
                t += 1
    return rows[:t].copy(), hits[:t].copy(), eids[:t].copy()


@numba.njit(cache=True)
def dfs_preorder(rowptr, col, roots):
    """Preorder of a depth-first search over a CSR graph (``graph.dfs_order``): a search from
    every not yet visited node of ``roots`` in turn, each node's neighbours entered in their
    CSR order (the first listed first). ``(n,)`` node ids."""
    n = rowptr.shape[0] - 1
    order = np.empty(n, dtype=np.int64)
    visited = np.zeros(n, dtype=np.bool_)
    stack = np.empty(col.shape[0] + n, dtype=np.int64)  # every push is one edge or one root
    k = 0
    for r in roots:
        if visited[r]:
            continue
        stack[0] = r
        top = 1
        while top > 0:
            top -= 1
            v = stack[top]
            if visited[v]:
                continue
            visited[v] = True
            order[k] = v
            k += 1
            for e in range(rowptr[v + 1] - 1, rowptr[v] - 1, -1):  # last pushed, first entered
                u = col[e]
                if not visited[u]:
                    stack[top] = u
                    top += 1
    return order
