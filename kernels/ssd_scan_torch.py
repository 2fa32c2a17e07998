"""Mamba-2 SSD in plain torch: a float64-capable sequential reference and a chunked form.

- ``ssd_scan_ref``: the recurrence token by token. An SSD head of ``P`` channels with a scalar
  decay is ``P`` Mamba-1 channels sharing one step size and one ``A``, so the reference expands
  heads to channels and runs ``selective_scan_ref`` (the tested Mamba-1 reference).
- ``ssd_scan_chunked``: the state-space-duality form, vectorised over chunks of ``chunk``
  tokens: inside a chunk the output is a masked ``(Q, Q)`` attention-like matmul; the states at
  chunk ends are passed along by a log-depth scan over chunks. Segments may start anywhere in a
  chunk: every mask compares per-token segment ids, so no state crosses a boundary. Autograd
  differentiates it (the CPU backend and the backward of the Triton backend).

Canonical shapes (as ``geossm.kernels.ssd_scan`` passes them)::

    x, z: (T, H, P)   dt: (T, H)   A, dt_bias: (H,)   D: (H, P)   B, C: (T, G, N)
    cu_seqlens: (S+1,) int32       initial_states: (S, H, P, N)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geossm.packed import cu_seqlens_to_batch

from .selective_scan_torch import selective_scan_ref


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (the exact reference of the tests), else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def processed_dt(dt, dt_bias, dt_softplus: bool, work: torch.dtype) -> torch.Tensor:
    """``softplus(dt + dt_bias)`` (or ``dt + dt_bias``) in ``work`` precision, ``(T, H)``."""
    out = dt.to(work)
    if dt_bias is not None:
        out = out + dt_bias.to(work)
    return F.softplus(out) if dt_softplus else out


def segment_tokens(cu_seqlens: torch.Tensor, total: int):
    """Per-token segment id and segment start, ``(T,)`` int64 each."""
    ids = cu_seqlens_to_batch(cu_seqlens, total)
    return ids, cu_seqlens.long()[:-1][ids]


def reversal_index(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``(T,)`` index that reverses every segment in place (its own inverse)."""
    ids, starts = segment_tokens(cu_seqlens, total)
    ends = cu_seqlens.long()[1:][ids]
    return starts + ends - 1 - torch.arange(total, device=cu_seqlens.device)


def ssd_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                 cu_seqlens=None, reverse=False, initial_states=None):
    """Sequential SSD (reference); returns ``(out (T, H, P) like x, final (S, H, P, N))``.

    Computed in float64 for float64 inputs, else float32; one host sync.
    """
    T, H, P = x.shape
    N = B.shape[-1]
    S = cu_seqlens.shape[0] - 1
    channels = H * P

    def per_channel(v):  # (..., H) -> (..., H * P)
        return v.unsqueeze(-1).expand(*v.shape, P).reshape(*v.shape[:-1], channels)

    out, final = selective_scan_ref(
        x.reshape(T, channels), per_channel(dt), per_channel(A)[:, None].expand(channels, N),
        B, C, D=None if D is None else D.reshape(channels),
        z=None if z is None else z.reshape(T, channels),
        delta_bias=None if dt_bias is None else per_channel(dt_bias),
        delta_softplus=dt_softplus, cu_seqlens=cu_seqlens, reverse=reverse,
        initial_state=None if initial_states is None else initial_states.reshape(S, channels, N))
    return out.reshape(T, H, P), final.reshape(S, H, P, N)


