"""Triton kernels of the Mamba-2 SSD over packed segments (forward and backward).

Forward: four launches, the chunked algorithm of ``ssd_scan_torch.ssd_scan_chunked``:

1. ``_chunk_state_kernel`` (chunk, head): step sizes, within-chunk cumulative log-decay and the
   chunk's contribution to the end state of its last token's segment (one ``tl.dot``).
2. ``linear_scan`` (two launches of ``_linear_scan_kernel`` and a fix-up): the state entering
   every chunk; the carry is zeroed where a segment starts, so no state crosses a boundary.
3. ``_chunk_scan_kernel`` (chunk, head, channel block): the masked ``(Q, Q)`` intra-chunk matmul
   plus the entering (or initial) state, skip ``D`` and gate ``z``.
4. ``_final_state_kernel`` (segment, head): the state after each segment's last token.

Backward (no initial states, no final-state gradient): launches 1-2 again, then the gradient of
every chunk's entering state, a reversed state pass, and one kernel per (chunk, head) for
``dx, dz, dB, dC, ddt`` and per-chunk partial sums of ``dA, dD``.

Segments may start anywhere in a chunk: every mask compares per-token segment ids. Work and
state are float32; the matmuls take 16-bit operands for 16-bit inputs (tensor cores) and exact
float32 (``input_precision="ieee"``) for float32 inputs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from geossm._compat import triton_interpret

from .ssd_scan_torch import reversal_index, segment_tokens

#: Tokens per chunk.
CHUNK = 64


@triton.jit
def _mm(a, b, IEEE: tl.constexpr, DTYPE: tl.constexpr):
    """``a @ b`` accumulated in float32; operands cast to ``DTYPE`` unless ``IEEE``."""
    if IEEE:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DTYPE), b.to(DTYPE))
    return out


@triton.jit
def _rows(order_ptr, t, valid, REVERSE: tl.constexpr):
    """Memory rows of the logical tokens ``t``: themselves, or (``REVERSE``) the token at the
    mirrored position of the same segment, so a reversed scan reads and writes in place."""
    if REVERSE:
        rows = tl.load(order_ptr + t, mask=valid, other=0).to(tl.int64)
    else:
        rows = t
    return rows


@triton.jit
def _softplus(v):
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def _chunk_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, seg_ptr, start_ptr,
                        step_ptr, cum_ptr, states_ptr, decay_ptr, fresh_ptr, order_ptr,
                        T, H, P, G, N, heads_per_group,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, Q: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                        REVERSE: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    g = h // heads_per_group
    q = tl.arange(0, Q)
    t = c * Q + q
    valid = t < T
    row = _rows(order_ptr, t, valid, REVERSE)
    step = tl.load(dt_ptr + row * H + h, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        step += tl.load(bias_ptr + h)
    if SOFTPLUS:
        step = _softplus(step)
    step = tl.where(valid, step, 0.0)
    log_decay = step * tl.load(A_ptr + h)
    cum = tl.cumsum(log_decay, 0)
    tl.store(step_ptr + t * H + h, step)
    tl.store(cum_ptr + t * H + h, cum)

    last_t = tl.minimum(c * Q + Q, T) - 1
    seg_last = tl.load(seg_ptr + last_t)
    start_last = tl.load(start_ptr + last_t)
    first = tl.maximum(start_last - c * Q, 0)
    cum_before_last = tl.sum(tl.where(q < first, log_decay, 0.0), 0)
    cum_last = tl.sum(log_decay, 0)
    decay = tl.exp(cum_last - cum_before_last)
    carries = start_last < c * Q
    tl.store(decay_ptr + c * H + h, tl.where(carries, decay, 0.0))
    tl.store(fresh_ptr + c * H + h, tl.where(carries, 0.0, decay))

    seg = tl.load(seg_ptr + t, mask=valid, other=-1)
    weight = tl.exp(tl.where(seg == seg_last, cum_last - cum, float("-inf"))) * step
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    x = tl.load(x_ptr + row[:, None] * (H * P) + h * P + p[None, :],
                mask=valid[:, None] & (p[None, :] < P), other=0.0)
    B = tl.load(B_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                mask=valid[:, None] & (n[None, :] < N), other=0.0)
    xw = x.to(tl.float32) * weight[:, None]
    state = _mm(tl.trans(xw), B, IEEE, x_ptr.dtype.element_ty)
    tl.store(states_ptr + ((c * H + h) * P + p[:, None]) * N + n[None, :], state,
             mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _linear_scan_kernel(decay_ptr, drive_ptr, out_ptr, prefix_ptr, group_state_ptr,
                        group_decay_ptr, H, PN, K, L,
                        REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """One group of ``L`` consecutive steps of ``h_c = decay_c h_{c-1} + drive_c`` from zero.

    Stores the state before each step (``out``), the product of the group's decays before
    each step (``prefix``, by the first block only), the group's end state and its total
    decay. ``REVERSE`` walks the steps from ``K - 1`` down (step ``j`` is chunk ``K - 1 - j``).
    """
    h = tl.program_id(0)
    block = tl.program_id(1)
    group = tl.program_id(2).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    inside = offs < PN
    lane = tl.arange(0, BLOCK)
    first_lane = (lane + block) == 0          # one lane of the first block writes scalars
    state = tl.zeros((BLOCK,), dtype=tl.float32)
    product = tl.full((BLOCK,), 1.0, tl.float32)
    for i in range(0, L):
        j = group * L + i
        valid = (lane * 0 + j) < K            # a vector: the interpreter refuses scalar masks
        step = tl.minimum(j, K - 1)
        if REVERSE:
            c = K - 1 - step
        else:
            c = step
        tl.store(out_ptr + (c * H + h) * PN + offs, state, mask=inside & valid)
        tl.store(prefix_ptr + c * H + h + offs * 0, product, mask=first_lane & valid)
        decay = tl.where(valid, tl.load(decay_ptr + c * H + h + lane * 0), 1.0)
        drive = tl.load(drive_ptr + (c * H + h) * PN + offs, mask=inside & valid, other=0.0)
        state = decay * state + drive
        product = product * decay
    tl.store(group_state_ptr + (group * H + h) * PN + offs, state, mask=inside)
    tl.store(group_decay_ptr + group * H + h + offs * 0, product, mask=first_lane)


def linear_scan(decay: torch.Tensor, drive: torch.Tensor, reverse: bool) -> torch.Tensor:
    """States before every step of ``h_c = decay_c h_{c-1} + drive_c`` (``h = 0`` before the
    first step; ``reverse``: steps run from the last chunk to the first).

    Two levels so that no chain is longer than about ``sqrt(K)``: groups of ``L`` chunks scan
    in parallel from zero, one pass carries the group end states across groups, and each
    chunk adds its group's entering state times the decay product before it.

    Shapes: ``decay (K, H)``, ``drive (K, H, P, N)`` float32 -> ``(K, H, P, N)``.
    """
    K, H = decay.shape
    PN = drive[0, 0].numel()
    L = max(1, math.isqrt(K - 1) + 1) if K > 1 else 1
    groups = triton.cdiv(K, L)
    block = min(1024, triton.next_power_of_2(PN))
    grid_blocks = triton.cdiv(PN, block)
    f32 = dict(device=decay.device, dtype=torch.float32)
    out = torch.empty(K, H, *drive.shape[2:], **f32)
    prefix = torch.empty(K, H, **f32)
    group_state = torch.empty(groups, H, *drive.shape[2:], **f32)
    group_decay = torch.empty(groups, H, **f32)
    _linear_scan_kernel[(H, grid_blocks, groups)](
        decay, drive, out, prefix, group_state, group_decay, H, PN, K, L,
        REVERSE=bool(reverse), BLOCK=block)
    if groups == 1:
        return out
    entering = torch.empty_like(group_state)
    unused = torch.empty(groups, H, **f32)
    carried, carried_decay = torch.empty_like(group_state[:1]), torch.empty(1, H, **f32)
    _linear_scan_kernel[(H, grid_blocks, 1)](
        group_decay, group_state, entering, unused, carried, carried_decay, H, PN, groups,
        groups, REVERSE=False, BLOCK=block)
    step = torch.arange(K, device=decay.device)
    group_of_chunk = ((K - 1 - step) if reverse else step) // L
    return out.add_(prefix[..., None, None] * entering[group_of_chunk])


@triton.jit
def _chunk_scan_kernel(x_ptr, z_ptr, B_ptr, C_ptr, D_ptr, A_ptr, seg_ptr, start_ptr, step_ptr,
                       cum_ptr, entering_ptr, init_ptr, out_ptr, order_ptr,
                       T, H, P, G, N, heads_per_group,
                       HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                       Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                       IEEE: tl.constexpr, REVERSE: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    g = h // heads_per_group
    q = tl.arange(0, Q)
    n = tl.arange(0, BLOCK_N)
    t = c * Q + q
    valid = t < T
    DTYPE = x_ptr.dtype.element_ty
    row = _rows(order_ptr, t, valid, REVERSE)
    step = tl.load(step_ptr + t * H + h)
    cum = tl.load(cum_ptr + t * H + h)
    seg = tl.load(seg_ptr + t, mask=valid, other=-1)
    start = tl.load(start_ptr + t, mask=valid, other=T)
    B = tl.load(B_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                mask=valid[:, None] & (n[None, :] < N), other=0.0)
    C = tl.load(C_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                mask=valid[:, None] & (n[None, :] < N), other=0.0)
    x_mask = valid[:, None] & (p[None, :] < P)
    x_offs = row[:, None] * (H * P) + h * P + p[None, :]
    x = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0)

    scores = _mm(C, tl.trans(B), IEEE, DTYPE)
    same = (seg[:, None] == seg[None, :]) & (q[:, None] >= q[None, :])
    weight = tl.exp(tl.where(same, cum[:, None] - cum[None, :], float("-inf"))) * step[None, :]
    y = _mm(scores * weight, x, IEEE, DTYPE)

    state_mask = (p[:, None] < P) & (n[None, :] < N)
    entering = tl.load(entering_ptr + ((c * H + h) * P + p[:, None]) * N + n[None, :],
                       mask=state_mask, other=0.0)
    began_before = start < c * Q
    y += tl.where(began_before, tl.exp(cum), 0.0)[:, None] * _mm(C, tl.trans(entering), IEEE,
                                                                 DTYPE)
    if HAS_INIT:
        # Segments that start inside this chunk begin from their initial state.
        log_decay = step * tl.load(A_ptr + h)
        first = tl.maximum(start - c * Q, 0)
        cum_before = tl.sum(tl.where(q[None, :] < first[:, None], log_decay[None, :], 0.0), 1)
        decay = tl.exp(cum - cum_before)
        seg_first = tl.load(seg_ptr + c * Q).to(tl.int64)
        seg_end = tl.load(seg_ptr + tl.minimum(c * Q + Q, T) - 1)
        for s in range(seg_first, seg_end + 1):
            rows = (seg == s) & (start >= c * Q)
            init = tl.load(init_ptr + ((s * H + h) * P + p[:, None]) * N + n[None, :],
                           mask=state_mask, other=0.0)
            y += tl.where(rows, decay, 0.0)[:, None] * _mm(C, tl.trans(init), IEEE, DTYPE)
    if HAS_D:
        y += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * x.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + x_offs, y.to(DTYPE), mask=x_mask)


@triton.jit
def _final_state_kernel(x_ptr, B_ptr, A_ptr, cu_ptr, step_ptr, cum_ptr, entering_ptr, init_ptr,
                        final_ptr, order_ptr, H, P, G, N, heads_per_group,
                        HAS_INIT: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr, IEEE: tl.constexpr, REVERSE: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // heads_per_group
    start = tl.load(cu_ptr + s).to(tl.int64)
    end = tl.load(cu_ptr + s + 1).to(tl.int64)
    nonempty = end > start
    last = tl.maximum(end - 1, 0)
    c = last // Q
    q = tl.arange(0, Q)
    t = c * Q + q
    mine = (t >= start) & (t < end)
    row = _rows(order_ptr, t, mine, REVERSE)
    step = tl.load(step_ptr + t * H + h)
    cum = tl.load(cum_ptr + t * H + h)
    cum_last = tl.load(cum_ptr + last * H + h)
    weight = tl.exp(tl.where(mine, cum_last - cum, float("-inf"))) * step
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    x = tl.load(x_ptr + row[:, None] * (H * P) + h * P + p[None, :],
                mask=mine[:, None] & (p[None, :] < P), other=0.0)
    B = tl.load(B_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                mask=mine[:, None] & (n[None, :] < N), other=0.0)
    state = _mm(tl.trans(x.to(tl.float32) * weight[:, None]), B, IEEE, x_ptr.dtype.element_ty)
    state_mask = (p[:, None] < P) & (n[None, :] < N)
    state_offs = (h * P + p[:, None]) * N + n[None, :]
    carried = (start < c * Q) & nonempty
    entering = tl.load(entering_ptr + c * H * P * N + state_offs, mask=state_mask, other=0.0)
    state += tl.where(carried, tl.exp(cum_last), 0.0) * entering
    if HAS_INIT:
        first = tl.minimum(start, last)
        cum_before = (tl.load(cum_ptr + first * H + h)
                      - tl.load(step_ptr + first * H + h) * tl.load(A_ptr + h))
        coefficient = tl.where(nonempty, tl.where(carried, 0.0, tl.exp(cum_last - cum_before)),
                               1.0)
        init = tl.load(init_ptr + s * H * P * N + state_offs, mask=state_mask, other=0.0)
        state += coefficient * init
    tl.store(final_ptr + s * H * P * N + state_offs, state, mask=state_mask)


def _block(size: int) -> int:
    """Power-of-two tile at least 16 wide (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(size))


