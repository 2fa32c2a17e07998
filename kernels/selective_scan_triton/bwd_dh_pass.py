"""Backward dh-pass (reverse order): dh inside each chunk from the gradient carried into its end;
du, ddelta (over the h-pass's per-token terms), dB, dA's dh-terms, d(delta_bias).

dA's terms are centred per sub-chunk of SUB steps, as in the h-pass: at an inner sub-chunk
boundary b the term (gradient into h_b from later steps) * h_b enters with the two sub-chunks'
half sums of dt (h_b and those sums come from the h-pass's ``hmid`` / ``ssub``)."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import (LN2, LOG2E, SUM, and_scalar, channel_block, chunk_info, decay, load_state,
                   softplus, step_inputs)


@triton.jit
def dh_chunk(c, da_acc, db_acc, pdb,
             u, delta, Bm, Cm, z, dout, hs, ssub, hmid, dfinal, gbuf, kappa, init, dinit,
             chunk_meta, du, phi, ddelta, dB,
             offs_d, offs_n, mask_n, g, a2, bias, dsk, slot,
             n_chunks_bound, D, G, N: tl.constexpr, T,
             L: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
             REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
             HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr,
             POLY_EVERY: tl.constexpr, STATE_IN_THREAD: tl.constexpr,
             ONLY_MULTI: tl.constexpr):
    """The dh-pass over chunk ``c`` for channel block ``pdb`` (its ``channel_block`` values
    passed in): returns ``(da_acc, db_acc)`` plus this chunk's dA dh-terms ((NP, BD)) and
    d(delta_bias) terms ((BD,)). With ONLY_MULTI a segment's only chunk is skipped (the fused
    h-pass swept it) and adds nothing."""
    STEP: tl.constexpr = -1 if REVERSE else 1
    NSUB: tl.constexpr = L // SUB
    DN = D * N
    valid, s, k, nck, clen, base, nl0 = chunk_info(c, chunk_meta, n_chunks_bound, L, REVERSE)
    if ONLY_MULTI:
        valid = valid & (nck > 1)
        clen = tl.where(valid, clen, 0)
    s64 = s.to(tl.int64)
    c64 = tl.cast(c, tl.int64)
    row = (nl0 + k).to(tl.int64)
    not_last = valid & (k < nck - 1)
    is_last = valid & (k == nck - 1)
    # G: gradient reaching the chunk's last state from later chunks
    q = load_state(gbuf + row * DN, pdb, not_last, N, BD, NP, STATE_IN_THREAD)
    hend = load_state(hs + row * DN, pdb, not_last, N, BD, NP, STATE_IN_THREAD)
    kap = (tl.reduce(a2 * q * hend, 0, SUM) * LN2)
    # E at both ends of the chunk (gradient into a state times that state), for dA
    prev = (nl0 + k - 1).to(tl.int64)
    has_prev = valid & (k > 0)
    estart = (load_state(gbuf + prev * DN, pdb, has_prev, N, BD, NP, STATE_IN_THREAD)
              * load_state(hs + prev * DN, pdb, has_prev, N, BD, NP, STATE_IN_THREAD))
    if HAS_INIT:
        is_first = valid & (k == 0)
        estart += (load_state(dinit + s64 * DN, pdb, is_first, N, BD, NP, STATE_IN_THREAD)
                   * load_state(init + s64 * DN, pdb, is_first, N, BD, NP, STATE_IN_THREAD))
    # half the sum of dt of the chunk's last sub-chunk (the h-pass saved every sub-chunk's)
    has_steps = and_scalar(offs_d < D, clen > 0)
    half = 0.5 * tl.load(ssub + (c64 * NSUB + tl.maximum(clen - 1, 0) // SUB) * D + offs_d,
                         mask=has_steps, other=0.0)
    if L > SUB:   # the ends of the chunk weigh with the halves of their own sub-chunks
        half0 = 0.5 * tl.load(ssub + c64 * NSUB * D + offs_d, mask=has_steps, other=0.0)
        da_acc += q * hend * half[None, :] + estart * half0[None, :]
    else:
        da_acc += (q * hend + estart) * half[None, :]
    if HAS_DFINAL:
        q += load_state(dfinal + s64 * DN, pdb, is_last, N, BD, NP, STATE_IN_THREAD)
        kap += tl.load(kappa + s64 * D + offs_d, mask=and_scalar(offs_d < D, is_last),
                       other=0.0)
    big_phi = kap                                        # sum_n A E_t, built backwards
    rsum = tl.zeros([BD], dtype=tl.float32)               # sum of dt after t in the chunk
    u_n, d_n, b_n, c_n, z_n, o_n, p_n = step_inputs(
        tl.where(clen > 0, base + (clen - 1) * STEP, 0), u, delta, Bm, Cm, z, dout, phi,
        offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, True, True)
    nsub_c = (clen + SUB - 1) // SUB
    for r in range(0, nsub_c):     # sub-chunks, last first: no branch per step
        jsub = nsub_c - 1 - r
        for j in range(clen - tl.minimum(jsub * SUB + SUB, clen), clen - jsub * SUB):
            tok = base + (clen - 1 - j) * STEP
            uu = u_n.to(tl.float32)
            dl = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            cv = c_n.to(tl.float32)
            do = o_n.to(tl.float32)
            ph = p_n
            zz = z_n.to(tl.float32)
            # prefetch the previous step (the first step re-reads its own row)
            u_n, d_n, b_n, c_n, z_n, o_n, p_n = step_inputs(
                base + (clen - 1 - tl.minimum(j + 1, clen - 1)) * STEP, u, delta, Bm, Cm, z,
                dout, phi, offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, True, True)
            dt = softplus(dl, SOFTPLUS, FAST)
            if HAS_Z:
                dy = do * zz * (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
            else:
                dy = do
            dh = cv[:, None] * dy[None, :] + q
            q = decay(a2, dt, j, POLY_EVERY) * dh
            dhb = dh * bv[:, None]
            sb = tl.reduce(dhb, 0, SUM)
            sab = (tl.reduce(a2 * dhb, 0, SUM) * LN2)
            dtu = dt * uu
            tl.store(du + tok * D + offs_d, (dt * sb + dsk * dy).to(du.dtype.element_ty))
            big_phi += ph - dtu * sab
            ddt = uu * sb + big_phi
            if SOFTPLUS:
                ddt = ddt * (1.0 / (1.0 + tl.exp2(-dl * LOG2E)))
            tl.store(ddelta + tok * D + offs_d, ddt.to(ddelta.dtype.element_ty))
            db_acc += ddt
            v = dh * dtu[None, :]
            tl.store(dB + ((slot * T + tok) * G + g) * N + offs_n, tl.reduce(v, 1, SUM),
                     mask=mask_n)
            # -(S_t - Stot/2) * B_t dt_t u_t dh_t with S_t = Stot - rsum (dt summed after t)
            da_acc += (rsum - half)[None, :] * (v * bv[:, None])
            rsum += dt
        if L > SUB:
            if jsub > 0:   # q is now the gradient into the state ending sub-chunk jsub-1
                hb = load_state(hmid + (c64 * (NSUB - 1) + jsub - 1) * DN, pdb, valid, N, BD,
                                NP, STATE_IN_THREAD)
                half_prev = 0.5 * tl.load(ssub + (c64 * NSUB + jsub - 1) * D + offs_d)
                da_acc += q * hb * (half + half_prev)[None, :]
                half = half_prev
                rsum = tl.zeros([BD], dtype=tl.float32)
    return da_acc, db_acc


@triton.jit(do_not_specialize=("S", "n_chunks_bound", "nprog", "T"))
def bwd_dh_pass(u, delta, A2, Bm, Cm, Dsk, z, dbias, dout, hs, ssub, hmid, dfinal, gbuf, kappa,
                init, dinit,
                chunk_meta,
                du, phi, ddelta, dB, dA_part, dbias_part,
                S, n_chunks_bound, nprog, D, G, N: tl.constexpr, dpg, nblk_g, T,
                L: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                HAS_BIAS: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr,
                HAS_INIT: tl.constexpr, POLY_EVERY: tl.constexpr,
                STATE_IN_THREAD: tl.constexpr, ONLY_MULTI: tl.constexpr):
    """Reverse-order pass of the backward: dh inside each chunk; du, ddelta (over phi, the
    h-pass's per-token terms; stored in ddelta's dtype), dB. With ONLY_MULTI only the chunks of
    segments with several (after an h-pass with FUSE_DH, which swept the others), adding to the
    partials it wrote."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk = channel_block(
        pdb, A2, dbias, Dsk, dpg, N, BD, NP, HAS_BIAS, HAS_D, STATE_IN_THREAD)
    slot = (pdb % nblk_g).to(tl.int64)
    DN = D * N
    if ONLY_MULTI:   # go on from the fused kernel's partials of this (program, block)
        da_acc = tl.load(dA_part + pid.to(tl.int64) * DN + st_off, mask=mask_n[:, None],
                         other=0.0)
        db_acc = tl.load(dbias_part + pid.to(tl.int64) * D + offs_d)
    else:
        da_acc = tl.zeros([NP, BD], dtype=tl.float32)
        db_acc = tl.zeros([BD], dtype=tl.float32)
    for c in range(pid, n_chunks_bound, nprog):
        da_acc, db_acc = dh_chunk(
            c, da_acc, db_acc, pdb, u, delta, Bm, Cm, z, dout, hs, ssub, hmid, dfinal, gbuf,
            kappa, init, dinit, chunk_meta, du, phi, ddelta, dB,
            offs_d, offs_n, mask_n, g, a2, bias, dsk, slot,
            n_chunks_bound, D, G, N, T, L, SUB, BD, NP, REVERSE, SOFTPLUS, FAST, HAS_Z,
            HAS_DFINAL, HAS_INIT, POLY_EVERY, STATE_IN_THREAD, ONLY_MULTI)
    tl.store(dA_part + pid.to(tl.int64) * DN + st_off, da_acc, mask=mask_n[:, None])
    tl.store(dbias_part + pid.to(tl.int64) * D + offs_d, db_acc)
