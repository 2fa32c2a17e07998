"""Backward h-pass and dh-pass fused: one program sweeps each of its chunks forward (the h-pass)
and, where the chunk is its segment's only one (no gradient is carried into its end, so the dh
sweep needs nothing from another program), backward right after (the dh-pass). The chunks of
segments with several are left to the carry and ``bwd_dh_pass`` with ``ONLY_MULTI``, which
adds their terms to this kernel's partial sums.

It does the same arithmetic as ``bwd_h_pass`` then ``bwd_dh_pass`` with the same programs, so
where every segment is one chunk its results are bitwise those of the two passes (elsewhere the
dh terms of dA and d(delta_bias) are summed in another order). What it saves on single-chunk
segments is the second decode of their chunks and the dh sweep's reads of their inputs from
HBM (the h sweep has just read them); where some segment may span chunks (``T > L``, known
from shapes) the dh-pass is still launched, and skips the single ones. What it costs: one
register allocation for both sweeps, above the h-pass's (sm_90: 244 per thread against 229 and
the dh-pass's 160 as the device's Triton 3.6 compiled them), so the dh sweep runs with fewer
resident programs per SM. ``LaunchConfig.fuse_backward`` selects it (off by default:
NOTES_scan_gpu.md, session 44).

The dh sweep reads what other lanes of the program stored in the h sweep; ``tl.debug_barrier``
(``bar.sync``) makes those global stores visible to the whole block (CUDA's rule for
``__syncthreads``). The loads must stay plain ``ld.global`` (the read-only ``.nc`` path would
not be coherent with those stores): they are in the sm_90 PTX (checked with Triton 3.9), and
the bitwise test against the two passes guards it on the GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import channel_block
from .bwd_dh_pass import dh_chunk
from .bwd_h_pass import h_chunk


@triton.jit(do_not_specialize=("S", "n_chunks_bound", "nprog", "T"))
def bwd_fused_pass(u, delta, A2, Bm, Cm, Dsk, z, dbias, dout, init, hs, dfinal,
                   chunk_meta,
                   dz, phi, dC, gbuf, dinit, kappa, ssub, hmid, dA_part, dD_part,
                   du, ddelta, dB, dA_part2, dbias_part,
                   S, n_chunks_bound, nprog, D, G, N: tl.constexpr, dpg, nblk_g, T,
                   L: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                   REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                   HAS_BIAS: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                   HAS_DFINAL: tl.constexpr, NEED_DINIT: tl.constexpr,
                   POLY_EVERY: tl.constexpr,
                   STATE_IN_THREAD: tl.constexpr):
    """Both backward sweeps per single-chunk segment, the h sweep alone elsewhere: the h sweep
    (forward order) writes the chunk's per-token terms (``phi``), dz, dC, its sub-chunk sums and
    states and, for a segment's last chunk, ``kappa``; after a barrier (those stores come from
    other lanes) the dh sweep (reverse order) reads them (chunks share no addresses, so the
    next chunk needs no second barrier) and writes du, ddelta, dB. dA / dD / d(delta_bias)
    partials go to the same per-program buffers as the two passes'."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk = channel_block(
        pdb, A2, dbias, Dsk, dpg, N, BD, NP, HAS_BIAS, HAS_D, STATE_IN_THREAD)
    slot = (pdb % nblk_g).to(tl.int64)
    DN = D * N
    da_h = tl.zeros([NP, BD], dtype=tl.float32)
    dd_acc = tl.zeros([BD], dtype=tl.float32)
    da_dh = tl.zeros([NP, BD], dtype=tl.float32)
    db_acc = tl.zeros([BD], dtype=tl.float32)
    for c in range(pid, n_chunks_bound, nprog):
        da_h, dd_acc, single = h_chunk(
            c, da_h, dd_acc, pdb, u, delta, Bm, Cm, z, dout, init, hs, dfinal, chunk_meta,
            dz, phi, dC, gbuf, dinit, kappa, ssub, hmid,
            offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk, slot,
            n_chunks_bound, D, G, N, T, L, SUB, BD, NP, REVERSE, SOFTPLUS, FAST, HAS_Z,
            HAS_INIT, HAS_DFINAL, NEED_DINIT, POLY_EVERY, STATE_IN_THREAD)
        if single:   # uniform over the program: all its threads reach the barrier
            tl.debug_barrier()
            da_dh, db_acc = dh_chunk(
                c, da_dh, db_acc, pdb, u, delta, Bm, Cm, z, dout, hs, ssub, hmid, dfinal,
                gbuf, kappa, init, dinit, chunk_meta, du, phi, ddelta, dB,
                offs_d, offs_n, mask_n, g, a2, bias, dsk, slot,
                n_chunks_bound, D, G, N, T, L, SUB, BD, NP, REVERSE, SOFTPLUS, FAST, HAS_Z,
                HAS_DFINAL, HAS_INIT, POLY_EVERY, STATE_IN_THREAD, False)
    tl.store(dA_part + pid.to(tl.int64) * DN + st_off, da_h, mask=mask_n[:, None])
    tl.store(dD_part + pid.to(tl.int64) * D + offs_d, dd_acc)
    tl.store(dA_part2 + pid.to(tl.int64) * DN + st_off, da_dh, mask=mask_n[:, None])
    tl.store(dbias_part + pid.to(tl.int64) * D + offs_d, db_acc)
