"""The chunk-level carry passes: per (segment, block of (d, n) pairs) a scan over the segment's
chunk rows (forward: true end states from local ones; backward: gradients reaching each chunk's
end from later chunks)."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import SUM, and_scalar, combine_affine


@triton.jit
def fwd_carry(A2, hs, sdt, cu_ch, cu_nl, init, D, N, DN,
              K: tl.constexpr, BDN: tl.constexpr, HAS_INIT: tl.constexpr,
              USE_SCAN: tl.constexpr):
    """h_end(c) = h_loc(c) + exp(A * sum dt(c)) * h_end(c-1), in place over ``hs`` (empty
    segments' final states: ``fwd_empty_finals``)."""
    s = tl.program_id(0)
    pb = tl.program_id(1)
    dn = pb * BDN + tl.arange(0, BDN)
    mdn = dn < DN
    a2 = tl.load(A2 + dn, mask=mdn, other=0.0)
    nck = tl.load(cu_ch + s + 1) - tl.load(cu_ch + s)
    nl0 = tl.load(cu_nl + s).to(tl.int64)
    if HAS_INIT:
        carry = tl.load(init + s.to(tl.int64) * DN + dn, mask=mdn, other=0.0)
    else:
        carry = tl.zeros([BDN], dtype=tl.float32)
    nrows = tl.maximum(nck - 1, 0)
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
def fwd_empty_finals(cu_seqlens, init, final, S, DN, BS: tl.constexpr, BDN: tl.constexpr,
                     HAS_INIT: tl.constexpr):
    """The final state of every empty segment (its initial state, zeros without one; the other
    segments' come from the pass that walks their last chunk). One program per BS segments,
    storing only where a segment is empty: a light launch where no segment has a second chunk
    and the carry is skipped (e.g. 20,000 graph-token sequences: S / BS programs instead of
    (segment, block) programs sized for the carry's scan)."""
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
            if HAS_INIT:
                v = tl.load(init + row + dn[None, :], mask=m, other=0.0)
            else:
                v = tl.zeros([BS, BDN], dtype=tl.float32)
            tl.store(final + row + dn[None, :], v, mask=m)


@triton.jit
def bwd_carry(A2, gbuf, sdt, cu_ch, cu_nl, dfinal, dinit, D, N, DN,
              K: tl.constexpr, BDN: tl.constexpr, HAS_DFINAL: tl.constexpr,
              NEED_DINIT: tl.constexpr, USE_SCAN: tl.constexpr):
    """X(c) = g_loc(c) + exp(A sum dt(c)) X(c+1) over each segment's chunks, last to first."""
    s = tl.program_id(0)
    pb = tl.program_id(1)
    dn = pb * BDN + tl.arange(0, BDN)
    mdn = dn < DN
    a2 = tl.load(A2 + dn, mask=mdn, other=0.0)
    nck = tl.load(cu_ch + s + 1) - tl.load(cu_ch + s)
    nl0 = tl.load(cu_nl + s).to(tl.int64)
    s64 = s.to(tl.int64)
    if NEED_DINIT:
        if HAS_DFINAL:
            gf = tl.load(dfinal + s64 * DN + dn, mask=mdn, other=0.0)
        else:
            gf = tl.zeros([BDN], dtype=tl.float32)
        tl.store(dinit + s64 * DN + dn, gf, mask=and_scalar(mdn, nck == 0))
    # gbuf row r holds g_loc(chunk r+1) (row nrows-1 already the complete X of the last chunk)
    nrows = tl.maximum(nck - 1, 0)
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
        sd0 = tl.load(sdt + nl0 * D + dn // N, mask=and_scalar(mdn, nck >= 2), other=0.0)
        cur = tl.load(dinit + s64 * DN + dn, mask=and_scalar(mdn, nck >= 2), other=0.0)
        tl.store(dinit + s64 * DN + dn, cur + tl.exp2(a2 * sd0) * carry,
                 mask=and_scalar(mdn, nck >= 2))

