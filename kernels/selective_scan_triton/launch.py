"""Host side of the Triton selective scan: buffers, launch plans and the passes' launches."""

from __future__ import annotations

import torch
import triton

from ._jit import LOG2E_HOST
from .bwd_dh_pass import bwd_dh_pass
from .bwd_h_pass import bwd_h_pass
from .carry import bwd_carry, empty_segment_states, fwd_carry
from .config import DEFAULT_CONFIG, LaunchConfig, Plan, plan_for
from .fwd_chunk_state import fwd_chunk_state
from .fwd_output import fwd_output
from .fwd_serial import fwd_serial


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


def _config(config: LaunchConfig | None) -> LaunchConfig:
    if config is None:
        return DEFAULT_CONFIG
    if not isinstance(config, LaunchConfig):
        raise TypeError(f"config must be a LaunchConfig or None, got {type(config).__name__}")
    return config


def _plan_and_a2(u, A, B, cu_seqlens, config: LaunchConfig) -> tuple[Plan, torch.Tensor]:
    """The launch plan and ``A * log2(e)`` (every exponential is an exp2)."""
    T, D = u.shape
    _, G, N = B.shape
    plan = plan_for(cu_seqlens, T, D, G, N, u.device, config)
    A2 = (A.float() * LOG2E_HOST).contiguous()
    return plan, A2



def _reg_cap(u, config: LaunchConfig, kernel: str) -> dict:
    """Launch option capping a pass's registers per thread (``LaunchConfig.register_cap``);
    none under the interpreter."""
    cap = config.register_cap(kernel)
    if cap and not _interpreting(u):
        return dict(maxnreg=cap)
    return {}


def _dummy(dev):
    return torch.empty(1, dtype=torch.float32, device=dev)


def chunk_states_shape(T: int, D: int, N: int, device="cuda",
                       config: LaunchConfig | None = None) -> tuple[int]:
    """Shape of the flat float32 ``chunk_states`` the forward returns for the backward: the
    true end state (D, N) and sum(dt) (D,) of every chunk that is not the last of its segment
    (at most T // chunk rows). Depends on shapes, the device type and the chunk length only."""
    rows = max(1, T // _config(config).chunk_length(device))
    return (rows * D * (N + 1),)


def _split_states(buf, rows, D, N):
    return buf[:rows * D * N].view(rows, D, N), buf[rows * D * N:].view(rows, D)


def _state_buffer(plan: Plan, dev) -> torch.Tensor:
    shape = chunk_states_shape(plan.T, plan.D, plan.N, dev, plan.config)
    return torch.empty(shape, dtype=torch.float32, device=dev)


def _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens, initial_state,
                    delta_softplus, reverse, final, table=None):
    """Passes 1-2 of the chunked forward: true end state and sum(dt) of every non-last chunk of
    ``table`` (the plan's chunks by default; its pieces for the piece forward), in a new flat
    buffer (:func:`_split_states` layout); final states of empty segments."""
    dev = u.device
    D, N = plan.D, plan.N
    table = table or plan.chunks
    buf = torch.empty(table.n_rows * D * (N + 1), dtype=torch.float32, device=dev)
    hs, sdt = _split_states(buf, table.n_rows, D, N)
    dm = _dummy(dev)
    if plan.S == 0:
        return buf
    if final is not None:
        _empty_segment_states(plan, cu_seqlens, initial_state, final)
    if not table.may_have_rows:
        # e.g. the serial forward's whole-segment pieces: nothing to carry, no row is read
        return buf
    nprog = max(1, min(plan.nprog, table.n_rows))
    fwd_chunk_state[(nprog, plan.n_dblk)](
        u, delta, A2, B, delta_bias if delta_bias is not None else dm, cu_seqlens,
        table.cu_nl, table.row_seg, hs, sdt,
        plan.S, table.n_rows, nprog, D, plan.G, N, plan.dpg,
        L=table.L, BD=plan.BD, NP=plan.NP, REVERSE=reverse, SOFTPLUS=delta_softplus,
        FAST=not _interpreting(u), HAS_BIAS=delta_bias is not None,
        POLY_EVERY=plan.config.exp_poly_every, STATE_IN_THREAD=plan.config.state_in_thread,
        num_warps=plan.num_warps, **_reg_cap(u, plan.config, "chunk_state"))
    programs, by_row = plan.carry_programs(table)
    fwd_carry[(programs, triton.cdiv(D * N, plan.BDN))](
        A2, hs, sdt, table.row_seg, table.cu_nl,
        initial_state if initial_state is not None else dm, plan.S, by_row,
        D, N, D * N, K=plan.K, BDN=plan.BDN, HAS_INIT=initial_state is not None,
        USE_SCAN=not _interpreting(u), num_warps=plan.config.num_warps_carry)
    return buf