def _scan_chunks(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """``h_c = decay_c * h_{c-1} + drive_c`` (h_{-1} = 0) for all c by a log-depth scan.

    Shapes: ``decay (K, H)``, ``drive (K, H, P, N)`` -> ``(K, H, P, N)``. Out of place so
    autograd can differentiate it; decays are in [0, 1], so products never overflow.
    """
    step = 1
    while step < decay.shape[0]:
        drive = torch.cat([drive[:step], drive[step:] + decay[step:, :, None, None]
                           * drive[:-step]])
        decay = torch.cat([decay[:step], decay[step:] * decay[:-step]])
        step *= 2
    return drive


def ssd_scan_chunked(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                     cu_seqlens=None, reverse=False, initial_states=None, chunk: int = 64,
                     final_states: bool = True):
    """Chunked SSD over packed segments; returns ``(out like x, final (S, H, P, N))``
    (``final`` None unless ``final_states``: it costs a gather per segment).

    Per chunk ``c`` of ``Q = chunk`` tokens, with ``l`` the within-chunk cumulative log-decay
    (``l_i = sum_{j<=i} dt_j A``) and ``same(i, j)`` "tokens i, j in one segment"::

        y_i = sum_{j<=i, same} (C_i . B_j) exp(l_i - l_j) dt_j x_j          (intra-chunk)
            + exp(l_i - l_start) C_i . h_in                                 (state entering)

    ``h_in`` is the end state of the previous chunk when the segment of ``i`` began before
    chunk ``c``, else the segment's initial state. Float32 work (float64 for float64 inputs).
    """
    work = compute_dtype(x)
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    R = H // G
    S = cu_seqlens.shape[0] - 1
    if reverse:
        flip = reversal_index(cu_seqlens, T)
        out, final = ssd_scan_chunked(
            x[flip], dt[flip], A, B[flip], C[flip], D, None if z is None else z[flip],
            dt_bias, dt_softplus, cu_seqlens, False, initial_states, chunk, final_states)
        return out[flip], final
    Q = chunk
    K = max(1, -(-T // Q))
    pad = K * Q - T
    seg, seg_start = segment_tokens(cu_seqlens, T)
    # Padding tokens form their own segment S (id never shared with real tokens).
    seg = F.pad(seg, (0, pad), value=S).view(K, Q)
    seg_start = F.pad(seg_start, (0, pad), value=T).view(K, Q)
    chunk_start = (torch.arange(K, device=x.device) * Q)[:, None]
    began_before = seg_start < chunk_start                                   # (K, Q)
    first_in_chunk = (seg_start - chunk_start).clamp(min=0)                  # (K, Q)

    step = F.pad(processed_dt(dt, dt_bias, dt_softplus, work), (0, 0, 0, pad)).view(K, Q, H)
    log_decay = step * A.to(work)                                            # (K, Q, H)
    cum = log_decay.cumsum(1)
    # Cumulative log-decay just before each token's segment starts in this chunk.
    cum_before = F.pad(cum, (0, 0, 1, 0))[:, :-1].gather(
        1, first_in_chunk[..., None].expand(K, Q, H))
    decay_in = torch.exp(cum - cum_before)                                   # (K, Q, H)

    xs = F.pad(x.to(work), (0, 0, 0, 0, 0, pad)).view(K, Q, G, R, P)
    Bs = F.pad(B.to(work), (0, 0, 0, 0, 0, pad)).view(K, Q, G, N)
    Cs = F.pad(C.to(work), (0, 0, 0, 0, 0, pad)).view(K, Q, G, N)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    same = (seg[:, :, None] == seg[:, None, :]) & causal                    # (K, Qi, Qj)
    diff = (cum[:, :, None, :] - cum[:, None, :, :]).masked_fill(~same[..., None], -torch.inf)
    weight = torch.exp(diff) * step[:, None, :, :]                           # (K, Qi, Qj, H)
    scores = torch.einsum("kign,kjgn->kgij", Cs, Bs)
    y = torch.einsum("kgij,kijgr,kjgrp->kigrp", scores, weight.view(K, Q, Q, G, R), xs)

    # Contribution of each chunk to the end state of the segment its last token belongs to.
    last = seg[:, -1:]
    to_end = torch.exp((cum[:, -1:, :] - cum).masked_fill((seg != last)[..., None], -torch.inf)
                       ) * step                                              # (K, Q, H)
    chunk_states = torch.einsum("kjgr,kjgn,kjgrp->kgrpn", to_end.view(K, Q, G, R), Bs, xs)
    chunk_states = chunk_states.reshape(K, H, P, N)
    carries = began_before[:, -1]                                            # (K,)
    chunk_decay = decay_in[:, -1] * carries[:, None]                         # (K, H)
    if initial_states is not None:
        init = F.pad(initial_states.to(work), (0, 0, 0, 0, 0, 0, 0, 1))      # row S: zeros
        fresh = decay_in[:, -1] * ~carries[:, None]
        chunk_states = chunk_states + fresh[..., None, None] * init[last[:, 0]]
    ends = _scan_chunks(chunk_decay, chunk_states)                           # (K, H, P, N)
    entering = F.pad(ends[:-1], (0, 0, 0, 0, 0, 0, 1, 0))                   # (K, H, P, N)
    from_prev = torch.einsum("kign,kgrpn->kigrp", Cs, entering.view(K, G, R, P, N))
    gate = (decay_in * began_before[..., None]).view(K, Q, G, R, 1)
    y = y + gate * from_prev
    if initial_states is not None:
        gate_init = (decay_in * ~began_before[..., None]).view(K * Q, G, R, 1)
        from_init = torch.einsum("tgn,tgrpn->tgrp", Cs.view(K * Q, G, N),
                                 init[seg.view(-1)].view(K * Q, G, R, P, N))
        y = y + (gate_init * from_init).view(K, Q, G, R, P)
    y = y.reshape(K * Q, H, P)[:T]
    if D is not None:
        y = y + D.to(work) * x.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    if not final_states:
        return y.to(x.dtype), None
    final = _final_states(cu_seqlens, ends, entering, cum, cum_before, step, began_before,
                          seg, Bs, xs, None if initial_states is None else init, Q)
    return y.to(x.dtype), final


def _final_states(cu_seqlens, ends, entering, cum, cum_before, step, began_before, seg, Bs, xs,
                  init, Q):
    """State after each segment's last token, ``(S, H, P, N)`` (empty: its initial state)."""
    K, _, H = cum.shape
    _, G, R, P = xs.shape[1:]
    N = Bs.shape[-1]
    S = cu_seqlens.shape[0] - 1
    cu = cu_seqlens.long()
    nonempty = cu[1:] > cu[:-1]
    last = (cu[1:] - 1).clamp(min=0)
    chunk_of, pos = last // Q, last % Q                                      # (S,)
    seg_ids = torch.arange(S, device=cu.device)
    cum_last = cum[chunk_of, pos]                                            # (S, H)
    # Tokens of the segment up to its last one, inside the chunk of that last token.
    mine = (seg[chunk_of] == seg_ids[:, None])                               # (S, Q)
    weight = torch.exp((cum_last[:, None] - cum[chunk_of]).masked_fill(~mine[..., None],
                                                                        -torch.inf)) * step[chunk_of]
    final = torch.einsum("sjgr,sjgn,sjgrp->sgrpn", weight.view(S, Q, G, R), Bs[chunk_of],
                         xs[chunk_of]).reshape(S, H, P, N)
    decay = torch.exp(cum_last - cum_before[chunk_of, pos])                  # (S, H)
    carried = began_before[chunk_of, pos]
    # A segment's own initial state: where it starts in its last chunk, and if it is empty.
    initial = init[:S] if init is not None else torch.zeros_like(final)
    start_state = torch.where(carried[:, None, None, None], entering[chunk_of], initial)
    final = final + decay[..., None, None] * start_state
    return torch.where(nonempty[:, None, None, None], final, initial)
