"""Triton backend of the grouped variable-length selective scan (forward and backward).

Recurrence, per segment ``s`` of ``cu_seqlens`` and channel ``d`` (``g = d // (D // G)``)::

    dt_t = softplus(delta_t[d] + delta_bias[d])        (or delta_t[d] + delta_bias[d])
    h_t  = exp(dt_t * A[d]) * h_{t-1} + dt_t * B_t[g] * u_t[d]          h_t: (N,) float32
    y_t  = <C_t[g], h_t> + D[d] * u_t[d];  out_t = y_t * silu(z_t[d])   (gate only if z given)
    h_{-1} = initial_state[s] (zeros if None); reverse=True walks each segment end -> start;
    final_state[s] = h after the segment's last step (the initial state for an empty segment).

Shapes::

    u, delta, z, dout: (T, D)      float32 / float16 / bfloat16 (each may differ)
    A: (D, N) float32              B, C: (T, G, N) any float dtype, G divides D
    D, delta_bias: (D,) float32    cu_seqlens: (S+1,) int32, leading 0, last == T
    initial_state, final_state, dfinal_state: (S, D, N) float32

Work decomposition. Time is cut into chunks of at most ``L`` steps that never cross a segment
boundary (chunk c of segment s covers scan positions [c*L, (c+1)*L) of that segment), so one
launch covers thousands of short segments and a million-token segment alike. Forward:

1. ``_fwd_chunk_state``: every chunk that is *not* the last of its segment scans from h = 0 and
   stores its end state and sum(dt) (one row per such chunk: at most T // L rows).
2. ``_fwd_carry``: per (segment, block of (d, n) pairs) an associative scan over that segment's
   chunk rows turns the local end states into true end states, in place
   (h_end(c) = h_loc(c) + exp(A * sum dt(c)) * h_end(c-1)). It also writes final_state of empty
   segments.
3. ``_fwd_output``: every chunk rescans from its true start state and writes ``out``; the last
   chunk of a segment writes final_state.

Single-chunk segments skip steps 1-2 (their programs exit at once), so short segments pay no
state traffic. The chunk end states and sum(dt) (``chunk_states``) are what the backward reuses; the
backward never stores h per step: it recomputes it inside each chunk.

Backward (per chunk, with G = dL/dh at the chunk's last step coming from later chunks)::

    dh_t = C_t * dy_t + exp(dt_{t+1} A) dh_{t+1}
    E_t := dh_t * exp(dt_t A) * h_{t-1}                  (gradient of log-decay, per (d, n))
         = G * h_end + sum_{s >= t in chunk} (C_s dy_s h_s - dt_s B_s u_s dh_s)

The identity for E splits every term that needs h and dh at the same step into an h-part,
summed in a forward-order pass (``_bwd_h_pass``: recomputes h; writes dz, dC, the per-token
sum_n A C h dy into the ddelta buffer, the chunk's gradient towards its start state) and a
dh-part summed in a reverse-order pass (``_bwd_dh_pass``: du, ddelta, dB). Between them
``_bwd_carry`` runs the chunk-level reverse recurrence X(c) = g_loc(c) + exp(A sum dt(c)) X(c+1).
With S_t the sum of dt from the chunk start to t (inclusive), Stot its chunk total and
w_s = C_s dy_s h_s - dt_s B_s u_s dh_s::

    dA = sum_chunks [ (E_start + E_end) * Stot / 2 + sum_s w_s * (S_s - Stot / 2) ]

E_start / E_end (gradient into the chunk's start / end state times that state) are exact from
the saved states and the carried gradients; centring the weights on Stot / 2 halves the
cancellation between the two halves of w. The relative error of dA grows with the chunk
length, which is why CHUNK is 64 (128 is ~10% faster on the 1M-token workload but lands at
~1e-5 relative error in float32 tests). The absolute error of dA (and of ddelta's A-part) is
about float32 epsilon times sum |C dy h| over a chunk whatever A is, so for channels whose
decay underflows (|A| dt >> 30) the tiny true dA comes back as rounding noise of that size.

GPU code path: a program holds a (N, BD) float32 state tile, prefetches the next step's inputs
one iteration ahead, and takes log2 in softplus as ``lg2.approx`` (libdevice's log2f is a long
polynomial); the interpreter path uses ``tl.log2`` and walks the carry rows one at a time.
Per-channel vectors are 1-D: Triton then picks a (4 states x 4 channels per thread) layout for
the tile, so each thread unpacks only 4 of the 16 B and C values per step and the sums over
channels (dB, dC) need 3 shuffle rounds, at the price of shared-memory layout conversions (and
barriers) for the 1-D vectors each step. Keeping every vector 2-D gives a barrier-free step
loop with one channel and all 16 states per thread, but more instructions per step (forward
199 -> 216, backward h-pass 458 -> 601 in the sm_90 SASS) and it measured slower on the GPU
(benchmarks/NOTES_scan_gpu.md).

Determinism: no atomics. dB/dC are written per token (a program holds every channel of a group
or writes one slice of a partial buffer summed afterwards); dA, dD and ddelta_bias come from
per-program partial buffers summed with ``torch.sum`` in a fixed order, so results are bitwise
reproducible on one GPU for the same launch configuration.

Host syncs: none. Grids use bounds known from shapes (chunks <= T // L + S); chunk metadata
(per-segment chunk offsets, each chunk's and each state row's segment) is built with torch ops
on the device, once per ``cu_seqlens`` tensor (cached by identity and in-place version, so the
layers of a model and the backward share it; never cached during CUDA-graph capture), and
programs past the true chunk count exit. The functions are CUDA-graph capturable.

``exp`` is ``exp2`` with log2(e) folded into ``A`` once per launch. Numerics: float32 state and
accumulation throughout. Kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import collections
import weakref

import torch
import triton
import triton.language as tl

from geossm.packed import tensor_version

# tl.sum / tl.sigmoid are jit functions: under TRITON_INTERPRET=1 every call re-patches the
# language (milliseconds each), so kernels call tl.reduce with the combine function the
# interpreter recognises and spell out the sigmoid.
_SUM = tl.standard._sum_combine

_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)
LN2 = tl.constexpr(0.6931471805599453)

CHUNK = 64           # time steps per chunk on the GPU (matters for multi-chunk segments only)
CHUNK_INTERPRET = 16  # under the interpreter: small tests still cross chunk boundaries
MAX_BD = 64          # channels per program; a program keeps a (N, BD) float32 state tile
NUM_WARPS_FWD = None  # None: BD // 32 warps, so that N stays inside a thread
NUM_WARPS_BWD = None
MAX_BD_BWD = 32       # channels per backward program: one warp, no cross-warp sums (None: MAX_BD)
MAXNREG_FWD = None    # register cap per thread of the forward kernels (None: compiler's choice)


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


# --------------------------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _and(m, cond):
    # `vector & scalar` masks are rejected by the interpreter: broadcast the scalar explicitly
    return m & ((m.to(tl.int32) * 0 + cond.to(tl.int32)) != 0)


@triton.jit
def _combine(a1, b1, a2, b2):
    # affine maps h -> a*h + b composed in time order (1 first, then 2)
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """softplus(x) (x itself when SOFTPLUS is off); on the GPU log2 is one ``lg2.approx``
    (libdevice's log2f is a ~30-instruction polynomial)."""
    y = x
    if SOFTPLUS:
        if FAST:
            lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r",
                                           [1.0 + tl.exp2(x * LOG2E)],
                                           dtype=tl.float32, is_pure=True, pack=1)
        else:
            lg = tl.log2(1.0 + tl.exp2(x * LOG2E))
        y = tl.where(x > 20.0, x, lg * LN2)
    return y