def _flags(u, plan, delta_softplus, reverse, D, z, delta_bias, serial=False) -> dict:
    return dict(NP=plan.NP, REVERSE=reverse, SOFTPLUS=delta_softplus,
                FAST=not _interpreting(u), HAS_BIAS=delta_bias is not None, HAS_D=D is not None,
                HAS_Z=z is not None, POLY_EVERY=plan.config.exp_poly_every,
                STATE_IN_THREAD=(plan.config.serial_state_in_thread if serial
                                 else plan.config.state_in_thread))


def _empty_segment_states(plan, cu_seqlens, source, out, segments_per_program: int = 8):
    """``out[s] = source[s]`` (zeros where ``source`` is None) for the empty segments: the
    forward's final states (source: initial states), the backward's initial-state gradients
    (source: final-state gradients). Tiles of 8 segments x 128 (d, n) pairs: 25-28 registers
    per thread in the sm_90 build (64 x 128 took 255 and spilled)."""
    DN = plan.D * plan.N
    empty_segment_states[(triton.cdiv(plan.S, segments_per_program),)](
        cu_seqlens, source if source is not None else out, out, plan.S, DN,
        BS=segments_per_program, BDN=min(128, triton.next_power_of_2(DN)),
        HAS_SOURCE=source is not None, num_warps=4)


def _serial_forward(plan, A2, u, delta, B, C, D, z, delta_bias, cu_seqlens, initial_state,
                    delta_softplus, reverse, out, final) -> torch.Tensor:
    """The serial / piece forward: local end states and carry over pieces (nothing to do when
    pieces are whole segments, but the final states of empty segments), then one serial
    program per piece: out, final state and the backward's chunk record."""
    dev = u.device
    dm = _dummy(dev)
    pieces = plan.pieces
    piece_states = _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens, initial_state,
                                   delta_softplus, reverse, final, table=pieces)
    hp, _ = _split_states(piece_states, pieces.n_rows, plan.D, plan.N)
    buf = _state_buffer(plan, dev)
    hs, sdt = _split_states(buf, plan.n_rows, plan.D, plan.N)
    fwd_serial[(pieces.n_chunks_bound, plan.n_dblk_serial)](
        u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
        delta_bias if delta_bias is not None else dm, out,
        initial_state if initial_state is not None else dm, final if final is not None else dm,
        hs, sdt, hp, pieces.meta, plan.cu_nl, pieces.n_chunks_bound,
        plan.D, plan.G, plan.N, plan.dpg,
        L=plan.L, P=plan.piece_chunks, BD=plan.BD_serial, HAS_INIT=initial_state is not None,
        NEED_FINAL=final is not None, num_warps=plan.num_warps_serial,
        **_flags(u, plan, delta_softplus, reverse, D, z, delta_bias, serial=True),
        **_reg_cap(u, plan.config, "fwd"))
    return buf


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
                       delta_softplus: bool, reverse: bool, *, need_final_state: bool = True,
                       config: LaunchConfig | None = None):
    """Forward of the grouped varlen selective scan (recurrence and shapes: package docstring).

    Returns ``(out, final_state, chunk_states)`` like the numba backend: out (T, D) in
    ``u.dtype``, final_state (S, D, N) float32 (None when ``need_final_state`` is False) and
    chunk_states, a flat float32 tensor of :func:`chunk_states_shape` (chunk end states and
    sums of dt); passing it to :func:`selective_scan_bwd` skips the backward's recomputation
    of them (one recurrence pass). ``config``: launch settings (None: ``DEFAULT_CONFIG``).
    No host sync; deterministic (no atomics).
    """
    config = _config(config)
    T, Dm = u.shape
    S = cu_seqlens.numel() - 1
    N = A.shape[1]
    dev = u.device
    out = torch.empty_like(u)
    final = (torch.empty(S, Dm, N, dtype=torch.float32, device=dev)
             if need_final_state else None)
    plan, A2 = _plan_and_a2(u, A, B, cu_seqlens, config)
    if plan.pieces is not None and S > 0 and T > 0:
        states = _serial_forward(plan, A2, u, delta, B, C, D, z, delta_bias, cu_seqlens,
                                 initial_state, delta_softplus, reverse, out, final)
        return out, final, states
    states = _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens, initial_state,
                             delta_softplus, reverse, final)
    hs, _ = _split_states(states, plan.n_rows, Dm, N)
    dm = _dummy(dev)
    if S > 0 and T > 0:
        fwd_output[(plan.nprog, plan.n_dblk)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, out,
            initial_state if initial_state is not None else dm, final if final is not None else dm,
            hs, plan.meta,
            S, plan.n_chunks_bound, plan.nprog, Dm, plan.G, N, plan.dpg,
            L=plan.L, BD=plan.BD, HAS_INIT=initial_state is not None,
            NEED_FINAL=final is not None, num_warps=plan.num_warps,
            **_flags(u, plan, delta_softplus, reverse, D, z, delta_bias),
            **_reg_cap(u, config, "output"))
    return out, final, states


