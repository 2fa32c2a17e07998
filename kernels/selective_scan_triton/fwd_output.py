"""Forward output pass of the chunked forward: every chunk rescans from its true start state and
writes ``out``; the last chunk of a segment writes its final state."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import and_scalar, channel_block, chunk_info, load_state, output_step, step_inputs


@triton.jit(do_not_specialize=("S", "n_chunks_bound", "nprog"))
def fwd_output(u, delta, A2, Bm, Cm, Dsk, z, dbias, out, init, final, hs,
               chunk_meta,
               S, n_chunks_bound, nprog, D, G, N: tl.constexpr, dpg,
               L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
               REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
               HAS_BIAS: tl.constexpr,
               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
               NEED_FINAL: tl.constexpr, POLY_EVERY: tl.constexpr,
               STATE_IN_THREAD: tl.constexpr):
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk = channel_block(
        pdb, A2, dbias, Dsk, dpg, N, BD, NP, HAS_BIAS, HAS_D, STATE_IN_THREAD)
    DN = D * N
    for c in range(pid, n_chunks_bound, nprog):
        valid, s, k, nck, clen, base, nl0 = chunk_info(c, chunk_meta, n_chunks_bound,
                                                       L, REVERSE)
        prev = (nl0 + k - 1).to(tl.int64)
        h = load_state(hs + prev * DN, pdb, valid & (k > 0), N, BD, NP, STATE_IN_THREAD)
        if HAS_INIT:
            h += load_state(init + s.to(tl.int64) * DN, pdb, valid & (k == 0), N, BD, NP, STATE_IN_THREAD)
        u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
            tl.where(clen > 0, base, 0), u, delta, Bm, Cm, z, u, delta, offs_d, offs_n, mask_n,
            D, G, N, g, True, HAS_Z, False, False)
        for i in range(0, clen):
            # widen this step's inputs before the prefetch overwrites their registers
            uu, dd = u_n.to(tl.float32), d_n.to(tl.float32)
            bb, cc, zz = b_n.to(tl.float32), c_n.to(tl.float32), z_n.to(tl.float32)
            # prefetch the next step (the last step re-reads its own row): hides load latency
            u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
                base + tl.minimum(i + 1, clen - 1) * STEP, u, delta, Bm, Cm, z, u, delta,
                offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, False, False)
            h, y, _dt = output_step(h, a2, i, uu, dd, bb, cc, zz, bias, dsk,
                                    SOFTPLUS, FAST, HAS_Z, POLY_EVERY)
            tl.store(out + (base + i * STEP) * D + offs_d, y.to(out.dtype.element_ty))
        if NEED_FINAL:
            tl.store(final + s.to(tl.int64) * DN + st_off, h,
                     mask=and_scalar(mask_n[:, None], valid & (k == nck - 1)))