@triton.jit
def _meta_load(c, meta, n_chunks_bound):
    """The raw metadata row of chunk ``c``: seven independent loads of one 32-byte row (a single
    round trip; the row layout is built by ``_Plan``)."""
    row = meta + tl.minimum(c, n_chunks_bound - 1) * 8
    return (tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6))


@triton.jit
def _meta_decode(c, valid, s, k, nck, tok0, slen, nl0, L: tl.constexpr, REVERSE: tl.constexpr):
    """Segment, position and extent of chunk ``c`` from its row (clen == 0 past the last chunk)."""
    valid = valid != 0
    i0 = k * L
    clen = tl.where(valid, tl.minimum(slen - i0, L), 0)
    if REVERSE:
        base = tok0 + slen - 1 - i0
    else:
        base = tok0 + i0
    return valid, s, k, nck, clen, base.to(tl.int64), nl0


@triton.jit
def _chunk_info(c, meta, n_chunks_bound, L: tl.constexpr, REVERSE: tl.constexpr):
    """Segment, position and extent of chunk ``c`` (clen == 0 when c is past the last chunk)."""
    v, s, k, nck, tok0, slen, nl0 = _meta_load(c, meta, n_chunks_bound)
    return _meta_decode(c, v, s, k, nck, tok0, slen, nl0, L, REVERSE)


# --------------------------------------------------------------------------------------------
# forward kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _row_info(r, cu_seq, cu_nl, row_seg, S, n_rows_bound,
              L: tl.constexpr, REVERSE: tl.constexpr):
    """Segment and first token of chunk-state row ``r`` (a full chunk, not its segment's last)."""
    s = tl.minimum(tl.load(row_seg + tl.minimum(r, n_rows_bound - 1)), S - 1)
    k = r - tl.load(cu_nl + s)
    tok0 = tl.load(cu_seq + s)
    if REVERSE:
        base = tl.load(cu_seq + s + 1) - 1 - k * L
    else:
        base = tok0 + k * L
    return base.to(tl.int64)