def _chunk_states(x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse):
    """Launch 1 of both passes on ``T > 0`` tokens: the per-token segment ids, starts and
    memory order, and ``_chunk_state_kernel``'s outputs; returns ``(seg, seg_start, order,
    step, cum, states, decay, fresh, ieee, BLOCK_P, BLOCK_N)``."""
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    seg, seg_start = (v.to(torch.int32) for v in segment_tokens(cu_seqlens, T))
    Q = CHUNK
    K = triton.cdiv(T, Q)
    f32 = dict(device=x.device, dtype=torch.float32)
    step = torch.zeros(K * Q, H, **f32)
    cum = torch.zeros(K * Q, H, **f32)
    states = torch.empty(K, H, P, N, **f32)
    decay = torch.empty(K, H, **f32)
    fresh = torch.empty(K, H, **f32)
    # Triton's CPU interpreter computes bfloat16 tl.dot wrongly (numpy has no bfloat16), so
    # there the bfloat16 matmuls run in float32; on a GPU they use the tensor cores.
    ieee = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and triton_interpret())
    BLOCK_P, BLOCK_N = _block(P), _block(N)
    # The reversed scan is the forward scan of every segment read back to front, in place.
    order = reversal_index(cu_seqlens, T).to(torch.int32) if reverse else seg
    _chunk_state_kernel[(K, H)](
        x, dt, A, B, dt_bias if dt_bias is not None else step, seg, seg_start,
        step, cum, states, decay, fresh, order, T, H, P, G, N, H // G,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), Q=Q,
        BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, IEEE=ieee, REVERSE=bool(reverse))
    return seg, seg_start, order, step, cum, states, decay, fresh, ieee, BLOCK_P, BLOCK_N


def ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states, dt_softplus,
                 reverse, final_states=True):
    """Forward on canonical tensors; returns ``(out like x, final (S, H, P, N) float32)``
    (``final`` empty ``(0,)`` unless ``final_states``)."""
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    S = cu_seqlens.shape[0] - 1
    device = x.device
    if not final_states:
        final = torch.zeros(0, device=device, dtype=torch.float32)
    elif initial_states is not None:
        final = initial_states.clone()
    else:
        final = torch.zeros(S, H, P, N, device=device, dtype=torch.float32)
    if T == 0:
        return torch.zeros_like(x), final
    (seg, seg_start, order, step, cum, states, decay, fresh, ieee, BLOCK_P,
     BLOCK_N) = _chunk_states(x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse)
    Q = CHUNK
    K = triton.cdiv(T, Q)
    out = torch.empty_like(x)
    dummy = step  # stands in for absent optional tensors (never read)
    init = initial_states if initial_states is not None else dummy
    if initial_states is not None:
        # The last segment of a chunk that began in it (not before) passes on its initial
        # state, decayed over its tokens there.
        ends = torch.clamp(torch.arange(1, K + 1, device=device) * Q, max=T) - 1
        states += fresh[..., None, None] * initial_states[seg[ends].long()]
    entering = linear_scan(decay, states, reverse=False)
    scan_block_p = min(BLOCK_P, 64)
    _chunk_scan_kernel[(K, H, triton.cdiv(P, scan_block_p))](
        x, z if z is not None else x, B, C, D if D is not None else dummy, A, seg, seg_start,
        step, cum, entering, init, out, order, T, H, P, G, N, H // G,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=initial_states is not None, Q=Q,
        BLOCK_P=scan_block_p, BLOCK_N=BLOCK_N, IEEE=ieee, REVERSE=bool(reverse))
    if final_states and S > 0:
        _final_state_kernel[(S, H)](
            x, B, A, cu_seqlens, step, cum, entering, init, final, order, H, P, G, N, H // G,
            HAS_INIT=initial_states is not None, Q=Q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
            IEEE=ieee, REVERSE=bool(reverse))
    return out, final


