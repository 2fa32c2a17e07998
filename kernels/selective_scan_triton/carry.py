"""The chunk-level carry passes: per (segment, block of (d, n) pairs) a scan over the segment's
chunk rows (forward: true end states from local ones; backward: gradients reaching each chunk's
end from later chunks), and the light pass that fills the states of empty segments.

Carry grids have ``min(S, rows)`` programs along axis 0 (``rows``: the bound on state rows,
T // L). With fewer segments than rows, program ``p`` is segment ``p``. With more (many short
segments, e.g. 20,000 graph-token sequences), program ``p`` is state row ``p`` and carries the
segment whose first row it is: only a segment with a second chunk has rows, so no segment is
missed, and most of the 20,000 segment programs, which would only find no rows, are never
launched."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import SUM, and_scalar, combine_affine


@triton.jit
def carry_segment(p, row_seg, cu_nl, S, by_row):
    """Segment of carry program ``p``, its first state row and its row count (0 where the
    program has nothing to carry). ``by_row`` (runtime int, not a constexpr, so one compiled
    kernel serves both grids): program ``p`` stands for state row ``p`` (module docstring)."""
    seg = p
    if by_row != 0:
        # rows past the true count map to segment S: clamp, the row test below rejects them
        seg = tl.minimum(tl.load(row_seg + p), S - 1)
    first = tl.load(cu_nl + seg)
    nrows = tl.load(cu_nl + seg + 1) - first
    owns = (by_row == 0) | (first == p)
    return seg, first, tl.where(owns, nrows, 0)


@triton.jit(do_not_specialize=("S", "by_row"))
def fwd_carry(A2, hs, sdt, row_seg, cu_nl, init, S, by_row, D, N, DN,
              K: tl.constexpr, BDN: tl.constexpr, HAS_INIT: tl.constexpr,
              USE_SCAN: tl.constexpr):
    """h_end(c) = h_loc(c) + exp(A * sum dt(c)) * h_end(c-1), in place over ``hs`` (empty
    segments' final states: ``empty_segment_states``)."""
    s, nl0, nrows = carry_segment(tl.program_id(0), row_seg, cu_nl, S, by_row)
    pb = tl.program_id(1)
    dn = pb * BDN + tl.arange(0, BDN)
    mdn = and_scalar(dn < DN, nrows > 0)
    a2 = tl.load(A2 + dn, mask=mdn, other=0.0)
    nl0 = nl0.to(tl.int64)
    if HAS_INIT:
        carry = tl.load(init + s.to(tl.int64) * DN + dn, mask=mdn, other=0.0)
    else:
        carry = tl.zeros([BDN], dtype=tl.float32)
    if USE_SCAN:
        # K rows at a time: wide loads in flight, associative scan along the rows
        rk = tl.arange(0, K)
        for r0 in range(0, nrows, K):
            r = r0 + rk
            m = (r < nrows)[:, None] & mdn[None, :]
            row = nl0 + r
            b = tl.load(hs + row[:, None] * DN + dn[None, :], mask=m, other=0.0)
            sd = tl.load(sdt + row[:, None] * D + (dn // N)[None, :], mask=m, other=0.0)
            a = tl.exp2(a2[None, :] * sd)
            acum, bcum = tl.associative_scan((a, b), 0, combine_affine)
            hend = bcum + acum * carry[None, :]
            tl.store(hs + row[:, None] * DN + dn[None, :], hend, mask=m)
            # the last row is the state after the whole block (masked rows are identities);
            # tl.reduce would not do: it may swap the operands of this non-commutative combine
            carry = tl.reduce(tl.where((rk == K - 1)[:, None], hend, 0.0), 0, SUM)
    else:
        # row by row (the interpreter runs a scan's combine per element, far slower)
        for r in range(0, nrows):
            row = nl0 + r
            b = tl.load(hs + row * DN + dn, mask=mdn, other=0.0)
            sd = tl.load(sdt + row * D + dn // N, mask=mdn, other=0.0)
            carry = b + tl.exp2(a2 * sd) * carry
            tl.store(hs + row * DN + dn, carry, mask=mdn)


@triton.jit(do_not_specialize=("S",))
def empty_segment_states(cu_seqlens, source, out, S, DN, BS: tl.constexpr, BDN: tl.constexpr,
                         HAS_SOURCE: tl.constexpr):
    """``out[s] = source[s]`` (zeros without ``source``) for every empty segment ``s``; (S, DN)
    buffers. The forward's final states and the backward's initial-state gradients of empty
    segments (``source``: the initial states / the final-state gradients); the other
    segments' come from the passes that walk their chunks. One program per BS segments,
    storing only where a segment is empty: a light launch (S / BS programs), not a
    (segment, block) grid sized for the carry's scan."""
    s = tl.program_id(0) * BS + tl.arange(0, BS)
    ms = s < S
    lens = (tl.load(cu_seqlens + s + 1, mask=ms, other=0)
            - tl.load(cu_seqlens + s, mask=ms, other=0))
    empty = ms & (lens == 0)
    if tl.sum(empty.to(tl.int32), 0) > 0:
        row = s.to(tl.int64)[:, None] * DN
        for d0 in range(0, DN, BDN):
            dn = d0 + tl.arange(0, BDN)
            m = empty[:, None] & (dn < DN)[None, :]
            if HAS_SOURCE:
                v = tl.load(source + row + dn[None, :], mask=m, other=0.0)
            else:
                v = tl.zeros([BS, BDN], dtype=tl.float32)
            tl.store(out + row + dn[None, :], v, mask=m)


@triton.jit(do_not_specialize=("S", "by_row"))
def bwd_carry(A2, gbuf, sdt, row_seg, cu_nl, dinit, S, by_row, D, N, DN,
              K: tl.constexpr, BDN: tl.constexpr, NEED_DINIT: tl.constexpr,
              USE_SCAN: tl.constexpr):
    """X(c) = g_loc(c) + exp(A sum dt(c)) X(c+1) over each segment's chunks, last to first
    (empty segments' initial-state gradients: ``empty_segment_states``)."""
    s, nl0, nrows = carry_segment(tl.program_id(0), row_seg, cu_nl, S, by_row)
    pb = tl.program_id(1)
    dn = pb * BDN + tl.arange(0, BDN)
    mdn = and_scalar(dn < DN, nrows > 0)
    a2 = tl.load(A2 + dn, mask=mdn, other=0.0)
    nl0 = nl0.to(tl.int64)
    s64 = s.to(tl.int64)
    # gbuf row r holds g_loc(chunk r+1) (row nrows-1 already the complete X of the last chunk)
    jk = tl.arange(0, K)
    carry = tl.zeros([BDN], dtype=tl.float32)
    if USE_SCAN:
        for j0 in range(0, nrows, K):
            j = j0 + jk
            r = nrows - 1 - j                               # walk rows last to first
            mj = j < nrows
            m = mj[:, None] & mdn[None, :]
            row = nl0 + r
            b = tl.load(gbuf + row[:, None] * DN + dn[None, :], mask=m, other=0.0)
            sd = tl.load(sdt + (row + 1)[:, None] * D + (dn // N)[None, :],
                         mask=(mj & (r < nrows - 1))[:, None] & mdn[None, :], other=0.0)
            a = tl.exp2(a2[None, :] * sd)                  # decay of chunk r+1 (its successor)
            acum, bcum = tl.associative_scan((a, b), 0, combine_affine)
            x = bcum + acum * carry[None, :]
            tl.store(gbuf + row[:, None] * DN + dn[None, :], x, mask=m)
            carry = tl.reduce(tl.where((jk == K - 1)[:, None], x, 0.0), 0, SUM)
    else:
        for j in range(0, nrows):
            row = nl0 + nrows - 1 - j
            b = tl.load(gbuf + row * DN + dn, mask=mdn, other=0.0)
            sd = tl.load(sdt + (row + 1) * D + dn // N,
                         mask=and_scalar(mdn, row + 1 < nl0 + nrows),
                         other=0.0)
            carry = b + tl.exp2(a2 * sd) * carry
            tl.store(gbuf + row * DN + dn, carry, mask=mdn)
    if NEED_DINIT:
        # a segment with rows has a second chunk (mdn is empty without rows)
        sd0 = tl.load(sdt + nl0 * D + dn // N, mask=mdn, other=0.0)
        cur = tl.load(dinit + s64 * DN + dn, mask=mdn, other=0.0)
        tl.store(dinit + s64 * DN + dn, cur + tl.exp2(a2 * sd0) * carry, mask=mdn)