@triton.jit
def _fwd_chunk_state(u, delta, A2, Bm, dbias, cu_seq, cu_nl, row_seg, hs, sdt,
                     S, n_rows_bound, nprog, D, G, N, dpg,
                     L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                     REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                     HAS_BIAS: tl.constexpr):
    """Local end state (from h = 0) and sum(dt) of every full chunk that is not the last of its
    segment: programs walk the rows of ``hs`` directly, so last chunks (every chunk of a
    single-chunk segment) cost nothing, not even their metadata loads."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    # (NP, BD): N runs inside a thread so sums over N need no shuffles
    a2 = tl.load(A2 + offs_d[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0.0)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    n_rows = tl.load(cu_nl + S)                      # rows that exist (<= n_rows_bound)
    for r in range(pid, n_rows, nprog):
        base = _row_info(r, cu_seq, cu_nl, row_seg, S, n_rows_bound, L, REVERSE)
        h = tl.zeros([NP, BD], dtype=tl.float32)
        st = tl.zeros([BD], dtype=tl.float32)
        tn = base
        u_n = tl.load(u + tn * D + offs_d)
        d_n = tl.load(delta + tn * D + offs_d)
        b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        for i in range(0, L):
            uu = u_n.to(tl.float32)
            dt = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            # prefetch the next step (the last step re-reads its own row): hides load latency
            tn = base + tl.minimum(i + 1, L - 1) * STEP
            u_n = tl.load(u + tn * D + offs_d)
            d_n = tl.load(delta + tn * D + offs_d)
            b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            dt = _softplus(dt, SOFTPLUS, FAST)
            h = tl.exp2(a2 * dt[None, :]) * h + bv[:, None] * (dt * uu)[None, :]
            st += dt
        row = base * 0 + r                           # int64 (r is a plain int when interpreted)
        tl.store(hs + row * D * N + offs_d[None, :] * N + offs_n[:, None], h,
                 mask=mask_n[:, None])
        tl.store(sdt + row * D + offs_d, st)


@triton.jit
def _fwd_carry(A2, hs, sdt, cu_ch, cu_nl, init, final, D, N, DN,
               K: tl.constexpr, BDN: tl.constexpr, HAS_INIT: tl.constexpr,
               NEED_FINAL: tl.constexpr, USE_SCAN: tl.constexpr):
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
    if NEED_FINAL:
        # an empty segment's final state is its initial state
        tl.store(final + s.to(tl.int64) * DN + dn, carry, mask=_and(mdn, nck == 0))
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
            acum, bcum = tl.associative_scan((a, b), 0, _combine)
            hend = bcum + acum * carry[None, :]
            tl.store(hs + row[:, None] * DN + dn[None, :], hend, mask=m)
            # the last row is the state after the whole block (masked rows are identities);
            # tl.reduce would not do: it may swap the operands of this non-commutative combine
            carry = tl.reduce(tl.where((rk == K - 1)[:, None], hend, 0.0), 0, _SUM)
    else:
        # row by row (the interpreter runs a scan's combine per element, far slower)
        for r in range(0, nrows):
            row = nl0 + r
            b = tl.load(hs + row * DN + dn, mask=mdn, other=0.0)
            sd = tl.load(sdt + row * D + dn // N, mask=mdn, other=0.0)
            carry = b + tl.exp2(a2 * sd) * carry
            tl.store(hs + row * DN + dn, carry, mask=mdn)


@triton.jit
def _fwd_output(u, delta, A2, Bm, Cm, Dsk, z, dbias, out, init, final, hs,
                chunk_meta,
                S, n_chunks_bound, nprog, D, G, N, dpg,
                L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                HAS_BIAS: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                NEED_FINAL: tl.constexpr):
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    st_off = offs_d[None, :] * N + offs_n[:, None]          # (NP, BD) offsets in a (D, N) state
    a2 = tl.load(A2 + st_off, mask=mask_n[:, None], other=0.0)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dsk = tl.load(Dsk + offs_d)
    else:
        dsk = tl.zeros([BD], dtype=tl.float32)
    DN = D * N
    for c in range(pid, n_chunks_bound, nprog):
        valid, s, k, nck, clen, base, nl0 = _chunk_info(c, chunk_meta, n_chunks_bound,
                                                       L, REVERSE)
        prev = (nl0 + k - 1).to(tl.int64)
        h = tl.load(hs + prev * DN + st_off, mask=_and(mask_n[:, None], valid & (k > 0)), other=0.0)
        if HAS_INIT:
            h += tl.load(init + s.to(tl.int64) * DN + st_off,
                         mask=_and(mask_n[:, None], valid & (k == 0)), other=0.0)
        tn = tl.where(clen > 0, base, 0)
        u_n = tl.load(u + tn * D + offs_d)
        d_n = tl.load(delta + tn * D + offs_d)
        b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        if HAS_Z:
            z_n = tl.load(z + tn * D + offs_d)
        for i in range(0, clen):
            tok = base + i * STEP
            uu = u_n.to(tl.float32)
            dt = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            cv = c_n.to(tl.float32)
            if HAS_Z:
                zz = z_n.to(tl.float32)
            # prefetch the next step (the last step re-reads its own row): hides load latency
            tn = base + tl.minimum(i + 1, clen - 1) * STEP
            u_n = tl.load(u + tn * D + offs_d)
            d_n = tl.load(delta + tn * D + offs_d)
            b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            if HAS_Z:
                z_n = tl.load(z + tn * D + offs_d)
            dt = _softplus(dt, SOFTPLUS, FAST)
            h = tl.exp2(a2 * dt[None, :]) * h + bv[:, None] * (dt * uu)[None, :]
            y = tl.reduce(h * cv[:, None], 0, _SUM) + dsk * uu
            if HAS_Z:
                y = y * zz * (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
            tl.store(out + tok * D + offs_d, y.to(out.dtype.element_ty))
        if NEED_FINAL:
            tl.store(final + s.to(tl.int64) * DN + st_off, h,
                     mask=_and(mask_n[:, None], valid & (k == nck - 1)))


# --------------------------------------------------------------------------------------------
# backward kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _bwd_h_pass(u, delta, A2, Bm, Cm, Dsk, z, dbias, dout, init, hs, dfinal,
                chunk_meta,
                dz, phi, dC, gbuf, dinit, kappa, stot, dA_part, dD_part,
                S, n_chunks_bound, nprog, D, G, N, dpg, nblk_g, T,
                L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                HAS_BIAS: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                HAS_DFINAL: tl.constexpr, NEED_DINIT: tl.constexpr):
    """Forward-order pass of the backward: recompute h inside each chunk (h-part of the grads)."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    slot = (pdb % nblk_g).to(tl.int64)                     # partial-dC slice of this block
    st_off = offs_d[None, :] * N + offs_n[:, None]
    a2 = tl.load(A2 + st_off, mask=mask_n[:, None], other=0.0)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dsk = tl.load(Dsk + offs_d)
    else:
        dsk = tl.zeros([BD], dtype=tl.float32)
    DN = D * N
    da_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dd_acc = tl.zeros([BD], dtype=tl.float32)
    for c in range(pid, n_chunks_bound, nprog):
        valid, s, k, nck, clen, base, nl0 = _chunk_info(c, chunk_meta, n_chunks_bound,
                                                       L, REVERSE)
        s64 = s.to(tl.int64)
        prev = (nl0 + k - 1).to(tl.int64)
        h = tl.load(hs + prev * DN + st_off, mask=_and(mask_n[:, None], valid & (k > 0)), other=0.0)
        if HAS_INIT:
            h += tl.load(init + s64 * DN + st_off,
                         mask=_and(mask_n[:, None], valid & (k == 0)), other=0.0)
        p = tl.full([NP, BD], 1.0, dtype=tl.float32)     # decay from chunk start to t
        gl = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t p_t * C_t dy_t
        sloc = tl.zeros([BD], dtype=tl.float32)          # sum of dt from chunk start, inclusive
        wa = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t sloc_t C_t dy_t h_t
        wb = tl.zeros([NP, BD], dtype=tl.float32)        # sum_t C_t dy_t h_t
        tn = tl.where(clen > 0, base, 0)
        u_n = tl.load(u + tn * D + offs_d)
        d_n = tl.load(delta + tn * D + offs_d)
        b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        o_n = tl.load(dout + tn * D + offs_d)
        if HAS_Z:
            z_n = tl.load(z + tn * D + offs_d)
        for i in range(0, clen):
            tok = base + i * STEP
            uu = u_n.to(tl.float32)
            dt = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            cv = c_n.to(tl.float32)
            do = o_n.to(tl.float32)
            if HAS_Z:
                zz = z_n.to(tl.float32)
            tn = base + tl.minimum(i + 1, clen - 1) * STEP      # prefetch the next step
            u_n = tl.load(u + tn * D + offs_d)
            d_n = tl.load(delta + tn * D + offs_d)
            b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            o_n = tl.load(dout + tn * D + offs_d)
            if HAS_Z:
                z_n = tl.load(z + tn * D + offs_d)
            dt = _softplus(dt, SOFTPLUS, FAST)
            a = tl.exp2(a2 * dt[None, :])
            h = a * h + bv[:, None] * (dt * uu)[None, :]
            p = p * a
            sloc += dt
            hc = h * cv[:, None]
            if HAS_Z:
                y = tl.reduce(hc, 0, _SUM) + dsk * uu
                sz = (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
                dy = do * zz * sz
                dzv = do * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz + tok * D + offs_d, dzv.to(dz.dtype.element_ty))
            else:
                dy = do
            cm = cv[:, None] * dy[None, :]
            gl += p * cm
            tl.store(phi + tok * D + offs_d, dy * (tl.reduce(a2 * hc, 0, _SUM) * LN2))
            v = h * dy[None, :]
            tl.store(dC + ((slot * T + tok) * G + g) * N + offs_n, tl.reduce(v, 1, _SUM),
                     mask=mask_n)
            cvh = v * cv[:, None]
            wa += sloc[None, :] * cvh
            wb += cvh
            dd_acc += dy * uu
        # dA weights centred on the chunk's middle (S_t - Stot/2): halves the cancellation
        da_acc += wa - (0.5 * sloc)[None, :] * wb
        is_last = valid & (k == nck - 1)
        tl.store(stot + s64 * D + offs_d, sloc, mask=_and(offs_d < D, is_last))
        x = gl
        if HAS_DFINAL:
            gf = tl.load(dfinal + s64 * DN + st_off, mask=_and(mask_n[:, None], is_last), other=0.0)
            da_acc += gf * h * (0.5 * sloc)[None, :]
            tl.store(kappa + s64 * D + offs_d, (tl.reduce(a2 * gf * h, 0, _SUM) * LN2),
                     mask=_and(offs_d < D, is_last))
            x += p * gf
        tl.store(gbuf + prev * DN + st_off, x, mask=_and(mask_n[:, None], valid & (k > 0)))
        if NEED_DINIT:
            tl.store(dinit + s64 * DN + st_off, x, mask=_and(mask_n[:, None], valid & (k == 0)))
    tl.store(dA_part + pid.to(tl.int64) * DN + st_off, da_acc, mask=mask_n[:, None])
    tl.store(dD_part + pid.to(tl.int64) * D + offs_d, dd_acc)


