"""Serial forward pass: one program per (piece of a segment, block of channels) walks its piece
once, from the piece's true start state.

Each (token, channel, state) of the walk takes one exponential and each output is written once.
On the way it stores the end state and sum(dt) of every chunk that is not its segment's last,
the same record the chunked forward leaves for the backward. With ``forward="serial"`` a piece
is a whole segment (no piece has a successor, so the piece carry before it has nothing to do):
one exponential per element overall, parallel over segments x channel blocks only. With
``forward="pieces"`` segments are cut into pieces of ``piece_chunks`` chunks whose start states
come from a chunk-state pass and a carry over pieces (``LaunchConfig.forward``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import (and_scalar, channel_block, load_state, meta_decode, meta_load, output_step,
                   step_inputs)


@triton.jit(do_not_specialize=("n_pieces_bound",))
def fwd_serial(u, delta, A2, Bm, Cm, Dsk, z, dbias, out, init, final, hs, sdt, hp, piece_meta,
               cu_nl, n_pieces_bound, D, G, N: tl.constexpr, dpg,
               L: tl.constexpr, P: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
               REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
               HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
               HAS_INIT: tl.constexpr, NEED_FINAL: tl.constexpr, POLY_EVERY: tl.constexpr,
               STATE_IN_THREAD: tl.constexpr):
    """One program per (piece of P chunks, channel block): the serial walk over a piece from its
    true start state (``hp``: true end states of the non-last pieces, from the piece carry).
    Writes out, the chunk record of the piece's chunks and the segment's final state."""
    c = tl.program_id(0)
    pdb = tl.program_id(1)
    LP: tl.constexpr = L * P
    STEP: tl.constexpr = -1 if REVERSE else 1
    DN = D * N
    offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk = channel_block(
        pdb, A2, dbias, Dsk, dpg, N, BD, NP, HAS_BIAS, HAS_D, STATE_IN_THREAD)
    v, s, k, n_pieces, tok0, slen, pr0 = meta_load(c, piece_meta, n_pieces_bound)
    valid, s, k, n_pieces, plen, first, pr0 = meta_decode(c, v, s, k, n_pieces, tok0, slen, pr0,
                                                         LP, REVERSE)
    s64 = s.to(tl.int64)
    prev = (pr0 + k - 1).to(tl.int64)
    h = load_state(hp + prev * DN, pdb, valid & (k > 0), N, BD, NP, STATE_IN_THREAD)
    if HAS_INIT:
        h += load_state(init + s64 * DN, pdb, valid & (k == 0), N, BD, NP, STATE_IN_THREAD)
    n_chunks = (slen + (L - 1)) // L                         # chunks of the whole segment
    row0 = tl.load(cu_nl + tl.where(valid, s, 0)).to(tl.int64) + k * P
    last = tl.maximum(plen - 1, 0)
    u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
        tl.where(plen > 0, first, 0), u, delta, Bm, Cm, z, u, delta, offs_d, offs_n, mask_n,
        D, G, N, g, True, HAS_Z, False, False)
    for j in range(0, (plen + (L - 1)) // L):
        i0 = j * L
        sum_dt = tl.zeros([BD], dtype=tl.float32)
        for jj in range(0, tl.minimum(plen - i0, L)):
            i = i0 + jj
            # widen this step's inputs before the prefetch overwrites their registers
            uu, dd = u_n.to(tl.float32), d_n.to(tl.float32)
            bb, cc, zz = b_n.to(tl.float32), c_n.to(tl.float32), z_n.to(tl.float32)
            u_n, d_n, b_n, c_n, z_n, _o, _p = step_inputs(
                first + tl.minimum(i + 1, last) * STEP, u, delta, Bm, Cm, z, u, delta,
                offs_d, offs_n, mask_n, D, G, N, g, True, HAS_Z, False, False)
            h, y, dt = output_step(h, a2, i, uu, dd, bb, cc, zz, bias, dsk,
                                   SOFTPLUS, FAST, HAS_Z, POLY_EVERY)
            sum_dt += dt
            tl.store(out + (first + i * STEP) * D + offs_d, y.to(out.dtype.element_ty))
        # the backward's record: end state and sum(dt) of every chunk but the segment's last
        not_last = k * P + j < n_chunks - 1
        row = row0 + j
        tl.store(hs + row * DN + st_off, h, mask=and_scalar(mask_n[:, None], not_last))
        tl.store(sdt + row * D + offs_d, sum_dt, mask=and_scalar(offs_d < D, not_last))
    if NEED_FINAL:
        tl.store(final + s64 * DN + st_off, h,
                 mask=and_scalar(mask_n[:, None], valid & (k == n_pieces - 1)))