def selective_scan_bwd(dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, cu_seqlens,
                       initial_state, delta_softplus: bool, reverse: bool,
                       chunk_states=None, *, config: LaunchConfig | None = None):
    """Backward of :func:`selective_scan_fwd` (math in the module docstring).

    Returns ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``: du in u.dtype,
    dz in z.dtype, ddelta (T, D) in delta.dtype, dA (D, N), dB/dC (T, G, N), dD/ddelta_bias (D,) and
    dinitial_state (S, D, N) float32; None where the input is None. ``dfinal_state`` may be
    None. ``chunk_states`` is the third output of :func:`selective_scan_fwd`; without it the
    chunk states are recomputed (one extra recurrence pass); it must come from a forward with
    the same ``config`` chunk length. No host sync;
    deterministic (per-program partial sums reduced with torch.sum, no atomics).
    """
    config = _config(config)
    T, Dm = u.shape
    S = cu_seqlens.numel() - 1
    _, G, N = B.shape
    dev = u.device
    plan, A2 = _plan_and_a2(u, A, B, cu_seqlens, config)
    if chunk_states is None or chunk_states.numel() == 0:
        chunk_states = _forward_states(plan, A2, u, delta, B, delta_bias, cu_seqlens,
                                       initial_state, delta_softplus, reverse, None)
    hs, sdt = _split_states(chunk_states, plan.n_rows, Dm, N)
    dout = dout.contiguous()
    dm = _dummy(dev)
    du = torch.empty_like(u)
    dz = torch.empty_like(z) if z is not None else None
    phi = torch.empty(T, Dm, dtype=torch.float32, device=dev)     # per-token terms, h-pass
    # the dh-pass writes ddelta in delta's dtype: no cast pass over (T, D) afterwards
    ddelta = torch.empty_like(delta)
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
    # sums of dt of every (chunk, dA sub-chunk); states at the inner sub-chunk boundaries
    n_sub = plan.L // plan.SUB
    ssub = torch.empty(plan.n_chunks_bound, n_sub, Dm, dtype=torch.float32, device=dev)
    hmid = (torch.empty(plan.n_chunks_bound * (n_sub - 1), Dm, N, dtype=torch.float32,
                        device=dev) if n_sub > 1 else dm)
    P = plan.nprog_bwd
    # every (program, channel block) of the passes stores all its partial rows, so no memset
    # is needed when they run; with no segment or token they do not, and the sums are zeros
    partial = torch.empty if S > 0 and T > 0 else torch.zeros
    dA_part = partial(P, Dm, N, dtype=torch.float32, device=dev)
    dA_part2 = partial(P, Dm, N, dtype=torch.float32, device=dev)
    dD_part = partial(P, Dm, dtype=torch.float32, device=dev)
    dbias_part = partial(P, Dm, dtype=torch.float32, device=dev)
    common = dict(L=plan.L, SUB=plan.SUB, BD=plan.BD_bwd, NP=plan.NP, REVERSE=reverse,
                  SOFTPLUS=delta_softplus, FAST=not _interpreting(u),
                  HAS_BIAS=delta_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
                  POLY_EVERY=config.exp_poly_every, STATE_IN_THREAD=config.state_in_thread)
    # fuse_backward: the h-pass also sweeps single-chunk segments backward; the dh-pass the rest
    fused = config.fuse_backward
    sizes = (S, plan.n_chunks_bound, P, Dm, G, N, plan.dpg, nb, T)
    if S > 0 and T > 0:
        bwd_h_pass[(P, plan.n_dblk_bwd)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, dout,
            initial_state if initial_state is not None else dm, hs,
            dfinal_state if has_dfinal else dm,
            plan.meta,
            dz if dz is not None else dm, phi, dC_buf, gbuf, dinit if need_dinit else dm, kappa,
            ssub, hmid, dA_part, dD_part,
            *((du, ddelta, dB_buf, dA_part2, dbias_part) if fused else (dm,) * 5), *sizes,
            HAS_INIT=initial_state is not None, HAS_DFINAL=has_dfinal, NEED_DINIT=need_dinit,
            FUSE_DH=fused, num_warps=plan.num_warps_bwd, **common,
            **_reg_cap(u, config, "h_pass"))
    if need_dinit and S > 0:
        _empty_segment_states(plan, cu_seqlens, dfinal_state if has_dfinal else None, dinit)
    if S > 0 and plan.chunks.may_have_rows:
        programs, by_row = plan.carry_programs(plan.chunks)
        bwd_carry[(programs, triton.cdiv(Dm * N, plan.BDN))](
            A2, gbuf, sdt, plan.row_seg, plan.cu_nl, dinit if need_dinit else dm, S, by_row,
            Dm, N, Dm * N, K=plan.K, BDN=plan.BDN, NEED_DINIT=need_dinit,
            USE_SCAN=not _interpreting(u), num_warps=plan.config.num_warps_carry)
    # after a fused h-pass only segments of several chunks are left (added to its partials)
    if S > 0 and T > 0 and (not fused or plan.chunks.may_have_rows):
        bwd_dh_pass[(P, plan.n_dblk_bwd)](
            u, delta, A2, B, C, D if D is not None else dm, z if z is not None else dm,
            delta_bias if delta_bias is not None else dm, dout, hs, ssub, hmid,
            dfinal_state if has_dfinal else dm, gbuf, kappa,
            initial_state if initial_state is not None else dm, dinit if need_dinit else dm,
            plan.meta,
            du, phi, ddelta, dB_buf, dA_part2, dbias_part,
            *sizes,
            HAS_DFINAL=has_dfinal, HAS_INIT=initial_state is not None, ONLY_MULTI=fused,
            num_warps=plan.num_warps_bwd, **common, **_reg_cap(u, config, "dh_pass"))
    dA = dA_part.sum(0) + dA_part2.sum(0)
    dB = dB_buf[0] if nb == 1 else dB_buf.sum(0)
    dC = dC_buf[0] if nb == 1 else dC_buf.sum(0)
    dD = dD_part.sum(0) if D is not None else None
    dbias = dbias_part.sum(0) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dinit
