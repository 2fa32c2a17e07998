"""Serial forward: one program per (segment, block of channels) walks its whole segment once.

Each (token, channel, state) takes one exponential and each output is written once; there is no
chunk-state pass and no carry pass, and one launch covers every segment (empty ones included).
On the way it stores the end state and sum(dt) of every chunk that is not its segment's last,
the same record the chunked forward leaves for the backward. Parallel over segments x channel
blocks only, so it pays off for many segments of moderate length (``LaunchConfig.forward``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import and_scalar, load_state, output_step, step_inputs


@triton.jit
def fwd_serial(u, delta, A2, Bm, Cm, Dsk, z, dbias, out, init, final, hs, sdt, cu_seq, cu_nl,
               D, G, N: tl.constexpr, dpg,
               L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
               REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
               HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
               HAS_INIT: tl.constexpr, NEED_FINAL: tl.constexpr, POLY_EVERY: tl.constexpr,
               STATE_IN_THREAD: tl.constexpr):
    s = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    DN = D * N
    s64 = s.to(tl.int64)
    st_off = offs_d[None, :] * N + offs_n[:, None]          # (NP, BD) offsets in a (D, N) state
    a2 = load_state(A2, pdb, pdb >= 0, N, BD, NP, STATE_IN_THREAD)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dsk = tl.load(Dsk + offs_d)
    else:
        dsk = tl.zeros([BD], dtype=tl.float32)
    if HAS_INIT:
        h = load_state(init + s64 * DN, pdb, s >= 0, N, BD, NP, STATE_IN_THREAD)
    else:
        h = tl.zeros([NP, BD], dtype=tl.float32)
    tok0 = tl.load(cu_seq + s).to(tl.int64)
    slen = tl.load(cu_seq + s + 1).to(tl.int64) - tok0
    nl0 = tl.load(cu_nl + s).to(tl.int64)
    if REVERSE:
        first = tok0 + slen - 1
    else:
        first = tok0
    last = tl.maximum(slen - 1, 0)
    nck = (slen + (L - 1)) // L
    u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
        tl.where(slen > 0, first, 0), u, delta, Bm, Cm, z, u, delta, offs_d, offs_n, mask_n,
        D, G, N, g, True, HAS_Z, False, False)
    for k in range(0, nck):
        i0 = k * L
        sum_dt = tl.zeros([BD], dtype=tl.float32)
        for j in range(0, tl.minimum(slen - i0, L)):
            i = i0 + j
            # widen this step's inputs before the prefetch overwrites their registers
            uu, dd = u_n.to(tl.float32), d_n.to(tl.float32)
            bb, cc, zz = b_n.to(tl.float32), c_n.to(tl.float32), z_n.to(tl.float32)
            # prefetch the next step (the segment's last step re-reads its own row)
            u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
                first + tl.minimum(i + 1, last) * STEP, u, delta, Bm, Cm, z, u, delta,
                offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, False, False)
            h, y, dt = output_step(h, a2, i, uu, dd, bb, cc, zz, bias, dsk,
                                   SOFTPLUS, FAST, HAS_Z, POLY_EVERY)
            sum_dt += dt
            tl.store(out + (first + i * STEP) * D + offs_d, y.to(out.dtype.element_ty))
        # the backward's record: end state and sum(dt) of every chunk but the segment's last
        row = nl0 + k
        not_last = k < nck - 1
        tl.store(hs + row * DN + st_off, h, mask=and_scalar(mask_n[:, None], not_last))
        tl.store(sdt + row * D + offs_d, sum_dt, mask=and_scalar(offs_d < D, not_last))
    if NEED_FINAL:
        tl.store(final + s64 * DN + st_off, h, mask=mask_n[:, None])
