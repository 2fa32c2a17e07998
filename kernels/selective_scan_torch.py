"""Reference selective scan in plain torch: clear, differentiable by autograd, any device.

It loops over time steps and, at each step, updates every segment that is still running in one
vectorised operation (no padding, no per-segment Python loop). Every other backend is tested
against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (tests use it as the exact reference), else float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def discretized_dt(delta: torch.Tensor, delta_bias, delta_softplus: bool) -> torch.Tensor:
    """``dt = softplus(delta + bias)`` (or ``delta + bias``) in float32 (float64 for float64).

    Shapes: ``delta: (T, D)``, ``delta_bias: (D,)``.
    """
    work = compute_dtype(delta)
    dt = delta.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)
    return F.softplus(dt) if delta_softplus else dt


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, cu_seqlens=None, reverse=False,
                       initial_state=None):
    """Selective scan over packed variable-length segments (reference).

    Per segment s and channel d (group g = d // (D/G))::

        dt_t  = softplus(delta_t + bias)            (or delta_t + bias)
        h_t   = exp(dt_t * A[d]) * h_{t-1} + dt_t * B_t[g] * u_t      h_0 = initial_state[s]
        y_t   = <C_t[g], h_t> + D[d] * u_t
        out_t = y_t * silu(z_t)                     (when z is given)

    ``reverse=True`` visits each segment from its last token to its first.

    Shapes (canonical, as the public function passes them):
        u, delta, z: (T, D); A: (D, N); B, C: (T, G, N); D, delta_bias: (D,);
        cu_seqlens: (S+1,) int32; initial_state: (S, D, N).

    Returns ``(out (T, D) in u.dtype, final_state (S, D, N) float32)``; float64 inputs are
    computed and returned in float64 (the exact reference of the tests). One host sync (the
    longest segment decides the number of steps).
    """
    work = compute_dtype(u)
    T, channels = u.shape
    groups, N = B.shape[1], B.shape[2]
    cu = cu_seqlens.long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    num_segments = lengths.numel()

    dt = discretized_dt(delta, delta_bias, delta_softplus)                    # (T, D)
    B_per_channel = B.to(work).repeat_interleave(channels // groups, dim=1)  # (T, D, N)
    C_per_channel = C.to(work).repeat_interleave(channels // groups, dim=1)  # (T, D, N)
    decay = torch.exp(dt[..., None] * A.to(work))                            # (T, D, N)
    drive = dt[..., None] * B_per_channel * u.to(work)[..., None]            # (T, D, N)

    if initial_state is None:
        state = u.new_zeros((num_segments, channels, N), dtype=work)
    else:
        state = initial_state.to(work)
    longest = int(lengths.max()) if num_segments > 0 else 0
    # Which segments run at each step, and their token there. Gathering every step's rows in one
    # indexing op keeps the backward to one scatter instead of one (T, D, N) scatter per step.
    actives, tokens = [], []
    for step in range(longest):
        active = torch.nonzero(lengths > step).squeeze(1)
        offset = lengths[active] - 1 - step if reverse else step
        actives.append(active)
        tokens.append(starts[active] + offset)
    counts = [len(a) for a in actives]
    order = torch.cat(tokens) if tokens else lengths.new_zeros(0)
    decay_steps = decay[order].split(counts)
    drive_steps = drive[order].split(counts)
    C_steps = C_per_channel[order].split(counts)
    y_steps = []
    for active, step_decay, step_drive, step_C in zip(actives, decay_steps, drive_steps, C_steps):
        new_state = step_decay * state[active] + step_drive
        state = state.index_copy(0, active, new_state)
        y_steps.append((new_state * step_C).sum(-1))

    y = u.new_zeros((T, channels), dtype=work)
    if y_steps:
        y = y.index_copy(0, order, torch.cat(y_steps))
    if D is not None:
        y = y + D.to(work) * u.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(u.dtype), state
