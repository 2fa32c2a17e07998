"""Backward h-pass (forward order): recompute h inside each chunk from its saved start state;
the h-part of the gradients (dz, dC, the per-token sum_n A C h dy into the ddelta buffer, the
chunk's local gradient towards its start state, dA's h-terms, dD).

dA's terms are weighted by the time since the start of their sub-chunk of SUB steps, centred on
the sub-chunk's middle; a chunk longer than SUB also records, for the dh-pass, its states and
sums of dt at the inner sub-chunk boundaries (``hmid``, ``ssub``). The weights, and the float32
cancellation between the two passes' terms, so stay those of SUB-step chunks whatever the chunk
length L.

With FUSE_DH (``LaunchConfig.fuse_backward``) the same kernel also sweeps a chunk backward (the
dh-pass's ``dh_chunk``) right after its h sweep where the chunk is its segment's only one: no
gradient is carried into its end, so the dh sweep needs nothing from another program. The
chunks of longer segments are left to the carry and ``bwd_dh_pass`` with ``ONLY_MULTI``, which
adds their terms to this kernel's dh partials. Where every segment is one chunk the programs
and partial sums are the two passes', so results are bitwise theirs. It saves, on single-chunk
segments, the second decode of their chunks and the reads of their inputs from HBM; it costs
one register allocation for both sweeps (sm_90, the device's Triton 3.6: 244 per thread
against the h-pass's 229 and the dh-pass's 160), so the dh sweep runs with fewer programs per
SM (NOTES_scan_gpu.md, session 46: ties at best, off by default).

The dh sweep reads what other lanes stored in the h sweep; ``tl.debug_barrier`` (``bar.sync``)
makes those global stores visible to the whole block (CUDA's rule for ``__syncthreads``). The
loads must stay plain ``ld.global`` (the read-only ``.nc`` path would not be coherent with those
stores): they are in the sm_90 PTX (checked with Triton 3.9), and the bitwise test against the
two passes guards it on the GPU."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import (LN2, LOG2E, SUM, and_scalar, channel_block, chunk_info, decay, load_state,
                   softplus, step_inputs)
from .bwd_dh_pass import dh_chunk


@triton.jit
def h_chunk(c, da_acc, dd_acc, pdb,
            u, delta, Bm, Cm, z, dout, init, hs, dfinal, chunk_meta,
            dz, phi, dC, gbuf, dinit, kappa, ssub, hmid,
            offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk, slot,
            n_chunks_bound, D, G, N: tl.constexpr, T,
            L: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
            REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
            HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
            HAS_DFINAL: tl.constexpr, NEED_DINIT: tl.constexpr,
            POLY_EVERY: tl.constexpr, STATE_IN_THREAD: tl.constexpr):
    """The h-pass over chunk ``c`` for channel block ``pdb`` (its ``channel_block`` values
    passed in): returns ``(da_acc, dd_acc, single)``: the accumulators plus this chunk's dA
    h-terms ((NP, BD)) and dD terms ((BD,)), and whether the chunk is its segment's only one
    (nothing is carried into its end, so its dh sweep may follow at once)."""
    STEP: tl.constexpr = -1 if REVERSE else 1
    NSUB: tl.constexpr = L // SUB
    DN = D * N
    valid, s, k, nck, clen, base, nl0 = chunk_info(c, chunk_meta, n_chunks_bound, L, REVERSE)
    s64 = s.to(tl.int64)
    c64 = tl.cast(c, tl.int64)
    prev = (nl0 + k - 1).to(tl.int64)
    h = load_state(hs + prev * DN, pdb, valid & (k > 0), N, BD, NP, STATE_IN_THREAD)
    if HAS_INIT:
        h += load_state(init + s64 * DN, pdb, valid & (k == 0), N, BD, NP, STATE_IN_THREAD)
    p = tl.full([NP, BD], 1.0, dtype=tl.float32)     # decay from chunk start to t
    gl = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t p_t * C_t dy_t
    sloc = tl.zeros([BD], dtype=tl.float32)          # sum of dt from sub-chunk start, incl.
    wa = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t sloc_t C_t dy_t h_t
    wb = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t C_t dy_t h_t
    u_n, d_n, b_n, c_n, z_n, o_n, _p = step_inputs(
        tl.where(clen > 0, base, 0), u, delta, Bm, Cm, z, dout, delta, offs_d, offs_n,
        mask_n, D, G, N, g, True, HAS_Z, True, False)
    for jsub in range(0, (clen + SUB - 1) // SUB):     # sub-chunks: no branch per step
        for i in range(jsub * SUB, tl.minimum(jsub * SUB + SUB, clen)):
            tok = base + i * STEP
            uu = u_n.to(tl.float32)
            dt = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            cv = c_n.to(tl.float32)
            do = o_n.to(tl.float32)
            zz = z_n.to(tl.float32)
            # prefetch the next step (the last step re-reads its own row)
            u_n, d_n, b_n, c_n, z_n, o_n, _p = step_inputs(
                base + tl.minimum(i + 1, clen - 1) * STEP, u, delta, Bm, Cm, z, dout, delta,
                offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, True, False)
            dt = softplus(dt, SOFTPLUS, FAST)
            a = decay(a2, dt, i, POLY_EVERY)
            h = a * h + bv[:, None] * (dt * uu)[None, :]
            p = p * a
            sloc += dt
            hc = h * cv[:, None]
            if HAS_Z:
                y = tl.reduce(hc, 0, SUM) + dsk * uu
                sz = (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
                dy = do * zz * sz
                dzv = do * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz + tok * D + offs_d, dzv.to(dz.dtype.element_ty))
            else:
                dy = do
            cm = cv[:, None] * dy[None, :]
            gl += p * cm
            tl.store(phi + tok * D + offs_d, dy * (tl.reduce(a2 * hc, 0, SUM) * LN2))
            v = h * dy[None, :]
            tl.store(dC + ((slot * T + tok) * G + g) * N + offs_n, tl.reduce(v, 1, SUM),
                     mask=mask_n)
            cvh = v * cv[:, None]
            wa += sloc[None, :] * cvh
            wb += cvh
            dd_acc += dy * uu
        if L > SUB:
            if jsub * SUB + SUB < clen:   # inner sub-chunk boundary: h is its state
                da_acc += wa - (0.5 * sloc)[None, :] * wb
                tl.store(ssub + (c64 * NSUB + jsub) * D + offs_d, sloc)
                tl.store(hmid + (c64 * (NSUB - 1) + jsub) * DN + st_off, h,
                         mask=mask_n[:, None])
                wa = tl.zeros([NP, BD], dtype=tl.float32)
                wb = tl.zeros([NP, BD], dtype=tl.float32)
                sloc = tl.zeros([BD], dtype=tl.float32)
    # dA weights centred on the (sub-)chunk's middle (S_t - Stot/2): halves the cancellation
    da_acc += wa - (0.5 * sloc)[None, :] * wb
    is_last = valid & (k == nck - 1)
    tl.store(ssub + (c64 * NSUB + tl.maximum(clen - 1, 0) // SUB) * D + offs_d, sloc,
             mask=and_scalar(offs_d < D, clen > 0))
    x = gl
    if HAS_DFINAL:
        gf = load_state(dfinal + s64 * DN, pdb, is_last, N, BD, NP, STATE_IN_THREAD)
        da_acc += gf * h * (0.5 * sloc)[None, :]
        tl.store(kappa + s64 * D + offs_d, (tl.reduce(a2 * gf * h, 0, SUM) * LN2),
                 mask=and_scalar(offs_d < D, is_last))
        x += p * gf
    tl.store(gbuf + prev * DN + st_off, x, mask=and_scalar(mask_n[:, None], valid & (k > 0)))
    if NEED_DINIT:
        tl.store(dinit + s64 * DN + st_off, x,
                 mask=and_scalar(mask_n[:, None], valid & (k == 0)))
    return da_acc, dd_acc, valid & (nck == 1)


@triton.jit(do_not_specialize=("S", "n_chunks_bound", "nprog", "T"))
def bwd_h_pass(u, delta, A2, Bm, Cm, Dsk, z, dbias, dout, init, hs, dfinal,
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
               STATE_IN_THREAD: tl.constexpr, FUSE_DH: tl.constexpr):
    """Forward-order pass of the backward: recompute h inside each chunk (h-part of the grads).
    With FUSE_DH, after a barrier (the h sweep's ``phi``, ``kappa``, ``ssub``, ``hmid`` stores
    come from other lanes) also the dh sweep of every single-chunk segment: du, ddelta, dB and
    the dh partials (``dA_part2``, ``dbias_part``; unused without FUSE_DH). Chunks share no
    addresses, so the next chunk needs no second barrier."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk = channel_block(
        pdb, A2, dbias, Dsk, dpg, N, BD, NP, HAS_BIAS, HAS_D, STATE_IN_THREAD)
    slot = (pdb % nblk_g).to(tl.int64)                     # partial-dC slice of this block
    DN = D * N
    da_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dd_acc = tl.zeros([BD], dtype=tl.float32)
    da_dh = tl.zeros([NP, BD], dtype=tl.float32)
    db_acc = tl.zeros([BD], dtype=tl.float32)
    for c in range(pid, n_chunks_bound, nprog):
        da_acc, dd_acc, single = h_chunk(
            c, da_acc, dd_acc, pdb, u, delta, Bm, Cm, z, dout, init, hs, dfinal, chunk_meta,
            dz, phi, dC, gbuf, dinit, kappa, ssub, hmid,
            offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk, slot,
            n_chunks_bound, D, G, N, T, L, SUB, BD, NP, REVERSE, SOFTPLUS, FAST, HAS_Z,
            HAS_INIT, HAS_DFINAL, NEED_DINIT, POLY_EVERY, STATE_IN_THREAD)
        if FUSE_DH:
            if single:   # uniform over the program: all its threads reach the barrier
                tl.debug_barrier()
                da_dh, db_acc = dh_chunk(
                    c, da_dh, db_acc, pdb, u, delta, Bm, Cm, z, dout, hs, ssub, hmid, dfinal,
                    gbuf, kappa, init, dinit, chunk_meta, du, phi, ddelta, dB,
                    offs_d, offs_n, mask_n, g, a2, bias, dsk, slot,
                    n_chunks_bound, D, G, N, T, L, SUB, BD, NP, REVERSE, SOFTPLUS, FAST,
                    HAS_Z, HAS_DFINAL, HAS_INIT, POLY_EVERY, STATE_IN_THREAD, False)
    tl.store(dA_part + pid.to(tl.int64) * DN + st_off, da_acc, mask=mask_n[:, None])
    tl.store(dD_part + pid.to(tl.int64) * D + offs_d, dd_acc)
    if FUSE_DH:
        tl.store(dA_part2 + pid.to(tl.int64) * DN + st_off, da_dh, mask=mask_n[:, None])
        tl.store(dbias_part + pid.to(tl.int64) * D + offs_d, db_acc)