# ------------------------------------------------------------------------------- backward
#
# Without initial states and without a gradient of the final states (what the Mamba-2 layers
# use), the backward runs in Triton. With ``cum`` the within-chunk cumulative log-decay, every
# decay factor is ``exp`` of a difference of ``cum`` values, so each kernel accumulates
# ``dcum`` per token and the step sizes get ``ds = direct + A * (reverse cumsum of dcum)``.


@triton.jit
def _entering_grad_kernel(dout_ptr, z_ptr, C_ptr, cum_ptr, start_ptr, dlocal_ptr, order_ptr,
                          T, H, P, G, N, heads_per_group,
                          HAS_Z: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                          BLOCK_N: tl.constexpr, IEEE: tl.constexpr, REVERSE: tl.constexpr):
    """Gradient of each chunk's outputs w.r.t. its entering state: sum_i e^cum_i dy_i C_i^T."""
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    g = h // heads_per_group
    q = tl.arange(0, Q)
    t = c * Q + q
    valid = t < T
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    x_mask = valid[:, None] & (p[None, :] < P)
    row = _rows(order_ptr, t, valid, REVERSE)
    x_offs = row[:, None] * (H * P) + h * P + p[None, :]
    dy = tl.load(dout_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        dy *= z * tl.sigmoid(z)
    cum = tl.load(cum_ptr + t * H + h)
    start = tl.load(start_ptr + t, mask=valid, other=T)
    weight = tl.where(start < c * Q, tl.exp(cum), 0.0)
    C = tl.load(C_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                mask=valid[:, None] & (n[None, :] < N), other=0.0)
    local = _mm(tl.trans(dy * weight[:, None]), C, IEEE, C_ptr.dtype.element_ty)
    tl.store(dlocal_ptr + ((c * H + h) * P + p[:, None]) * N + n[None, :], local,
             mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _chunk_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
                      seg_ptr, start_ptr, step_ptr, cum_ptr, entering_ptr, dstates_ptr,
                      decay_ptr,
                      dx_ptr, dz_ptr, dB_ptr, dC_ptr, ddt_ptr, dA_ptr, dD_ptr, order_ptr,
                      T, H, P, G, N, heads_per_group,
                      HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_N: tl.constexpr, IEEE: tl.constexpr, REVERSE: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    g = h // heads_per_group
    DTYPE = x_ptr.dtype.element_ty
    q = tl.arange(0, Q)
    t = c * Q + q
    valid = t < T
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    row = _rows(order_ptr, t, valid, REVERSE)
    x_offs = row[:, None] * (H * P) + h * P + p[None, :]
    x_mask = valid[:, None] & (p[None, :] < P)
    bc_offs = row[:, None] * (G * N) + g * N + n[None, :]
    bc_mask = valid[:, None] & (n[None, :] < N)
    state_offs = ((c * H + h) * P + p[:, None]) * N + n[None, :]
    state_mask = (p[:, None] < P) & (n[None, :] < N)

    x = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0)
    B = tl.load(B_ptr + bc_offs, mask=bc_mask, other=0.0)
    C = tl.load(C_ptr + bc_offs, mask=bc_mask, other=0.0)
    dout = tl.load(dout_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
    step = tl.load(step_ptr + t * H + h)
    cum = tl.load(cum_ptr + t * H + h)
    seg = tl.load(seg_ptr + t, mask=valid, other=-1)
    start = tl.load(start_ptr + t, mask=valid, other=T)
    A = tl.load(A_ptr + h)
    entering = tl.load(entering_ptr + state_offs, mask=state_mask, other=0.0)
    dstate = tl.load(dstates_ptr + state_offs, mask=state_mask, other=0.0)

    # Intra-chunk matrix M_ij = (C_i.B_j) exp(cum_i - cum_j) step_j on i >= j, same segment.
    scores = _mm(C, tl.trans(B), IEEE, DTYPE)
    same = (seg[:, None] == seg[None, :]) & (q[:, None] >= q[None, :])
    decay = tl.exp(tl.where(same, cum[:, None] - cum[None, :], float("-inf")))
    lower = decay * step[None, :]
    matrix = scores * lower
    in_state = tl.where(start < c * Q, tl.exp(cum), 0.0)                  # entering weights
    C_entering = _mm(C, tl.trans(entering), IEEE, DTYPE)                  # (Q, P)

    if HAS_Z:
        z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        gate = tl.sigmoid(z)
        y = _mm(matrix, x, IEEE, DTYPE) + in_state[:, None] * C_entering
        if HAS_D:
            y += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * x.to(tl.float32)
        dz = dout * y * gate * (1.0 + z * (1.0 - gate))
        tl.store(dz_ptr + x_offs, dz.to(dz_ptr.dtype.element_ty), mask=x_mask)
        dy = dout * z * gate
    else:
        dy = dout

    # Through the intra-chunk matrix.
    grad_matrix = _mm(dy, tl.trans(x), IEEE, DTYPE)                        # G_ij = dy_i . x_j
    dx = _mm(tl.trans(matrix), dy, IEEE, DTYPE)
    grad_lower = grad_matrix * lower
    dC = _mm(grad_lower, B, IEEE, DTYPE)
    dB = _mm(tl.trans(grad_lower), C, IEEE, DTYPE)
    through = grad_matrix * scores * decay                                 # d/d step_j, no step
    dstep = tl.sum(through, 0)
    term = through * step[None, :]
    dcum = tl.sum(term, 1) - tl.sum(term, 0)

    # Through the entering state.
    dC += in_state[:, None] * _mm(dy, entering, IEEE, DTYPE)
    dcum += in_state * tl.sum(dy * C_entering, 1)

    # Through this chunk's contribution to the state it passes on.
    last = tl.minimum(Q, T - c * Q) - 1
    seg_last = tl.load(seg_ptr + c * Q + last)
    cum_last = tl.load(cum_ptr + (c * Q + last) * H + h)
    to_end = tl.exp(tl.where(seg == seg_last, cum_last - cum, float("-inf")))
    weight = to_end * step
    B_dstate = _mm(B, tl.trans(dstate), IEEE, DTYPE)                       # (Q, P)
    dx += weight[:, None] * B_dstate
    dB += weight[:, None] * _mm(x, dstate, IEEE, DTYPE)
    dweight = tl.sum(x.to(tl.float32) * B_dstate, 1)
    dstep += dweight * to_end
    state_term = dweight * weight
    # The state passed on is decay_c E_c + S_c: the decay's gradient is <dS_c, E_c>.
    ddecay = tl.sum(tl.sum(dstate * entering, 1), 0)
    last_term = tl.sum(state_term, 0) + ddecay * tl.load(decay_ptr + c * H + h)
    dcum += tl.where(q == last, last_term, 0.0) - state_term

    if HAS_D:
        dx += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * dy
        tl.store(dD_ptr + (c * H + h) * P + p, tl.sum(dy * x.to(tl.float32), 0), mask=p < P)
    tl.store(dx_ptr + x_offs, dx.to(dx_ptr.dtype.element_ty), mask=x_mask)
    tl.store(dB_ptr + (row[:, None] * H + h) * N + n[None, :], dB, mask=bc_mask)
    tl.store(dC_ptr + (row[:, None] * H + h) * N + n[None, :], dC, mask=bc_mask)

    # cum_i = sum_{j<=i} step_j A: d(step_j A) = sum_{i>=j} dcum_i.
    dlog = tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum
    dstep += A * dlog
    tl.store(dA_ptr + c * H + h, tl.sum(tl.where(valid, step * dlog, 0.0), 0))
    if SOFTPLUS:
        raw = tl.load(dt_ptr + row * H + h, mask=valid, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(bias_ptr + h)
        dstep *= tl.sigmoid(raw)
    tl.store(ddt_ptr + row * H + h, dstep, mask=valid)


def ssd_scan_bwd(dout, x, dt, A, B, C, D, z, dt_bias, cu_seqlens, dt_softplus, reverse):
    """Gradients ``(dx, ddt, dA, dB, dC, dD, dz, ddt_bias)`` (None for absent inputs) of the
    output, without initial states and without a gradient of the final states."""
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    if T == 0:
        zeros = [None if v is None else torch.zeros_like(v)
                 for v in (x, dt, A, B, C, D, z, dt_bias)]
        return tuple(zeros)
    (seg, seg_start, order, step, cum, states, decay, fresh, ieee, BLOCK_P,
     BLOCK_N) = _chunk_states(x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse)
    Q = CHUNK
    K = triton.cdiv(T, Q)
    f32 = dict(device=x.device, dtype=torch.float32)
    dummy = step
    entering = linear_scan(decay, states, reverse=False)
    dlocal = states  # the chunk states are no longer needed: reuse the buffer
    _entering_grad_kernel[(K, H)](
        dout, z if z is not None else dout, C, cum, seg_start, dlocal, order, T, H, P, G, N,
        H // G, HAS_Z=z is not None, Q=Q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, IEEE=ieee,
        REVERSE=bool(reverse))
    # dS_c = dE_{c+1}, with dE_c = local_c + decay_c dE_{c+1}: the same scan, reversed.
    dstates = linear_scan(decay, dlocal, reverse=True)
    dx = torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    dB = torch.empty(T, H, N, **f32)
    dC = torch.empty(T, H, N, **f32)
    ddt = torch.empty(T, H, **f32)
    dA = torch.empty(K, H, **f32)
    dD = torch.empty(K, H, P, **f32) if D is not None else None
    _chunk_bwd_kernel[(K, H)](
        x, dt, A, B, C, D if D is not None else dummy, z if z is not None else x,
        dt_bias if dt_bias is not None else dummy, dout, seg, seg_start, step, cum, entering,
        dstates, decay, dx, dz if dz is not None else dx, dB, dC, ddt, dA,
        dD if dD is not None else dummy, order, T, H, P, G, N, H // G,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), Q=Q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
        IEEE=ieee, REVERSE=bool(reverse), num_warps=8)
    groups = (T, G, H // G, N)
    return (dx, ddt.to(dt.dtype), dA.sum(0), dB.view(groups).sum(2).to(B.dtype),
            dC.view(groups).sum(2).to(C.dtype), None if D is None else dD.sum(0), dz,
            None if dt_bias is None else ddt.sum(0))
