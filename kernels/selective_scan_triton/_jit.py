"""Jit helpers shared by the passes of the Triton selective scan (constants, metadata decoding,
softplus, the per-step input prefetch)."""

from __future__ import annotations

import triton
import triton.language as tl

# tl.sum / tl.sigmoid are jit functions: under TRITON_INTERPRET=1 every call re-patches the
# language (milliseconds each), so kernels call tl.reduce with the combine function the
# interpreter recognises and spell out the sigmoid.
SUM = tl.standard._sum_combine

LOG2E_HOST = 1.4426950408889634
LOG2E = tl.constexpr(LOG2E_HOST)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def and_scalar(m, cond):
    """``m & cond`` for a tensor mask ``m`` and a scalar ``cond``: `vector & scalar` masks are
    rejected by the interpreter, so the scalar is broadcast explicitly."""
    return m & ((m.to(tl.int32) * 0 + cond.to(tl.int32)) != 0)


@triton.jit
def combine_affine(a1, b1, a2, b2):
    """Affine maps h -> a*h + b composed in time order (1 first, then 2)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def softplus(x, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
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
def load_state(ptr, pdb, cond, N, BD: tl.constexpr, NP: tl.constexpr,
               STATE_IN_THREAD: tl.constexpr):
    """The (NP, BD) tile of channels pdb*BD ... of a (D, N) float32 matrix at ``ptr`` (zeros
    where the scalar ``cond`` is false or n >= N).

    With STATE_IN_THREAD the tile is read as a flat vector in (state, channel) order and
    reshaped: Triton then lays the channels across the lanes and every thread keeps all N states
    of its channels, so the step loops sum over N without shuffles and convert no per-channel
    vector. (A direct 2-D load is contiguous along N; Triton then spreads the states of a channel
    over 16 lanes and the loops inherit that layout: the v1 layout.)"""
    if STATE_IN_THREAD:
        flat = tl.arange(0, NP * BD)
        n = flat // BD
        x = tl.load(ptr + (pdb * BD + flat % BD) * N + n, mask=and_scalar(n < N, cond), other=0.0)
        tile = tl.reshape(x, (NP, BD))
    else:
        offs_n = tl.arange(0, NP)
        offs_d = pdb * BD + tl.arange(0, BD)
        tile = tl.load(ptr + offs_d[None, :] * N + offs_n[:, None],
                       mask=and_scalar((offs_n < N)[:, None], cond), other=0.0)
    return tile


@triton.jit
def channel_block(pdb, A2, dbias, Dsk, dpg, N, BD: tl.constexpr, NP: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, STATE_IN_THREAD: tl.constexpr):
    """What a program of channel block ``pdb`` loads once: ``(offs_d, offs_n, mask_n, g,
    st_off, a2, bias, dsk)`` = its channels (BD,), states (NP,) and their mask, its group, the
    (NP, BD) offsets of its tile in a (D, N) state, A * log2(e) as an (NP, BD) tile, and
    delta_bias, D (zeros when absent)."""
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    g = (pdb * BD) // dpg
    st_off = offs_d[None, :] * N + offs_n[:, None]
    a2 = load_state(A2, pdb, pdb >= 0, N, BD, NP, STATE_IN_THREAD)
    if HAS_BIAS:
        bias = tl.load(dbias + offs_d)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        dsk = tl.load(Dsk + offs_d)
    else:
        dsk = tl.zeros([BD], dtype=tl.float32)
    return offs_d, offs_n, mask_n, g, st_off, a2, bias, dsk


@triton.jit
def exp2_poly(x):
    """2**x on the FMA pipe (no MUFU): 2**floor(x) from the exponent bits times a degree-5
    polynomial of the fraction (relative error < 2e-7 on [0, 1), about float32 rounding).
    Inputs below -127 give 0 (as exp2 underflows); the scan's arguments are never positive."""
    xc = tl.maximum(x, -127.0)
    fl = tl.floor(xc)
    f = xc - fl
    # minimax-style coefficients of 2**f on [0, 1) (Horner form)
    p = 1.8775767e-3
    p = p * f + 8.9893397e-3
    p = p * f + 5.5826318e-2
    p = p * f + 2.4015361e-1
    p = p * f + 6.9315308e-1
    p = p * f + 9.9999994e-1
    scale = ((fl.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(x < -126.0, 0.0, p * scale)


@triton.jit
def decay(a2, dt, step, POLY_EVERY: tl.constexpr):
    """exp2(a2 * dt) of an (NP, BD) state tile at time step ``step`` of a loop. With
    POLY_EVERY = k > 0 every k-th step takes the FMA-pipe polynomial instead of the MUFU ``ex2``
    (FlashAttention-4's split of the exponentials between the two pipes). The split is by step,
    a branch uniform over the program, so each element evaluates one of the two, never both."""
    x = a2 * dt[None, :]
    if POLY_EVERY > 0:
        if step % POLY_EVERY == POLY_EVERY - 1:
            a = exp2_poly(x)
        else:
            a = tl.exp2(x)
    else:
        a = tl.exp2(x)
    return a


@triton.jit
def meta_load(c, meta, n_chunks_bound):
    """The raw metadata row of chunk ``c``: seven independent loads of one 32-byte row (a single
    round trip; the row layout is built by ``config.Plan``)."""
    row = meta + tl.minimum(c, n_chunks_bound - 1) * 8
    return (tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6))


@triton.jit
def meta_decode(c, valid, s, k, nck, tok0, slen, nl0, L: tl.constexpr, REVERSE: tl.constexpr):
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
def chunk_info(c, meta, n_chunks_bound, L: tl.constexpr, REVERSE: tl.constexpr):
    """Segment, position and extent of chunk ``c`` (clen == 0 when c is past the last chunk)."""
    v, s, k, nck, tok0, slen, nl0 = meta_load(c, meta, n_chunks_bound)
    return meta_decode(c, v, s, k, nck, tok0, slen, nl0, L, REVERSE)


@triton.jit
def step_inputs(tn, u, delta, Bm, Cm, z, dout, phi, offs_d, offs_n, mask_n, D, G, N, g,
                LOAD_C: tl.constexpr, LOAD_Z: tl.constexpr, LOAD_DOUT: tl.constexpr,
                LOAD_PHI: tl.constexpr):
    """The inputs of token ``tn`` in their storage dtypes: ``(u, delta, B, C, z, dout, phi)``,
    (BD,) vectors except B, C (NP,). Inputs whose LOAD_* switch is off are not read (their slot
    repeats u or delta). Every pass calls it one step ahead of use (prefetch: hides latency)."""
    u_n = tl.load(u + tn * D + offs_d)
    d_n = tl.load(delta + tn * D + offs_d)
    b_n = tl.load(Bm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
    c_n = b_n
    if LOAD_C:
        c_n = tl.load(Cm + (tn * G + g) * N + offs_n, mask=mask_n, other=0.0)
    o_n = u_n
    if LOAD_DOUT:
        o_n = tl.load(dout + tn * D + offs_d)
    p_n = d_n
    if LOAD_PHI:
        p_n = tl.load(phi + tn * D + offs_d)
    z_n = u_n
    if LOAD_Z:
        z_n = tl.load(z + tn * D + offs_d)
    return u_n, d_n, b_n, c_n, z_n, o_n, p_n


@triton.jit
def output_step(h, a2, step, u_n, d_n, b_n, c_n, z_n, bias, dsk,
                SOFTPLUS: tl.constexpr, FAST: tl.constexpr, HAS_Z: tl.constexpr,
                POLY_EVERY: tl.constexpr):
    """Forward step number ``step`` from its inputs: ``(h_t, out_t, dt_t)`` with h an (NP, BD)
    float32 tile, out_t the (BD,) float32 output (gated when HAS_Z) and dt_t (BD,)."""
    uu = u_n.to(tl.float32)
    dt = softplus(d_n.to(tl.float32) + bias, SOFTPLUS, FAST)
    h = decay(a2, dt, step, POLY_EVERY) * h + b_n.to(tl.float32)[:, None] * (dt * uu)[None, :]
    y = tl.reduce(h * c_n.to(tl.float32)[:, None], 0, SUM) + dsk * uu
    if HAS_Z:
        zz = z_n.to(tl.float32)
        y = y * zz * (1.0 / (1.0 + tl.exp2(-zz * LOG2E)))
    return h, y, dt