@triton.jit
def _bwd_carry(A2, gbuf, sdt, cu_ch, cu_nl, dfinal, dinit, D, N, DN,
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
        tl.store(dinit + s64 * DN + dn, gf, mask=_and(mdn, nck == 0))
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
            acum, bcum = tl.associative_scan((a, b), 0, _combine)
            x = bcum + acum * carry[None, :]
            tl.store(gbuf + row[:, None] * DN + dn[None, :], x, mask=m)
            carry = tl.reduce(tl.where((jk == K - 1)[:, None], x, 0.0), 0, _SUM)
    else:
        for j in range(0, nrows):
            row = nl0 + nrows - 1 - j
            b = tl.load(gbuf + row * DN + dn, mask=mdn, other=0.0)
            sd = tl.load(sdt + (row + 1) * D + dn // N, mask=_and(mdn, row + 1 < nl0 + nrows),
                         other=0.0)
            carry = b + tl.exp2(a2 * sd) * carry
            tl.store(gbuf + row * DN + dn, carry, mask=mdn)
    if NEED_DINIT:
        sd0 = tl.load(sdt + nl0 * D + dn // N, mask=_and(mdn, nck >= 2), other=0.0)
        cur = tl.load(dinit + s64 * DN + dn, mask=_and(mdn, nck >= 2), other=0.0)
        tl.store(dinit + s64 * DN + dn, cur + tl.exp2(a2 * sd0) * carry, mask=_and(mdn, nck >= 2))


@triton.jit
def _bwd_dh_pass(u, delta, A2, Bm, Cm, Dsk, z, dbias, dout, hs, sdt, stot, dfinal, gbuf, kappa,
                 init, dinit,
                 chunk_meta,
                 du, phi, dB, dA_part, dbias_part,
                 S, n_chunks_bound, nprog, D, G, N, dpg, nblk_g, T,
                 L: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                 REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
                HAS_BIAS: tl.constexpr,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr,
                 HAS_INIT: tl.constexpr):
    """Reverse-order pass of the backward: dh inside each chunk; du, ddelta (over phi), dB."""
    pid = tl.program_id(0)
    pdb = tl.program_id(1)
    STEP: tl.constexpr = -1 if REVERSE else 1
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    slot = (pdb % nblk_g).to(tl.int64)
    st_off = offs_d[None, :] * N + offs_n[:, None]
    a2 = tl.load(A2 + st_off, mask=mask_n[:, None], other=0.0)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dsk = tl.load(Dsk + offs_d)
    else:
        dsk = tl.zeros([BD], dtype=tl.float32)
    DN = D * N
    da_acc = tl.zeros([NP, BD], dtype=tl.float32)
    db_acc = tl.zeros([BD], dtype=tl.float32)
    for c in range(pid, n_chunks_bound, nprog):
        valid, s, k, nck, clen, base, nl0 = _chunk_info(c, chunk_meta, n_chunks_bound,
                                                       L, REVERSE)
        s64 = s.to(tl.int64)
        row = (nl0 + k).to(tl.int64)
        not_last = valid & (k < nck - 1)
        is_last = valid & (k == nck - 1)
        mst = _and(mask_n[:, None], not_last)
        # G: gradient reaching the chunk's last state from later chunks
        q = tl.load(gbuf + row * DN + st_off, mask=mst, other=0.0)
        hend = tl.load(hs + row * DN + st_off, mask=mst, other=0.0)
        kap = (tl.reduce(a2 * q * hend, 0, _SUM) * LN2)
        # E at both ends of the chunk (gradient into a state times that state), for dA
        prev = (nl0 + k - 1).to(tl.int64)
        mprev = _and(mask_n[:, None], valid & (k > 0))
        eboth = q * hend + tl.load(gbuf + prev * DN + st_off, mask=mprev, other=0.0) * \
            tl.load(hs + prev * DN + st_off, mask=mprev, other=0.0)
        if HAS_INIT:
            mfirst = _and(mask_n[:, None], valid & (k == 0))
            eboth += tl.load(dinit + s64 * DN + st_off, mask=mfirst, other=0.0) * \
                tl.load(init + s64 * DN + st_off, mask=mfirst, other=0.0)
        # the chunk's sum of dt (pass 1 saved it for non-last chunks, the h-pass for last ones)
        half = 0.5 * (tl.load(sdt + row * D + offs_d, mask=_and(offs_d < D, not_last), other=0.0)
                      + tl.load(stot + s64 * D + offs_d, mask=_and(offs_d < D, is_last), other=0.0))
        da_acc += eboth * half[None, :]
        if HAS_DFINAL:
            q += tl.load(dfinal + s64 * DN + st_off, mask=_and(mask_n[:, None], is_last), other=0.0)
            kap += tl.load(kappa + s64 * D + offs_d, mask=_and(offs_d < D, is_last), other=0.0)
        big_phi = kap                                        # sum_n A E_t, built backwards
        rsum = tl.zeros([BD], dtype=tl.float32)               # sum of dt after t in the chunk
        tn = tl.where(clen > 0, base + (clen - 1) * STEP, 0)
        u_n = tl.load(u + tn * D + offs_d)
        d_n = tl.load(delta + tn * D + offs_d)
        b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
        o_n = tl.load(dout + tn * D + offs_d)
        p_n = tl.load(phi + tn * D + offs_d)
        if HAS_Z:
            z_n = tl.load(z + tn * D + offs_d)
        for j in range(0, clen):
            tok = base + (clen - 1 - j) * STEP
            uu = u_n.to(tl.float32)
            dl = d_n.to(tl.float32) + bias
            bv = b_n.to(tl.float32)
            cv = c_n.to(tl.float32)
            do = o_n.to(tl.float32)
            ph = p_n
            if HAS_Z:
                zz = z_n.to(tl.float32)
            # prefetch the previous step (the first step re-reads its own row, before the
            # ddelta store below overwrites its phi)
            tn = base + (clen - 1 - tl.minimum(j + 1, clen - 1)) * STEP
            u_n = tl.load(u + tn * D + offs_d)
            d_n = tl.load(delta + tn * D + offs_d)
            b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
            o_n = tl.load(dout + tn * D + offs_d)
            p_n = tl.load(phi + tn * D + offs_d)
            if HAS_Z:
                z_n = tl.load(z + tn * D + offs_d)
            dt = _softplus(dl, SOFTPLUS, FAST)
            if HAS_Z:
                dy = do * zz * (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
            else:
                dy = do
            dh = cv[:, None] * dy[None, :] + q
            q = tl.exp2(a2 * dt[None, :]) * dh
            dhb = dh * bv[:, None]
            sb = tl.reduce(dhb, 0, _SUM)
            sab = (tl.reduce(a2 * dhb, 0, _SUM) * LN2)
            dtu = dt * uu
            tl.store(du + tok * D + offs_d, (dt * sb + dsk * dy).to(du.dtype.element_ty))
            big_phi += ph - dtu * sab
            ddt = uu * sb + big_phi
            if SOFTPLUS:
                ddt = ddt * (1.0 / (1.0 + tl.exp2(-dl * LOG2E)))
            tl.store(phi + tok * D + offs_d, ddt)
            db_acc += ddt
            v = dh * dtu[None, :]
            tl.store(dB + ((slot * T + tok) * G + g) * N + offs_n, tl.reduce(v, 1, _SUM),
                     mask=mask_n)
            # -(S_t - Stot/2) * B_t dt_t u_t dh_t with S_t = Stot - rsum (dt summed after t)
            da_acc += (rsum - half)[None, :] * (v * bv[:, None])
            rsum += dt
    tl.store(dA_part + pid.to(tl.int64) * DN + st_off, da_acc, mask=mask_n[:, None])
    tl.store(dbias_part + pid.to(tl.int64) * D + offs_d, db_acc)


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------

def _pow2_divisor(n: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _num_sms(dev: torch.device) -> int:
    if dev.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(dev).multi_processor_count


class _Plan:
    """Launch geometry and device-side chunk metadata (no host sync: only shapes are read)."""

    def __init__(self, cu_seqlens: torch.Tensor, T: int, D: int, G: int, N: int, dev):
        S = cu_seqlens.numel() - 1
        L = CHUNK if dev.type == "cuda" else CHUNK_INTERPRET
        self.S, self.T, self.D, self.G, self.N, self.L = S, T, D, G, N, L
        self.dpg = D // G
        self.BD = _pow2_divisor(self.dpg, MAX_BD)
        self.n_dblk = D // self.BD
        self.nblk_g = self.dpg // self.BD                  # blocks sharing one group
        self.NP = max(2, triton.next_power_of_2(N))
        self.num_warps = NUM_WARPS_FWD or max(1, min(4, self.BD // 32))
        # the backward may use narrower channel blocks (its passes are register-bound)
        self.BD_bwd = _pow2_divisor(self.dpg, MAX_BD_BWD or MAX_BD)
        self.n_dblk_bwd = D // self.BD_bwd
        self.nblk_g_bwd = self.dpg // self.BD_bwd
        self.num_warps_bwd = NUM_WARPS_BWD or max(1, min(4, self.BD_bwd // 32))
        self.n_chunks_bound = max(1, T // L + S)            # ceil(len/L) <= len/L + 1 per segment
        self.n_rows = max(1, T // L)                        # non-last chunks are full: <= T // L
        sms = _num_sms(dev)
        per_sm = 8 if dev.type == "cuda" else 1
        self.nprog = max(1, min(self.n_chunks_bound, (sms * per_sm * 4) // max(1, self.n_dblk)))
        if dev.type != "cuda":
            self.nprog = min(self.n_chunks_bound, 4)
        self.nprog_rows = max(1, min(self.nprog, self.n_rows))
        self.nprog_bwd = self.nprog
        if dev.type == "cuda":
            self.nprog_bwd = max(1, min(self.n_chunks_bound,
                                        (sms * per_sm * 4) // max(1, self.n_dblk_bwd)))
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
        nck = (lens + (L - 1)) // L
        zero = torch.zeros(1, dtype=torch.int32, device=dev)
        self.cu_ch = torch.cat([zero, torch.cumsum(nck, 0, dtype=torch.int32)])
        self.cu_nl = torch.cat([zero, torch.cumsum((nck - 1).clamp_(min=0), 0, dtype=torch.int32)])
        ar = torch.arange(self.n_chunks_bound, device=dev, dtype=torch.int32)
        self.chunk_seg = torch.searchsorted(self.cu_ch[1:], ar, right=True, out_int32=True)
        # one 8-int row per chunk (valid, segment, k, chunks of the segment, segment's first
        # token, segment length, segment's first state row, pad): one round trip per chunk
        seg = self.chunk_seg.clamp(max=max(S - 1, 0)).long()
        if S > 0:
            cols = [ar < self.cu_ch[-1], seg, ar - self.cu_ch[seg], nck[seg],
                    cu_seqlens[:-1][seg], lens[seg], self.cu_nl[seg], torch.zeros_like(ar)]
            self.meta = torch.stack([col.to(torch.int32) for col in cols], 1).contiguous()
        else:
            self.meta = torch.zeros(self.n_chunks_bound, 8, dtype=torch.int32, device=dev)
        # segment of every chunk-state row (rows past the true count point past the last one)
        self.row_seg = torch.searchsorted(self.cu_nl[1:], ar[:self.n_rows], right=True,
                                          out_int32=True)
        # carry passes: one program per (segment, block of BDN (d, n) pairs), walking that
        # segment's chunk rows K at a time. Few segments (one long sequence) get narrow blocks
        # so that enough programs run side by side; many short ones get wide blocks.
        DN = D * N
        bdn = triton.next_power_of_2(DN)
        while bdn > 8 and S * triton.cdiv(DN, bdn) < 4 * sms:
            bdn //= 2
        self.BDN = min(bdn, 1024)
        self.K = max(8, min(512, 4096 // self.BDN))


_PLAN_CACHE: "collections.OrderedDict" = collections.OrderedDict()
_PLAN_CACHE_SIZE = 16


def _plan_for(cu_seqlens, T, D, G, N, dev) -> _Plan:
    """The launch plan of ``cu_seqlens``, cached per tensor (identity and in-place version).

    Building one costs ~10 small device ops; the layers of a model and the backward share one
    ``cu_seqlens`` tensor per batch, so they share one plan. Never cached while a CUDA graph is
    being captured: a captured plan must live in the graph's own memory pool.
    """
    capturing = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    version = tensor_version(cu_seqlens)
    if capturing or version is None or torch.compiler.is_compiling():
        return _Plan(cu_seqlens, T, D, G, N, dev)
    key = (id(cu_seqlens), version, T, D, G, N, str(dev), CHUNK, MAX_BD,
           MAX_BD_BWD, NUM_WARPS_FWD, NUM_WARPS_BWD)
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0]() is cu_seqlens:
        _PLAN_CACHE.move_to_end(key)
        return hit[1]
    plan = _Plan(cu_seqlens, T, D, G, N, dev)
    _PLAN_CACHE[key] = (weakref.ref(cu_seqlens), plan)
    while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return plan


def _common(u, delta, A, B, cu_seqlens):
    T, D = u.shape
    _, G, N = B.shape
    plan = _plan_for(cu_seqlens, T, D, G, N, u.device)
    A2 = (A.float() * _LOG2E).contiguous()
    return plan, A2


def _reg_cap(u) -> dict:
    """Launch option capping the forward kernels' registers per thread (MAXNREG_FWD)."""
    if MAXNREG_FWD and not _interpreting(u):
        return dict(maxnreg=MAXNREG_FWD)
    return {}


def _dummy(dev):
    return torch.empty(1, dtype=torch.float32, device=dev)


def _chunk_rows(T: int, device) -> int:
    L = CHUNK if torch.device(device).type == "cuda" else CHUNK_INTERPRET
    return max(1, T // L)


def chunk_states_shape(T: int, D: int, N: int, device="cuda") -> tuple[int]:
    """Shape of the flat float32 ``chunk_states`` the forward returns for the backward: the
    true end state (D, N) and sum(dt) (D,) of every chunk that is not the last of its segment
    (at most T // chunk rows). Depends on shapes and the device type only."""
    rows = _chunk_rows(T, device)
    return (rows * D * (N + 1),)


def _split_states(buf, rows, D, N):
    return buf[:rows * D * N].view(rows, D, N), buf[rows * D * N:].view(rows, D)


def _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens, initial_state,
                    delta_softplus, reverse, final):
    """Steps 1-2 of the forward: true end state of every non-last chunk, and sum(dt) per chunk."""
    dev = u.device
    D, N = plan.D, plan.N
    buf = torch.empty(chunk_states_shape(plan.T, D, N, dev), dtype=torch.float32, device=dev)
    hs, sdt = _split_states(buf, plan.n_rows, D, N)
    dm = _dummy(dev)
    if plan.S == 0:
        return buf
    if plan.T > 0:
        _fwd_chunk_state[(plan.nprog_rows, plan.n_dblk)](
            u, delta, A2, B, delta_bias if delta_bias is not None else dm, cu_seqlens,
            plan.cu_nl, plan.row_seg, hs, sdt,
            plan.S, plan.n_rows, plan.nprog_rows, D, plan.G, N, plan.dpg,
            L=plan.L, BD=plan.BD, NP=plan.NP, REVERSE=reverse, SOFTPLUS=delta_softplus,
            FAST=not _interpreting(u), HAS_BIAS=delta_bias is not None,
            num_warps=plan.num_warps, **_reg_cap(u))
    DN = D * N
    _fwd_carry[(plan.S, triton.cdiv(DN, plan.BDN))](
        A2, hs, sdt, plan.cu_ch, plan.cu_nl,
        initial_state if initial_state is not None else dm, final if final is not None else dm,
        D, N, DN, K=plan.K, BDN=plan.BDN, HAS_INIT=initial_state is not None,
        NEED_FINAL=final is not None, USE_SCAN=not _interpreting(u), num_warps=4)
    return buf


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
                       delta_softplus: bool, reverse: bool, *, need_final_state: bool = True):
    """Forward of the grouped varlen selective scan (recurrence and shapes: module docstring).

    Returns ``(out, final_state, chunk_states)`` like the numba backend: out (T, D) in
    ``u.dtype``, final_state (S, D, N) float32 (None when ``need_final_state`` is False) and
    chunk_states, a flat float32 tensor of :func:`chunk_states_shape` (chunk end states and
    sums of dt); passing it to :func:`selective_scan_bwd` skips the backward's recomputation
    of them (one recurrence pass). No host sync; deterministic (no atomics).
    """
    T, Dm = u.shape
    S = cu_seqlens.numel() - 1
    N = A.shape[1]
    dev = u.device
    out = torch.empty_like(u)
    final = (torch.empty(S, Dm, N, dtype=torch.float32, device=dev)
             if need_final_state else None)
    plan, A2 = _common(u, delta, A, B, cu_seqlens)
    states = _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens, initial_state,
                             delta_softplus, reverse, final)
    hs, _ = _split_states(states, plan.n_rows, Dm, N)
    dm = _dummy(dev)
    if S > 0 and T > 0:
        _fwd_output[(plan.nprog, plan.n_dblk)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, out,
            initial_state if initial_state is not None else dm, final if final is not None else dm,
            hs, plan.meta,
            S, plan.n_chunks_bound, plan.nprog, Dm, plan.G, N, plan.dpg,
            L=plan.L, BD=plan.BD, NP=plan.NP, REVERSE=reverse, SOFTPLUS=delta_softplus,
            FAST=not _interpreting(u),
            HAS_BIAS=delta_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_INIT=initial_state is not None, NEED_FINAL=final is not None,
            num_warps=plan.num_warps, **_reg_cap(u))
    return out, final, states


def selective_scan_bwd(dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, cu_seqlens,
                       initial_state, delta_softplus: bool, reverse: bool,
                       chunk_states=None):
    """Backward of :func:`selective_scan_fwd` (math in the module docstring).

    Returns ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``: du in u.dtype,
    dz in z.dtype, ddelta (T, D) float32, dA (D, N), dB/dC (T, G, N), dD/ddelta_bias (D,) and
    dinitial_state (S, D, N) float32; None where the input is None. ``dfinal_state`` may be
    None. ``chunk_states`` is the third output of :func:`selective_scan_fwd`; without it the
    chunk states are recomputed (one extra recurrence pass). No host sync;
    deterministic (per-program partial sums reduced with torch.sum, no atomics).
    """
    T, Dm = u.shape
    S = cu_seqlens.numel() - 1
    _, G, N = B.shape
    dev = u.device
    plan, A2 = _common(u, delta, A, B, cu_seqlens)
    if chunk_states is None or chunk_states.numel() == 0:
        chunk_states = _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens,
                                       initial_state, delta_softplus, reverse, None)
    hs, sdt = _split_states(chunk_states, plan.n_rows, Dm, N)
    dout = dout.contiguous()
    dm = _dummy(dev)
    du = torch.empty_like(u)
    dz = torch.empty_like(z) if z is not None else None
    phi = torch.empty(T, Dm, dtype=torch.float32, device=dev)     # becomes ddelta
    nb = plan.nblk_g_bwd
    dC_buf = torch.empty(nb, T, G, N, dtype=torch.float32, device=dev)
    dB_buf = torch.empty(nb, T, G, N, dtype=torch.float32, device=dev)
    gbuf = torch.empty(plan.n_rows, Dm, N, dtype=torch.float32, device=dev)
    need_dinit = initial_state is not None
    dinit = torch.empty(S, Dm, N, dtype=torch.float32, device=dev) if need_dinit else None
    has_dfinal = dfinal_state is not None
    if has_dfinal:
        dfinal_state = dfinal_state.contiguous().float()
    kappa = torch.empty(max(S, 1), Dm, dtype=torch.float32, device=dev) if has_dfinal else dm
    stot = torch.empty(max(S, 1), Dm, dtype=torch.float32, device=dev)   # sum dt, last chunks
    P = plan.nprog_bwd
    dA_part = torch.zeros(P, Dm, N, dtype=torch.float32, device=dev)
    dA_part2 = torch.zeros(P, Dm, N, dtype=torch.float32, device=dev)
    dD_part = torch.zeros(P, Dm, dtype=torch.float32, device=dev)
    dbias_part = torch.zeros(P, Dm, dtype=torch.float32, device=dev)
    common = dict(L=plan.L, BD=plan.BD_bwd, NP=plan.NP, REVERSE=reverse, SOFTPLUS=delta_softplus,
                  FAST=not _interpreting(u),
                  HAS_BIAS=delta_bias is not None, HAS_D=D is not None, HAS_Z=z is not None)
    if S > 0 and T > 0:
        _bwd_h_pass[(P, plan.n_dblk_bwd)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, dout,
            initial_state if initial_state is not None else dm, hs,
            dfinal_state if has_dfinal else dm,
            plan.meta,
            dz if dz is not None else dm, phi, dC_buf, gbuf, dinit if need_dinit else dm, kappa,
            stot, dA_part, dD_part,
            S, plan.n_chunks_bound, P, Dm, G, N, plan.dpg, nb, T,
            HAS_INIT=initial_state is not None, HAS_DFINAL=has_dfinal, NEED_DINIT=need_dinit,
            num_warps=plan.num_warps_bwd, **common)
    if S > 0:
        DN = Dm * N
        _bwd_carry[(S, triton.cdiv(DN, plan.BDN))](
            A2, gbuf, sdt, plan.cu_ch, plan.cu_nl, dfinal_state if has_dfinal else dm,
            dinit if need_dinit else dm, Dm, N, DN, K=plan.K, BDN=plan.BDN,
            HAS_DFINAL=has_dfinal, NEED_DINIT=need_dinit, USE_SCAN=not _interpreting(u),
            num_warps=4)
    if S > 0 and T > 0:
        _bwd_dh_pass[(P, plan.n_dblk_bwd)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, dout, hs, sdt, stot,
            dfinal_state if has_dfinal else dm, gbuf, kappa,
            initial_state if initial_state is not None else dm, dinit if need_dinit else dm,
            plan.meta,
            du, phi, dB_buf, dA_part2, dbias_part,
            S, plan.n_chunks_bound, P, Dm, G, N, plan.dpg, nb, T,
            HAS_DFINAL=has_dfinal, HAS_INIT=initial_state is not None,
            num_warps=plan.num_warps_bwd, **common)
    dA = dA_part.sum(0) + dA_part2.sum(0)
    dB = dB_buf[0] if nb == 1 else dB_buf.sum(0)
    dC = dC_buf[0] if nb == 1 else dC_buf.sum(0)
    dD = dD_part.sum(0) if D is not None else None
    dbias = dbias_part.sum(0) if delta_bias is not None else None
    return du, phi, dA, dB, dC, dD, dz, dbias, dinit
