"""Forward pass 1 of the chunked forward: local end state and sum(dt) of every chunk that is not
the last of its segment."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import channel_block, decay, softplus, step_inputs


@triton.jit
def _row_info(r, cu_seq, cu_nl, row_seg, S, n_rows_bound,
              L: tl.constexpr, REVERSE: tl.constexpr):
    """First token of chunk-state row ``r`` (a full chunk, not its segment's last)."""
    s = tl.minimum(tl.load(row_seg + tl.minimum(r, n_rows_bound - 1)), S - 1)
    k = r - tl.load(cu_nl + s)
    tok0 = tl.load(cu_seq + s)
    if REVERSE:
        base = tl.load(cu_seq + s + 1) - 1 - k * L
    else:
        base = tok0 + k * L
    return base.to(tl.int64)


@triton.jit(do_not_specialize=("S", "n_rows_bound", "nprog"))
def fwd_chunk_state(u, delta, A2, Bm, dbias, cu_seq, cu_nl, row_seg, hs, sdt,
                    S, n_rows_bound, nprog, D, G, N: tl.constexpr, dpg,
                    L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                    REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                    HAS_BIAS: tl.constexpr, POLY_EVERY: tl.constexpr,
                    STATE_IN_THREAD: tl.constexpr):
    """Local end state (from h = 0) and sum(dt) of every full chunk that is not the last of its
    segment: programs walk the rows of ``hs`` directly, so last chunks (every chunk of a
    single-chunk segment) cost nothing, not even their metadata loads."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d, offs_n, mask_n, g, st_off, a2, bias, _dsk = channel_block(
        pdb, A2, dbias, A2, dpg, N, BD, NP, HAS_BIAS, False, STATE_IN_THREAD)
    n_rows = tl.load(cu_nl + S)                      # rows that exist (<= n_rows_bound)
    for r in range(pid, n_rows, nprog):
        base = _row_info(r, cu_seq, cu_nl, row_seg, S, n_rows_bound, L, REVERSE)
        h = tl.zeros([NP, BD], dtype=tl.float32)
        st = tl.zeros([BD], dtype=tl.float32)
        u_n, d_n, b_n, _c, _z, _o, _p = step_inputs(
            base, u, delta, Bm, Bm, u, u, delta, offs_d, offs_n, mask_n, D, G, N, g,
            False, False, False, False)
        for i in range(0, L):
            uu = u_n.to(tl.float32)
            dt = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            # prefetch the next step (the last step re-reads its own row)
            u_n, d_n, b_n, _c, _z, _o, _p = step_inputs(
                base + tl.minimum(i + 1, L - 1) * STEP, u, delta, Bm, Bm, u, u, delta,
                offs_d, offs_n, mask_n, D, G, N, g, False, False, False, False)
            dt = softplus(dt, SOFTPLUS, FAST)
            h = decay(a2, dt, i, POLY_EVERY) * h + bv[:, None] * (dt * uu)[None, :]
            st += dt
        row = base * 0 + r                           # int64 (r is a plain int when interpreted)
        tl.store(hs + row * D * N + st_off, h,
                 mask=mask_n[:, None])
        tl.store(sdt + row * D + offs_d, st)
