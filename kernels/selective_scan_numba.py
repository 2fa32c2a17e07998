"""Selective scan on the CPU with numba: forward and backward kernels.

Work decomposition: ``prange`` over (segment range × channel block) items. Segment ranges hold
about the same number of tokens; a channel block never straddles two B/C groups, so the partial
sums of dB/dC of one item never collide with another's. Within an item the state of its
channels, ``(block, N)`` floats, stays in cache while the item walks its segments token by token.

The backward pass needs ``h_{t-1}`` at every step in reverse order. The forward pass keeps the
state at the start of every ``CHUNK`` tokens of a segment (except the first chunk, whose start
state is the initial state): at most ``T // CHUNK`` states of ``(D, N)``, however many segments.
The backward pass walks the chunks from the end, recomputes each chunk's states and decays into a
small buffer from its saved start state, and back-propagates through them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from ._numba_threads import threads_like_torch

CHUNK = 64          # tokens between the states the forward pass keeps for the backward pass
CHUNK_STATES = True  # this backend's forward returns chunk states for its backward
CHANNEL_BLOCK = 16  # channels per work item
# Every constant is float32: a float64 literal would promote the whole recurrence to float64
# (twice the exp cost and half the vector width).
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
SOFTPLUS_THRESHOLD = np.float32(20.0)  # as torch's softplus: above it softplus(x) = x


@njit(inline="always", fastmath=True)
def _raw_dt(delta, bias, t, d, has_bias):
    return delta[t, d] + bias[d] if has_bias else delta[t, d]


@njit(inline="always", fastmath=True)
def _dt(raw, softplus):
    if softplus and raw <= SOFTPLUS_THRESHOLD:
        return np.float32(math.log1p(math.exp(raw)))
    return raw


@njit(parallel=True, fastmath=True, cache=True)
def _forward(u, delta, A, B, C, Dskip, z, bias, cu, init, seg_ranges, blocks, chunk_offset,
             has_D, has_z, has_bias, has_init, softplus, reverse, out, final, saved):
    N = A.shape[1]
    num_blocks = blocks.shape[0]
    for item in prange((seg_ranges.shape[0] - 1) * num_blocks):
        r, b = item // num_blocks, item % num_blocks
        d0, d1, g = blocks[b, 0], blocks[b, 1], blocks[b, 2]
        h = np.zeros((d1 - d0, N), dtype=np.float32)
        for s in range(seg_ranges[r], seg_ranges[r + 1]):
            start, end = cu[s], cu[s + 1]
            for j in range(d1 - d0):
                for n in range(N):
                    h[j, n] = init[s, d0 + j, n] if has_init else ZERO
            for k in range(end - start):
                if k > 0 and k % CHUNK == 0:
                    for j in range(d1 - d0):
                        for n in range(N):
                            saved[chunk_offset[s] + k // CHUNK - 1, d0 + j, n] = h[j, n]
                t = end - 1 - k if reverse else start + k
                for j in range(d1 - d0):
                    d = d0 + j
                    dt = _dt(_raw_dt(delta, bias, t, d, has_bias), softplus)
                    dtu = dt * u[t, d]
                    acc = ZERO
                    for n in range(N):
                        hn = math.exp(dt * A[d, n]) * h[j, n] + dtu * B[t, g, n]
                        h[j, n] = hn
                        acc += C[t, g, n] * hn
                    y = acc + Dskip[d] * u[t, d] if has_D else acc
                    if has_z:
                        y *= z[t, d] / (ONE + math.exp(-z[t, d]))
                    out[t, d] = y
            for j in range(d1 - d0):
                for n in range(N):
                    final[s, d0 + j, n] = h[j, n]


@njit(parallel=True, fastmath=True, cache=True)
def _backward(dout, dfinal, u, delta, A, B, C, Dskip, z, bias, cu, init, seg_ranges, blocks,
              chunk_offset, saved, has_D, has_z, has_bias, has_init, has_dfinal, softplus, reverse,
              du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dinit):
    N = A.shape[1]
    num_blocks = blocks.shape[0]
    for item in prange((seg_ranges.shape[0] - 1) * num_blocks):
        r, b = item // num_blocks, item % num_blocks
        d0, d1, g, jb = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
        nd = d1 - d0
        grad = np.zeros((nd, N), dtype=np.float32)
        states = np.zeros((CHUNK + 1, nd, N), dtype=np.float32)  # h at chunk steps 0..CHUNK
        decays = np.zeros((CHUNK, nd, N), dtype=np.float32)      # exp(dt A) at chunk steps
        dts = np.zeros((CHUNK, nd), dtype=np.float32)
        for s in range(seg_ranges[r], seg_ranges[r + 1]):
            start, end = cu[s], cu[s + 1]
            length = end - start
            num_chunks = (length + CHUNK - 1) // CHUNK
            for j in range(nd):
                for n in range(N):
                    grad[j, n] = dfinal[s, d0 + j, n] if has_dfinal else ZERO
            # chunks from the last: recompute the chunk's states, then back-propagate
            for c in range(num_chunks - 1, -1, -1):
                k0 = c * CHUNK
                k1 = min(k0 + CHUNK, length)
                for j in range(nd):
                    for n in range(N):
                        if c > 0:
                            states[0, j, n] = saved[chunk_offset[s] + c - 1, d0 + j, n]
                        else:
                            states[0, j, n] = init[s, d0 + j, n] if has_init else ZERO
                for k in range(k0, k1):
                    t = end - 1 - k if reverse else start + k
                    i = k - k0
                    for j in range(nd):
                        d = d0 + j
                        dt = _dt(_raw_dt(delta, bias, t, d, has_bias), softplus)
                        dts[i, j] = dt
                        dtu = dt * u[t, d]
                        for n in range(N):
                            decay = math.exp(dt * A[d, n])
                            decays[i, j, n] = decay
                            states[i + 1, j, n] = decay * states[i, j, n] + dtu * B[t, g, n]
                for k in range(k1 - 1, k0 - 1, -1):
                    t = end - 1 - k if reverse else start + k
                    i = k - k0
                    for j in range(nd):
                        d = d0 + j
                        dt = dts[i, j]
                        ut = u[t, d]
                        go = dout[t, d]
                        if has_z:
                            zt = z[t, d]
                            sig = ONE / (ONE + math.exp(-zt))
                            acc = ZERO
                            for n in range(N):
                                acc += C[t, g, n] * states[i + 1, j, n]
                            y = acc + Dskip[d] * ut if has_D else acc
                            dz[t, d] = go * y * sig * (ONE + zt * (ONE - sig))
                            dy = go * zt * sig
                        else:
                            dy = go
                        du_t = dy * Dskip[d] if has_D else ZERO
                        if has_D:
                            dD_part[r, d] += dy * ut
                        ddt = ZERO
                        for n in range(N):
                            gn = grad[j, n] + dy * C[t, g, n]
                            decay = decays[i, j, n]
                            hp = states[i, j, n]
                            dC_part[jb, t, g, n] += dy * states[i + 1, j, n]
                            dB_part[jb, t, g, n] += gn * dt * ut
                            du_t += gn * dt * B[t, g, n]
                            gdh = gn * decay * hp
                            dA_part[r, d, n] += gdh * dt
                            ddt += gn * B[t, g, n] * ut + gdh * A[d, n]
                            grad[j, n] = gn * decay
                        raw = _raw_dt(delta, bias, t, d, has_bias)
                        if softplus and raw <= SOFTPLUS_THRESHOLD:
                            ddt *= ONE / (ONE + math.exp(-raw))
                        du[t, d] = du_t
                        ddelta[t, d] = ddt
                        if has_bias:
                            dbias_part[r, d] += ddt
            for j in range(nd):
                for n in range(N):
                    dinit[s, d0 + j, n] = grad[j, n]


def _work_split(cu: np.ndarray, channels: int, groups: int):
    """Segment ranges of roughly equal token counts and group-aligned channel blocks.

    Returns ``seg_ranges (R+1,) int64`` (segment indices) and ``blocks (NB, 4) int64`` rows
    ``(first channel, end channel, group, block index within the group)``.
    """
    num_segments = cu.shape[0] - 1
    per_group = channels // groups
    block = min(CHANNEL_BLOCK, per_group)
    blocks = [(g * per_group + j * block, min(g * per_group + (j + 1) * block, (g + 1) * per_group), g, j)
              for g in range(groups) for j in range((per_group + block - 1) // block)]
    blocks = np.asarray(blocks, dtype=np.int64)
    wanted = max(1, 4 * numba.get_num_threads() // max(1, len(blocks)) + 1)
    num_ranges = max(1, min(num_segments, wanted))
    targets = np.linspace(0, cu[-1], num_ranges + 1)[1:-1]
    inner = np.searchsorted(cu, targets, side="left")
    seg_ranges = np.unique(np.concatenate([[0], inner, [num_segments]])).astype(np.int64)
    return seg_ranges, blocks


def _output(*shape: int) -> np.ndarray:
    """A float32 output buffer from ``torch.empty`` (tests poison it with NaN to catch gaps)."""
    return torch.empty(shape, dtype=torch.float32).numpy()


def _np32(x: torch.Tensor | None, empty_dims: int) -> np.ndarray:
    """float32 contiguous numpy view of ``x`` (or an empty placeholder of ``empty_dims`` ranks)."""
    if x is None:
        return np.zeros((0,) * empty_dims, dtype=np.float32)
    return x.detach().float().contiguous().numpy()


def chunk_states_shape(T: int, channels: int, N: int) -> tuple[int, int, int]:
    """Shape of the chunk states the forward keeps: at most ``T // CHUNK`` of ``(D, N)``."""
    return (T // CHUNK, channels, N)


def _chunk_offsets(cu: np.ndarray) -> np.ndarray:
    """Row of each segment's first kept state: chunks after the first, counted cumulatively."""
    kept = np.maximum((np.diff(cu) + CHUNK - 1) // CHUNK - 1, 0)
    return np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
                       delta_softplus: bool, reverse: bool):
    """Forward kernel.

    Returns ``(out (T, D) in u.dtype, final_state (S, D, N) float32, chunk_states)`` where
    ``chunk_states`` (``chunk_states_shape``) feeds ``selective_scan_bwd``.
    """
    T, channels = u.shape
    groups, N = B.shape[1], B.shape[2]
    cu = cu_seqlens.detach().cpu().numpy().astype(np.int64)
    seg_ranges, blocks = _work_split(cu, channels, groups)
    out = _output(T, channels)
    final = _output(cu.shape[0] - 1, channels, N)
    saved = _output(*chunk_states_shape(T, channels, N))
    with threads_like_torch():
        _forward(_np32(u, 2), _np32(delta, 2), _np32(A, 2), _np32(B, 3), _np32(C, 3), _np32(D, 1),
                 _np32(z, 2), _np32(delta_bias, 1), cu, _np32(initial_state, 3), seg_ranges, blocks,
                 _chunk_offsets(cu), D is not None, z is not None, delta_bias is not None,
                 initial_state is not None, bool(delta_softplus), bool(reverse), out, final, saved)
    return torch.from_numpy(out).to(u.dtype), torch.from_numpy(final), torch.from_numpy(saved)


def selective_scan_bwd(dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, cu_seqlens,
                       initial_state, delta_softplus: bool, reverse: bool, chunk_states):
    """Backward kernel: returns ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``.

    ``chunk_states`` is the third output of ``selective_scan_fwd`` on the same inputs. ``None``
    for each input that is ``None``; every gradient is float32.
    """
    T, channels = u.shape
    groups, N = B.shape[1], B.shape[2]
    cu = cu_seqlens.detach().cpu().numpy().astype(np.int64)
    num_segments = cu.shape[0] - 1
    seg_ranges, blocks = _work_split(cu, channels, groups)
    blocks_per_group = int(blocks[:, 3].max()) + 1
    num_ranges = seg_ranges.shape[0] - 1
    du = _output(T, channels)
    ddelta = _output(T, channels)
    dz = _output(T, channels) if z is not None else _output(0, 0)
    dA_part = np.zeros((num_ranges, channels, N), dtype=np.float32)
    dB_part = np.zeros((blocks_per_group, T, groups, N), dtype=np.float32)
    dC_part = np.zeros((blocks_per_group, T, groups, N), dtype=np.float32)
    dD_part = np.zeros((num_ranges, channels), dtype=np.float32)
    dbias_part = np.zeros((num_ranges, channels), dtype=np.float32)
    dinit = _output(num_segments, channels, N)
    with threads_like_torch():
        _backward(_np32(dout, 2), _np32(dfinal_state, 3), _np32(u, 2), _np32(delta, 2), _np32(A, 2),
                  _np32(B, 3), _np32(C, 3), _np32(D, 1), _np32(z, 2), _np32(delta_bias, 1), cu,
                  _np32(initial_state, 3), seg_ranges, blocks, _chunk_offsets(cu),
                  chunk_states.detach().contiguous().numpy(),
                  D is not None, z is not None, delta_bias is not None, initial_state is not None,
                  dfinal_state is not None, bool(delta_softplus), bool(reverse),
                  du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dinit)
    as_torch = torch.from_numpy
    return (as_torch(du), as_torch(ddelta), as_torch(dA_part.sum(0)), as_torch(dB_part.sum(0)),
            as_torch(dC_part.sum(0)), as_torch(dD_part.sum(0)) if D is not None else None,
            as_torch(dz) if z is not None else None,
            as_torch(dbias_part.sum(0)) if delta_bias is not None else None,
            as_torch(dinit) if initial_state is not None else None)
