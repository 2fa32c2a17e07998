"""Triton kernels of the Mamba-2 SSD over packed segments (forward and backward).

Forward (chunks of ``Q = settings.chunk`` tokens), the chunked algorithm of
``ssd_scan_torch.ssd_scan_chunked``:

1. ``_chunk_state_kernel`` (chunk, head): step sizes, the within-chunk cumulative log-decay
   ``cum`` and the chunk's contribution to the end state of its last token's segment, in tiles
   of ``block_k`` tokens (the accumulator is rescaled by each tile's decay, so every exponent
   stays <= 0).
2. ``linear_scan_parts`` (two launches of ``_linear_scan_kernel``): the state entering every
   chunk as ``local[c] + prefix[c] * group[group(c)]``; the carry is zeroed where a segment
   starts, so no state crosses a boundary. The consumers add the group term while loading
   (``_entering``), so no pass over the ``(K, H, P, N)`` states fixes them up.
3. ``_chunk_scan_kernel`` (chunk x row block, head, channel block): the masked intra-chunk
   matmuls over the causal source tiles of the rows' segments, plus the entering (or initial)
   state, skip ``D`` and gate ``z``.
4. ``_final_state_kernel`` (segment, head): the state after each segment's last token.

Backward (chunks of ``settings.bwd_chunk``, independent of the forward's): launches 1-2
again, the gradient of every chunk's entering state (``_entering_grad_kernel``), a reversed
state pass, then ``dx, dz, ddt`` and per-chunk partial sums of ``dA, dD`` per (chunk, head,
block of channels) (``_chunk_bwd_kernel``); ``dB, dC`` per (chunk, group, block of state
columns), summing the group's heads in a fixed order (``_chunk_bwd_bc_kernel``); and, with
initial states, their gradient per (segment, head) (``_initial_grad_kernel``). Initial states
and a final-state gradient take a general path through the chunk kernels (constexpr flags:
the Mamba-2 layers' path without them stays as lean as before). No atomics: the backward is
bitwise deterministic. Neither chunk kernel holds a whole ``P x N`` state (the ``dx`` kernel
walks the state dimension in blocks; one fused kernel spilled kilobytes of registers on
sm_90).

Segments may start anywhere in a chunk: every mask compares per-token segment ids. Work and
state are float32; the matmuls take 16-bit operands for 16-bit inputs (tensor cores) and exact
float32 (``input_precision="ieee"``) for float32 inputs.

Every launch setting is an explicit field of ``LaunchSettings``; ``SETTINGS`` holds the ones
in use (``benchmarks/ssd_gpu.py --sweep`` swaps them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import triton
import triton.language as tl

from geossm._compat import triton_interpret



@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    """Launch settings of the SSD kernels (positive ints; all but the stages powers of two).

    Attributes:
        chunk: forward tokens per chunk (64, 128 or 256), default 128.
        block_m: rows (tokens) per forward chunk-scan program, divides ``chunk``, default 128.
        block_k: source tokens per tile (forward chunk scan, chunk states, final states,
            entering-state gradient), at most ``chunk`` (the backward uses at most
            ``bwd_chunk``), default 64.
        fwd_warps / fwd_stages: ``num_warps`` / ``num_stages`` of the chunk-scan kernel.
        state_warps / state_stages: the same for the chunk-state, final-state and
            entering-gradient kernels.
        bwd_chunk: backward tokens per chunk (one ``(Q, Q)`` tile), default 64 (128 spills
            kilobytes of registers on sm_90).
        bwd_block_n: state columns per step of the backward ``dx, dz, ddt`` kernel, default 32.
        bwd_block_p: channels per program of that kernel (a head of P > bwd_block_p is split
            over several programs that recompute the chunk's ``(Q, Q)`` matrices and store
            their shares of ``ddt, dA``), default 64 (a whole head of 64 channels, as the
            kernel was before the split; 32 spills no registers on sm_90 but is unmeasured).
        bwd_bc_block_n: state columns per program of the backward ``dB, dC`` kernel (each
            recomputes ``dy x^T`` of every head of its group), default 64.
        bwd_step_from_outputs: the ``dx`` kernel takes the step-size gradient of the
            intra-chunk matrix from ``(M x)_i . dy_i`` and ``x_j . (scaled^T dy)_j`` instead of
            the ``(Q, Q)`` matrix ``dy x^T`` (one matmul and its registers fewer; the row and
            column sums then come from two 16-bit matmuls and cancel less exactly: a CPU
            emulation of bf16 operands with float32 sums put the step-size gradient of a
            64-token chunk at up to 3.0e-2 relative error against float64, median 2.9e-3, vs
            2.5e-3 / 1.7e-3 without it, 200 random chunks), default False.
        bwd_warps / bwd_bc_warps / bwd_stages: ``num_warps`` of the backward chunk kernels
            (``dx, dz, ddt`` and ``dB, dC``), ``num_stages`` of both.
        scan_block: state elements per program of the chunk-to-chunk scan, default 1024.
        scan_unroll: chunks it loads and combines at once, default 4 (1024 / 4 took the
            scene forward at N = 128 from 2.02 to 1.57 ms against 256 / 8, H200).
        scan_warps: its ``num_warps``.
        half_states: store the per-chunk states (not the carries between groups of chunks)
            in bfloat16 for bfloat16 inputs, default False: float32 states were faster on an
            H200 (scene, N = 128: forward 1.72 vs 2.02 ms, backward 7.07 vs 8.09 ms; fewer
            conversions) at twice their memory (T / chunk x H x P x N x 4 bytes).
    """

    chunk: int = 128
    block_m: int = 128
    block_k: int = 64
    fwd_warps: int = 8
    fwd_stages: int = 2
    state_warps: int = 8
    state_stages: int = 2
    bwd_chunk: int = 64
    bwd_block_n: int = 32
    bwd_block_p: int = 64
    bwd_bc_block_n: int = 64
    bwd_step_from_outputs: bool = False
    bwd_warps: int = 8
    bwd_bc_warps: int = 8
    bwd_stages: int = 1
    scan_block: int = 1024
    scan_unroll: int = 4
    scan_warps: int = 4
    half_states: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("half_states", "bwd_step_from_outputs"):
                if not isinstance(value, bool):
                    raise TypeError(f"LaunchSettings.{field.name} must be a bool, got "
                                    f"{value!r}")
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LaunchSettings.{field.name} must be a positive int, got "
                                 f"{value!r}")
            if field.name.endswith("_stages"):
                continue
            if value & (value - 1):
                raise ValueError(f"LaunchSettings.{field.name} must be a power of two, got "
                                 f"{value!r}")
        if self.chunk < 16 or self.bwd_chunk < 16:
            raise ValueError(f"chunk and bwd_chunk must be at least 16, got {self.chunk} "
                             f"and {self.bwd_chunk}")
        if self.block_m > self.chunk:
            raise ValueError(f"block_m={self.block_m} must not exceed chunk={self.chunk}")
        if not 16 <= self.block_k <= self.chunk:
            raise ValueError(f"block_k={self.block_k} must lie in [16, chunk={self.chunk}]")
        if self.bwd_block_p < 16 or self.bwd_bc_block_n < 16:
            raise ValueError(f"bwd_block_p and bwd_bc_block_n must be at least 16 (tl.dot), "
                             f"got {self.bwd_block_p} and {self.bwd_bc_block_n}")
        if self.block_m < 16:
            raise ValueError(f"block_m must be at least 16 (tl.dot), got {self.block_m}")


#: The settings every launch uses (replace with ``use_settings``).
#: The defaults: the forward's from an H200 sweep of ``benchmarks/ssd_gpu.py --sweep`` (chunk
#: 128 with 128-row blocks was fastest in sum over the four workloads, N = 64 and 128); the
#: backward's so that its kernels spill no registers, or ~150 bytes, compiled for sm_90
#: (``ptxas -v`` of Triton's PTX; ``ssd_gpu.py --registers``). The backward's channel and
#: state-column splits are not yet measured on a GPU (``ssd_gpu.py --sweep --sweep-kinds bwd``).
SETTINGS = LaunchSettings()
#: Forward tokens per chunk of the default settings.
CHUNK = SETTINGS.chunk


@contextlib.contextmanager
def use_settings(settings: LaunchSettings):
    """Run the block with ``settings`` as the module's ``SETTINGS`` (restored after)."""
    global SETTINGS
    if not isinstance(settings, LaunchSettings):
        raise TypeError(f"settings must be a LaunchSettings, got {type(settings).__name__}")
    previous, SETTINGS = SETTINGS, settings
    try:
        yield settings
    finally:
        SETTINGS = previous


@triton.jit
def _mm(a, b, IEEE: tl.constexpr, DTYPE: tl.constexpr):
    """``a @ b`` accumulated in float32; operands cast to ``DTYPE`` unless ``IEEE``."""
    if IEEE:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DTYPE), b.to(DTYPE))
    return out


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr, DTYPE: tl.constexpr):
    """``acc + a @ b`` (float32 ``acc``), accumulated in place by the matmul."""
    if IEEE:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a.to(DTYPE), b.to(DTYPE), acc)
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
def _token_steps(dt_ptr, bias_ptr, row, valid, h, H, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr):
    """Step sizes ``softplus(dt + bias)`` of the rows (0 where not ``valid``)."""
    step = tl.load(dt_ptr + row * H + h, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        step += tl.load(bias_ptr + h)
    if SOFTPLUS:
        step = _softplus(step)
    return tl.where(valid, step, 0.0)


@triton.jit
def _load_entering(local_ptr, prefix_ptr, group_ptr, c, h, H, K, L, PN, state_offs, mask,
                   REVERSE: tl.constexpr):
    """State entering chunk ``c`` of head ``h``: ``local[c] + prefix[c] * group[g(c)]``, with
    ``g(c) = c // L`` (``REVERSE``: ``(K - 1 - c) // L``); ``state_offs`` index one ``P x N``
    state."""
    if REVERSE:
        group = (K - 1 - c) // L
    else:
        group = c // L
    local = tl.load(local_ptr + (c * H + h) * PN + state_offs, mask=mask,
                    other=0.0).to(tl.float32)
    carried = tl.load(group_ptr + (group * H + h) * PN + state_offs, mask=mask, other=0.0)
    return local + tl.load(prefix_ptr + c * H + h) * carried


@triton.jit(do_not_specialize=("T",))
def _chunk_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, seg_ptr, start_ptr,
                        step_ptr, cum_ptr, states_ptr, decay_ptr, fresh_ptr, order_ptr,
                        T, H, P, G, N, heads_per_group,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, Q: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                        IEEE: tl.constexpr, REVERSE: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    g = h // heads_per_group
    A = tl.load(A_ptr + h)
    last_t = tl.minimum(c * Q + Q, T) - 1
    seg_last = tl.load(seg_ptr + last_t)
    start_last = tl.load(start_ptr + last_t)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    carry = tl.sum(tl.zeros((BLOCK_K,), dtype=tl.float32), 0)  # cum before the tile
    own = tl.sum(tl.zeros((BLOCK_K,), dtype=tl.float32), 0)    # log-decay of seg_last here
    for k0 in range(0, Q, BLOCK_K):
        t = c * Q + k0 + tl.arange(0, BLOCK_K)
        valid = t < T
        row = _rows(order_ptr, t, valid, REVERSE)
        step = _token_steps(dt_ptr, bias_ptr, row, valid, h, H, HAS_BIAS, SOFTPLUS)
        log_decay = step * A
        cum = carry + tl.cumsum(log_decay, 0)
        tl.store(step_ptr + t * H + h, step)
        tl.store(cum_ptr + t * H + h, cum)
        tile_decay = tl.sum(log_decay, 0)
        tile_end = carry + tile_decay
        seg = tl.load(seg_ptr + t, mask=valid, other=-1)
        mine = seg == seg_last
        own += tl.sum(tl.where(mine, log_decay, 0.0), 0)
        if k0 + BLOCK_K > start_last - c * Q:     # else no token of seg_last: state stays 0
            weight = tl.exp(tl.where(mine, tile_end - cum, float("-inf"))) * step
            x = tl.load(x_ptr + row[:, None] * (H * P) + h * P + p[None, :],
                        mask=valid[:, None] & (p[None, :] < P), other=0.0)
            B = tl.load(B_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                        mask=valid[:, None] & (n[None, :] < N), other=0.0)
            # Once seg_last has begun every later token is in it, so the state so far
            # decays over the whole tile.
            state = _mma(tl.trans(x.to(tl.float32) * weight[:, None]), B,
                         state * tl.exp(tile_decay), IEEE, x_ptr.dtype.element_ty)
        carry = tile_end
    decay = tl.exp(own)
    carries = start_last < c * Q
    tl.store(decay_ptr + c * H + h, tl.where(carries, decay, 0.0))
    tl.store(fresh_ptr + c * H + h, tl.where(carries, 0.0, decay))
    tl.store(states_ptr + ((c * H + h) * P + p[:, None]) * N + n[None, :],
             state.to(states_ptr.dtype.element_ty),
             mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _combine_steps(decay_a, drive_a, decay_b, drive_b):
    """Step a then step b of ``h -> decay h + drive``, as one step."""
    return decay_a * decay_b, drive_a * decay_b + drive_b


@triton.jit
def _chunk_of_step(j, K, REVERSE: tl.constexpr):
    """Chunk of scan step ``j``: ``j``, or ``K - 1 - j`` when the scan runs backwards."""
    if REVERSE:
        c = K - 1 - j
    else:
        c = j
    return c


@triton.jit(do_not_specialize=("K", "L"))
def _linear_scan_kernel(decay_ptr, drive_ptr, out_ptr, prefix_ptr, group_state_ptr,
                        group_decay_ptr, H, PN, K, L,
                        REVERSE: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """One group of ``L`` consecutive steps of ``h_c = decay_c h_{c-1} + drive_c`` from zero.

    Stores the state before each step (``out``), the product of the group's decays before
    each step (``prefix``, by the first block only), the group's end state and its total
    decay. ``REVERSE`` walks the steps from ``K - 1`` down (step ``j`` is chunk ``K - 1 - j``).
    ``UNROLL`` steps are loaded together and combined by an associative scan, so their loads
    are in flight at once (a step-by-step loop waits for one load per step).
    """
    h = tl.program_id(0)
    block = tl.program_id(1)
    group = tl.program_id(2).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    inside = offs < PN
    u = tl.arange(0, UNROLL)
    first_block = (u * 0 + block) == 0        # a vector: the interpreter refuses scalar masks
    scalars = (u == 0) & first_block          # one lane of the first block writes scalars
    # Before the group's first step: state 0, decay product 1.
    first = _chunk_of_step(group * L, K, REVERSE)
    tl.store(out_ptr + (first * H + h) * PN + offs,
             tl.zeros((BLOCK,), dtype=tl.float32).to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(prefix_ptr + first * H + h + u * 0, tl.full((UNROLL,), 1.0, tl.float32),
             mask=scalars)
    state = tl.zeros((BLOCK,), dtype=tl.float32)
    product = tl.max(tl.full((UNROLL,), 1.0, tl.float32), 0)
    for i0 in range(0, L, UNROLL):
        j = group * L + i0 + u                # the steps of this tile
        valid = (i0 + u < L) & (j < K)        # invalid steps: decay 1, drive 0 (identity)
        c = _chunk_of_step(tl.minimum(j, K - 1), K, REVERSE)
        decay = tl.load(decay_ptr + c * H + h, mask=valid, other=1.0)
        drive = tl.load(drive_ptr + (c[:, None] * H + h) * PN + offs[None, :],
                        mask=valid[:, None] & inside[None, :], other=0.0).to(tl.float32)
        decays, drives = tl.associative_scan(
            (tl.broadcast_to(decay[:, None], (UNROLL, BLOCK)), drive), 0, _combine_steps)
        after = decays * state[None, :] + drives           # the state after each step
        products = product * tl.cumprod(decay, 0)
        # The state after step j is the state before step j + 1 of the group.
        following = (i0 + u + 1 < L) & (j + 1 < K)
        c_next = _chunk_of_step(tl.minimum(j + 1, K - 1), K, REVERSE)
        tl.store(out_ptr + (c_next[:, None] * H + h) * PN + offs[None, :],
                 after.to(out_ptr.dtype.element_ty), mask=following[:, None] & inside[None, :])
        tl.store(prefix_ptr + c_next * H + h, products, mask=following & first_block)
        last = u == UNROLL - 1
        state = tl.sum(tl.where(last[:, None], after, 0.0), 0)
        product = tl.sum(tl.where(last, products, 0.0), 0)
    tl.store(group_state_ptr + (group * H + h) * PN + offs, state, mask=inside)
    tl.store(group_decay_ptr + group * H + h + u * 0, tl.full((UNROLL,), 1.0, tl.float32)
             * product, mask=scalars)


def linear_scan_parts(decay: torch.Tensor, drive: torch.Tensor, reverse: bool,
                      settings: LaunchSettings | None = None):
    """States before every step of ``h_c = decay_c h_{c-1} + drive_c`` (``h = 0`` before the
    first step; ``reverse``: steps run from the last chunk to the first), in three parts.

    Two levels so that no chain is longer than about ``sqrt(K)``: groups of ``L`` chunks scan
    in parallel from zero (``local``, and ``prefix``: the product of the group's decays before
    each chunk), and one pass carries the group end states across groups (``group``). The
    state before chunk ``c`` is ``local[c] + prefix[c] * group[g(c)]``, ``g(c) = c // L``
    (reversed: ``(K - 1 - c) // L``); kernels add it while loading (``_load_entering``).

    Shapes: ``decay (K, H)`` float32, ``drive (K, H, P, N)`` float32 or 16-bit -> ``(local
    (K, H, P, N) like drive, prefix (K, H), group (groups, H, P, N) float32, L)``; the
    recurrence runs in float32.
    """
    settings = settings or SETTINGS
    K, H = decay.shape
    PN = drive[0, 0].numel()
    L = max(1, math.isqrt(K - 1) + 1) if K > 1 else 1
    groups = triton.cdiv(K, L)
    block = min(settings.scan_block, triton.next_power_of_2(PN))
    grid_blocks = triton.cdiv(PN, block)
    f32 = dict(device=decay.device, dtype=torch.float32)
    local = torch.empty(K, H, *drive.shape[2:], device=decay.device, dtype=drive.dtype)
    prefix = torch.empty(K, H, **f32)
    group_state = torch.empty(groups, H, *drive.shape[2:], **f32)
    group_decay = torch.empty(groups, H, **f32)
    _linear_scan_kernel[(H, grid_blocks, groups)](
        decay, drive, local, prefix, group_state, group_decay, H, PN, K, L,
        REVERSE=bool(reverse), BLOCK=block, UNROLL=settings.scan_unroll,
        num_warps=settings.scan_warps)
    entering = torch.empty_like(group_state)
    if groups == 1:
        return local, prefix, entering.zero_(), L
    unused = torch.empty(groups, H, **f32)
    carried, carried_decay = torch.empty_like(group_state[:1]), torch.empty(1, H, **f32)
    _linear_scan_kernel[(H, grid_blocks, 1)](
        group_decay, group_state, entering, unused, carried, carried_decay, H, PN, groups,
        groups, REVERSE=False, BLOCK=block, UNROLL=settings.scan_unroll,
        num_warps=settings.scan_warps)
    return local, prefix, entering, L


def linear_scan(decay: torch.Tensor, drive: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``linear_scan_parts`` combined in torch: the ``(K, H, P, N)`` states before every
    step (for tests; the kernels combine the parts themselves)."""
    local, prefix, group, L = linear_scan_parts(decay, drive, reverse)
    K = decay.shape[0]
    step = torch.arange(K, device=decay.device)
    group_of_chunk = ((K - 1 - step) if reverse else step) // L
    return local + prefix[..., None, None] * group[group_of_chunk]


@triton.jit(do_not_specialize=("T", "K", "L"))
def _chunk_scan_kernel(x_ptr, z_ptr, B_ptr, C_ptr, D_ptr, A_ptr, seg_ptr, start_ptr, step_ptr,
                       cum_ptr, local_ptr, prefix_ptr, group_ptr, init_ptr, out_ptr, order_ptr,
                       T, H, P, G, N, heads_per_group, K, L,
                       HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                       Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                       IEEE: tl.constexpr, REVERSE: tl.constexpr):
    ROW_BLOCKS: tl.constexpr = Q // BLOCK_M
    pid = tl.program_id(0)
    c = (pid // ROW_BLOCKS).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    m0 = (pid % ROW_BLOCKS) * BLOCK_M
    h = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    g = h // heads_per_group
    DTYPE = x_ptr.dtype.element_ty
    m = m0 + tl.arange(0, BLOCK_M)                 # rows, within the chunk
    n = tl.arange(0, BLOCK_N)
    t = c * Q + m
    valid = t < T
    if m0 < T - c * Q:                             # else: a row block past the last token
        row = _rows(order_ptr, t, valid, REVERSE)
        cum = tl.load(cum_ptr + t * H + h)
        seg = tl.load(seg_ptr + t, mask=valid, other=-1)
        start = tl.load(start_ptr + t, mask=valid, other=T)
        C = tl.load(C_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                    mask=valid[:, None] & (n[None, :] < N), other=0.0)
        state_mask = (n[:, None] < N) & (p[None, :] < P)
        state_offs = p[None, :] * N + n[:, None]   # (N, P): the entering state transposed
        y = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        first_start = tl.load(start_ptr + c * Q + m0)
        if first_start < c * Q:                    # some rows' segment began before
            entering = _load_entering(local_ptr, prefix_ptr, group_ptr, c, h, H, K, L, P * N,
                                      state_offs, state_mask, False)
            in_state = tl.where(start < c * Q, tl.exp(cum), 0.0)
            y = _mm(C, entering, IEEE, DTYPE) * in_state[:, None]

        # Source tiles: from the tile of the earliest segment start among the rows up to
        # the last row (causal); tiles before it are masked out entirely.
        lo = ((tl.maximum(first_start - c * Q, 0) // BLOCK_K) * BLOCK_K).to(tl.int32)
        hi = tl.minimum(m0 + BLOCK_M, T - c * Q).to(tl.int32)
        for k0 in range(lo, hi, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            tk = c * Q + k
            valid_k = tk < T
            row_k = _rows(order_ptr, tk, valid_k, REVERSE)
            B = tl.load(B_ptr + row_k[:, None] * (G * N) + g * N + n[None, :],
                        mask=valid_k[:, None] & (n[None, :] < N), other=0.0)
            x = tl.load(x_ptr + row_k[:, None] * (H * P) + h * P + p[None, :],
                        mask=valid_k[:, None] & (p[None, :] < P), other=0.0)
            cum_k = tl.load(cum_ptr + tk * H + h)
            step_k = tl.load(step_ptr + tk * H + h)
            seg_k = tl.load(seg_ptr + tk, mask=valid_k, other=-2)
            scores = _mm(C, tl.trans(B), IEEE, DTYPE)
            keep = (seg[:, None] == seg_k[None, :]) & (m[:, None] >= k[None, :])
            weight = tl.exp(tl.where(keep, cum[:, None] - cum_k[None, :], float("-inf"))
                            ) * step_k[None, :]
            y = _mma(scores * weight, x, y, IEEE, DTYPE)

        if HAS_INIT:
            # Rows whose segment starts inside this chunk begin from its initial state.
            inside = valid & (start >= c * Q)
            before = start.to(tl.int64) - 1        # the token before the segment's start
            cum_before = tl.load(cum_ptr + before * H + h, mask=inside & (before >= c * Q),
                                 other=0.0)
            decay = tl.exp(cum - cum_before)
            seg_first = tl.load(seg_ptr + c * Q + m0).to(tl.int64)
            seg_end = tl.load(seg_ptr + tl.minimum(c * Q + m0 + BLOCK_M, T) - 1)
            for s in range(seg_first, seg_end + 1):
                rows = (seg == s) & inside
                init = tl.load(init_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                               other=0.0)
                y += tl.where(rows, decay, 0.0)[:, None] * _mm(C, init, IEEE, DTYPE)

        x_mask = valid[:, None] & (p[None, :] < P)
        x_offs = row[:, None] * (H * P) + h * P + p[None, :]
        if HAS_D:
            x_own = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            y += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * x_own
        if HAS_Z:
            z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(out_ptr + x_offs, y.to(DTYPE), mask=x_mask)


@triton.jit(do_not_specialize=("K", "L"))
def _final_state_kernel(x_ptr, B_ptr, A_ptr, cu_ptr, step_ptr, cum_ptr, local_ptr, prefix_ptr,
                        group_ptr, init_ptr, final_ptr, order_ptr, H, P, G, N,
                        heads_per_group, K, L,
                        HAS_INIT: tl.constexpr, Q: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                        REVERSE: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // heads_per_group
    start = tl.load(cu_ptr + s).to(tl.int64)
    end = tl.load(cu_ptr + s + 1).to(tl.int64)
    nonempty = end > start
    last = tl.maximum(end - 1, 0)
    c = last // Q
    cum_last = tl.load(cum_ptr + last * H + h)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    lo = ((tl.maximum(start - c * Q, 0) // BLOCK_K) * BLOCK_K).to(tl.int32)
    for k0 in range(lo, (last - c * Q + 1).to(tl.int32), BLOCK_K):
        t = c * Q + k0 + tl.arange(0, BLOCK_K)
        mine = (t >= start) & (t < end)
        row = _rows(order_ptr, t, mine, REVERSE)
        step = tl.load(step_ptr + t * H + h)
        cum = tl.load(cum_ptr + t * H + h)
        weight = tl.exp(tl.where(mine, cum_last - cum, float("-inf"))) * step
        x = tl.load(x_ptr + row[:, None] * (H * P) + h * P + p[None, :],
                    mask=mine[:, None] & (p[None, :] < P), other=0.0)
        B = tl.load(B_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                    mask=mine[:, None] & (n[None, :] < N), other=0.0)
        state = _mma(tl.trans(x.to(tl.float32) * weight[:, None]), B, state, IEEE,
                     x_ptr.dtype.element_ty)
    state_mask = (p[:, None] < P) & (n[None, :] < N)
    state_offs = p[:, None] * N + n[None, :]
    carried = (start < c * Q) & nonempty
    entering = _load_entering(local_ptr, prefix_ptr, group_ptr, c, h, H, K, L, P * N,
                              state_offs, state_mask, False)
    state += tl.where(carried, tl.exp(cum_last), 0.0) * entering
    if HAS_INIT:
        first = tl.minimum(start, last)
        cum_before = (tl.load(cum_ptr + first * H + h)
                      - tl.load(step_ptr + first * H + h) * tl.load(A_ptr + h))
        coefficient = tl.where(nonempty, tl.where(carried, 0.0, tl.exp(cum_last - cum_before)),
                               1.0)
        init = tl.load(init_ptr + (s * H + h) * P * N + state_offs, mask=state_mask, other=0.0)
        state += coefficient * init
    tl.store(final_ptr + (s * H + h) * P * N + state_offs, state, mask=state_mask)


def _block(size: int) -> int:
    """Power-of-two tile at least 16 wide (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(size))


def _uses_ieee(x: torch.Tensor) -> bool:
    """Exact float32 matmuls for float32 inputs. Triton's CPU interpreter computes bfloat16
    ``tl.dot`` wrongly (numpy has no bfloat16), so there bfloat16 matmuls run in float32 too;
    on a GPU they use the tensor cores."""
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and triton_interpret())


def _state_dtype(x: torch.Tensor, settings: LaunchSettings) -> torch.dtype:
    """Storage of the per-chunk states: bfloat16 for bfloat16 inputs when
    ``settings.half_states`` (half the memory traffic, as mamba_ssm's passed states), else
    float32 (float16's range is too small for states and their gradients). Every recurrence
    and sum over them runs in float32."""
    if settings.half_states and x.dtype == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def _segments(cu_seqlens: torch.Tensor, T: int):
    """Per-token segment id, segment start and segment end, ``(T,)`` int32 each (a binary
    search per token: ``repeat_interleave`` took ~70 us on 8 long segments on an H200)."""
    cu = cu_seqlens.to(torch.int32)
    tokens = torch.arange(T, device=cu.device, dtype=torch.int32)
    seg = torch.searchsorted(cu[1:].contiguous(), tokens, right=True, out_int32=True)
    return seg, cu[:-1][seg], cu[1:][seg]


def _chunk_states(x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse, Q, settings):
    """Launch 1 of both passes on ``T > 0`` tokens with chunks of ``Q``: the per-token segment
    ids, starts and memory order, and ``_chunk_state_kernel``'s outputs; returns ``(seg,
    seg_start, order, step, cum, states, decay, fresh)``."""
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    seg, seg_start, seg_end = _segments(cu_seqlens, T)
    K = triton.cdiv(T, Q)
    f32 = dict(device=x.device, dtype=torch.float32)
    step = torch.empty(K * Q, H, **f32)
    cum = torch.empty(K * Q, H, **f32)
    states = torch.empty(K, H, P, N, device=x.device, dtype=_state_dtype(x, settings))
    decay = torch.empty(K, H, **f32)
    fresh = torch.empty(K, H, **f32)
    # The reversed scan is the forward scan of every segment read back to front, in place.
    tokens = torch.arange(T, device=x.device, dtype=torch.int32)
    order = seg_start + seg_end - 1 - tokens if reverse else seg
    _chunk_state_kernel[(K, H)](
        x, dt, A, B, dt_bias if dt_bias is not None else step, seg, seg_start,
        step, cum, states, decay, fresh, order, T, H, P, G, N, H // G,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), Q=Q,
        BLOCK_K=min(settings.block_k, Q), BLOCK_P=_block(P), BLOCK_N=_block(N),
        IEEE=_uses_ieee(x), REVERSE=bool(reverse), num_warps=settings.state_warps,
        num_stages=settings.state_stages)
    return seg, seg_start, order, step, cum, states, decay, fresh


def ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states, dt_softplus,
                 reverse, final_states=True):
    """Forward on canonical tensors; returns ``(out like x, final (S, H, P, N) float32)``
    (``final`` empty ``(0,)`` unless ``final_states``). Launch settings: ``SETTINGS``."""
    settings = SETTINGS
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
    Q = settings.chunk
    K = triton.cdiv(T, Q)
    seg, seg_start, order, step, cum, states, decay, fresh = _chunk_states(
        x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse, Q, settings)
    out = torch.empty_like(x)
    dummy = step  # stands in for absent optional tensors (never read)
    init = initial_states if initial_states is not None else dummy
    if initial_states is not None:
        _add_initial_states(states, fresh, initial_states, seg, T, Q)
    local, prefix, group, L = linear_scan_parts(decay, states, False, settings)
    del states
    ieee = _uses_ieee(x)
    BLOCK_P, BLOCK_N = min(_block(P), 64), _block(N)
    _chunk_scan_kernel[(K * (Q // settings.block_m), H, triton.cdiv(P, BLOCK_P))](
        x, z if z is not None else x, B, C, D if D is not None else dummy, A, seg, seg_start,
        step, cum, local, prefix, group, init, out, order, T, H, P, G, N, H // G, K, L,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=initial_states is not None, Q=Q,
        BLOCK_M=settings.block_m, BLOCK_K=min(settings.block_k, Q), BLOCK_P=BLOCK_P,
        BLOCK_N=BLOCK_N, IEEE=ieee, REVERSE=bool(reverse), num_warps=settings.fwd_warps,
        num_stages=settings.fwd_stages)
    if final_states and S > 0:
        _final_state_kernel[(S, H)](
            x, B, A, cu_seqlens, step, cum, local, prefix, group, init, final, order, H, P, G,
            N, H // G, K, L, HAS_INIT=initial_states is not None, Q=Q,
            BLOCK_K=min(settings.block_k, Q), BLOCK_P=_block(P), BLOCK_N=BLOCK_N, IEEE=ieee,
            REVERSE=bool(reverse), num_warps=settings.state_warps)
    return out, final


# ------------------------------------------------------------------------------- backward
#
# With ``cum`` the within-chunk cumulative log-decay, every decay factor is ``exp`` of a
# difference ``cum_i - cum_b`` (b < i, both in one segment of one chunk). Its gradient
# ``g`` reaches the log-decays ``step_k A`` of the tokens ``b < k <= i``; the kernels collect
# these as ``dlog_k`` (the reverse cumsum of per-token ``dcum``, or masked sums over the
# chunk's same-segment matrix) and the step sizes get ``ds = direct + A * dlog``.
#
# Initial states and the final-state gradient (``GENERAL``): each segment of a chunk starts
# from a state ``Z_s`` (the entering state if it began before the chunk, else its initial
# state) and leaves the chunk with a state gradient ``X_s`` at its last token there (the
# gradient of the state passed on, for the chunk's last segment, plus the final-state
# gradient, for a segment that ends in the chunk). Without them only the chunk's first
# segment has a ``Z`` and only its last an ``X`` (the fast path).


@triton.jit
def _load_B_C(B_ptr, C_ptr, row, valid, g, G, N, n):
    """Rows ``row`` of B and C, group ``g``, state columns ``n`` (zero where not ``valid`` or
    ``n >= N``), with their offsets and mask (for storing dB / dC at the same places)."""
    bc_offs = row[:, None] * (G * N) + g * N + n[None, :]
    bc_mask = valid[:, None] & (n[None, :] < N)
    B = tl.load(B_ptr + bc_offs, mask=bc_mask, other=0.0)
    C = tl.load(C_ptr + bc_offs, mask=bc_mask, other=0.0)
    return B, C, bc_offs, bc_mask


@triton.jit
def _decayed_dout_C(dout_ptr, z_ptr, C_ptr, cum_ptr, order_ptr, lo, hi, cum_base, h, g, H, P,
                    G, N, acc, HAS_Z: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                    REVERSE: tl.constexpr):
    """``acc + sum_t e^(cum_t - cum_base) dy_t C_t^T`` over the tokens ``lo <= t < hi`` of one
    segment in one chunk, head ``h`` (group ``g``): the gradient of their outputs w.r.t. the
    state they start from. ``dy`` is the output gradient, gated by ``silu(z)`` (``HAS_Z``);
    ``acc``: (BLOCK_P, BLOCK_N) float32."""
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    for k0 in range(0, (hi - lo).to(tl.int32), BLOCK_K):
        t = lo + k0 + tl.arange(0, BLOCK_K)
        valid = t < hi
        row = _rows(order_ptr, t, valid, REVERSE)
        x_mask = valid[:, None] & (p[None, :] < P)
        x_offs = row[:, None] * (H * P) + h * P + p[None, :]
        dy = tl.load(dout_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            dy *= z * tl.sigmoid(z)
        cum = tl.load(cum_ptr + t * H + h, mask=valid, other=0.0)
        weight = tl.where(valid, tl.exp(cum - cum_base), 0.0)
        C = tl.load(C_ptr + row[:, None] * (G * N) + g * N + n[None, :],
                    mask=valid[:, None] & (n[None, :] < N), other=0.0)
        acc = _mma(tl.trans(dy * weight[:, None]), C, acc, IEEE, C_ptr.dtype.element_ty)
    return acc


@triton.jit(do_not_specialize=("T",))
def _entering_grad_kernel(dout_ptr, z_ptr, C_ptr, cum_ptr, seg_ptr, start_ptr, cu_ptr,
                          dfinal_ptr, dlocal_ptr, order_ptr, T, H, P, G, N, heads_per_group,
                          HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr, Q: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                          IEEE: tl.constexpr, REVERSE: tl.constexpr):
    """Gradient of each chunk's outputs (and, ``HAS_DFINAL``, of the final state of a segment
    that ends in it) w.r.t. its entering state: ``sum_i e^cum_i dy_i C_i^T`` over the rows
    whose segment began before the chunk, plus ``e^cum_last dfinal`` of that segment."""
    c = tl.program_id(0).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    h = tl.program_id(1)
    g = h // heads_per_group
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    state_offs = p[:, None] * N + n[None, :]
    state_mask = (p[:, None] < P) & (n[None, :] < N)
    local = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    # Only the chunk's first segment can have begun before it: its tokens up to its end.
    if tl.load(start_ptr + c * Q) < c * Q:
        first = tl.load(seg_ptr + c * Q).to(tl.int64)        # S * H * P * N may pass 2^31
        first_end = tl.load(cu_ptr + first + 1)
        local = _decayed_dout_C(dout_ptr, z_ptr, C_ptr, cum_ptr, order_ptr, c * Q,
                                tl.minimum(first_end, c * Q + Q), 0.0, h, g, H, P, G, N,
                                local, HAS_Z, BLOCK_K, BLOCK_P, BLOCK_N, IEEE, REVERSE)
        if HAS_DFINAL:
            if first_end <= c * Q + Q:                     # the segment ends in this chunk
                cum_end = tl.load(cum_ptr + (first_end - 1) * H + h)
                local += tl.exp(cum_end) * tl.load(
                    dfinal_ptr + (first * H + h) * P * N + state_offs, mask=state_mask,
                    other=0.0)
    tl.store(dlocal_ptr + (c * H + h) * P * N + state_offs,
             local.to(dlocal_ptr.dtype.element_ty), mask=state_mask)


@triton.jit
def _exit_and_start(cum_ptr, cu_ptr, seg, start, cum, t, valid, c, h, H, Q: tl.constexpr,
                    HAS_INIT: tl.constexpr):
    """Per row of a chunk (``GENERAL``): ``to_exit = e^(cum_e - cum)`` to the last token ``e``
    of its segment in the chunk, ``cum_e``, ``cum_b`` (``cum`` before its segment's first
    token in the chunk, 0 at the chunk start) and the factor of its start state ``Z``
    (``e^(cum - cum_b)``; 0 for a segment begun here without ``HAS_INIT``)."""
    end = tl.load(cu_ptr + seg + 1, mask=valid, other=0).to(tl.int64)
    exit_t = tl.where(valid, tl.minimum(end, c * Q + Q) - 1, t)
    cum_exit = tl.load(cum_ptr + exit_t * H + h, mask=valid, other=0.0)
    to_exit = tl.where(valid, tl.exp(cum_exit - cum), 0.0)
    inside = valid & (start > c * Q)                       # begun after the chunk start
    cum_b = tl.load(cum_ptr + (start.to(tl.int64) - 1) * H + h, mask=inside, other=0.0)
    if HAS_INIT:
        factor = tl.where(valid, tl.exp(cum - cum_b), 0.0)
    else:
        factor = tl.where(valid & (start < c * Q), tl.exp(cum), 0.0)
    return to_exit, cum_exit, cum_b, factor


@triton.jit(do_not_specialize=("T", "K", "L", "dL"))
def _chunk_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
                      seg_ptr, start_ptr, cu_ptr, step_ptr, cum_ptr, local_ptr, prefix_ptr,
                      group_ptr, dlocal_ptr, dprefix_ptr, dgroup_ptr, decay_ptr, init_ptr,
                      dfinal_ptr, dx_ptr, dz_ptr, ddt_ptr, dA_ptr, dD_ptr, order_ptr,
                      T, H, P, G, N, heads_per_group, K, L, dL,
                      HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr,
                      HAS_DFINAL: tl.constexpr, GENERAL: tl.constexpr, FINISH: tl.constexpr,
                      FROM_OUTPUTS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_N: tl.constexpr, IEEE: tl.constexpr, REVERSE: tl.constexpr):
    """One chunk of one head, one block of ``BLOCK_P`` channels: ``dx, dz`` and the
    block's share of ``ddt`` and the chunk's ``dA`` (``FINISH``: one block covers P, so
    ``ddt`` gets the softplus factor here; else the raw shares are stored per block and
    summed by the caller) and ``dD`` (``dB, dC``: ``_chunk_bwd_bc_kernel``). The state
    dimension is walked in blocks of ``BLOCK_N``, so no full ``P x N`` state is held."""
    # The channel blocks of a chunk are neighbouring programs (they share B, C in L2).
    p_blocks = tl.cdiv(P, BLOCK_P)
    c = (tl.program_id(0) // p_blocks).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    block = tl.program_id(0) % p_blocks
    h = tl.program_id(1)
    g = h // heads_per_group
    DTYPE = x_ptr.dtype.element_ty
    q = tl.arange(0, Q)
    t = c * Q + q
    valid = t < T
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    row = _rows(order_ptr, t, valid, REVERSE)
    x_offs = row[:, None] * (H * P) + h * P + p[None, :]
    x_mask = valid[:, None] & (p[None, :] < P)
    x = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0)
    step = tl.load(step_ptr + t * H + h)
    cum = tl.load(cum_ptr + t * H + h)
    seg = tl.load(seg_ptr + t, mask=valid, other=-1)
    start = tl.load(start_ptr + t, mask=valid, other=T)
    A = tl.load(A_ptr + h)
    in_state = tl.where(start < c * Q, tl.exp(cum), 0.0)                  # entering weights
    last = tl.minimum(Q, T - c * Q) - 1
    seg_first = tl.load(seg_ptr + c * Q).to(tl.int64)    # S * H * P * N may pass 2^31
    seg_last = tl.load(seg_ptr + c * Q + last)
    cum_last = tl.load(cum_ptr + (c * Q + last) * H + h)
    to_end = tl.exp(tl.where(seg == seg_last, cum_last - cum, float("-inf")))
    weight = to_end * step                                                 # into the end state

    scores = tl.zeros((Q, Q), dtype=tl.float32)
    C_entering = tl.zeros((Q, BLOCK_P), dtype=tl.float32)                  # C_i . E rows
    B_dstate = tl.zeros((Q, BLOCK_P), dtype=tl.float32)                    # B_i . dS rows
    C_init = tl.zeros((Q, BLOCK_P), dtype=tl.float32)                      # C_i . init rows
    B_final = tl.zeros((Q, BLOCK_P), dtype=tl.float32)                     # B_i . dfinal rows
    ddecay = tl.sum(tl.zeros((BLOCK_P,), dtype=tl.float32), 0)             # <dS_c, E_c>
    exit_start = tl.zeros((Q,), dtype=tl.float32)                          # <X_s, Z_s> rows
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        B, C, bc_offs, bc_mask = _load_B_C(B_ptr, C_ptr, row, valid, g, G, N, n)
        state_offs = p[:, None] * N + n[None, :]
        state_mask = (p[:, None] < P) & (n[None, :] < N)
        entering = _load_entering(local_ptr, prefix_ptr, group_ptr, c, h, H, K, L, P * N,
                                  state_offs, state_mask, False)
        dstate = _load_entering(dlocal_ptr, dprefix_ptr, dgroup_ptr, c, h, H, K, dL, P * N,
                                state_offs, state_mask, True)
        scores = _mma(C, tl.trans(B), scores, IEEE, DTYPE)
        C_entering = _mma(C, tl.trans(entering), C_entering, IEEE, DTYPE)
        B_dstate = _mma(B, tl.trans(dstate), B_dstate, IEEE, DTYPE)
        if GENERAL:
            for s in range(seg_first, seg_last + 1):
                s_start = tl.load(cu_ptr + s)
                s_end = tl.load(cu_ptr + s + 1)
                mine = (seg == s)[:, None]
                exit_grad = tl.where(s == seg_last, dstate, 0.0)
                start_state = tl.where(s_start < c * Q, entering, 0.0)
                if HAS_DFINAL:
                    final = tl.where(s_end <= c * Q + Q, tl.load(
                        dfinal_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                        other=0.0), 0.0)
                    exit_grad += final
                    B_final = _mma(tl.where(mine, B, 0.0), tl.trans(final), B_final, IEEE,
                                   DTYPE)
                if HAS_INIT:
                    init = tl.where(s_start >= c * Q, tl.load(
                        init_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                        other=0.0), 0.0)
                    start_state += init
                    C_init = _mma(tl.where(mine, C, 0.0), tl.trans(init), C_init, IEEE, DTYPE)
                exit_start += tl.where(seg == s, tl.sum(tl.sum(exit_grad * start_state, 1), 0),
                                       0.0)
        else:
            ddecay += tl.sum(tl.sum(dstate * entering, 1), 0)

    if GENERAL:
        to_exit, cum_exit, cum_b, factor = _exit_and_start(cum_ptr, cu_ptr, seg, start, cum, t,
                                                           valid, c, h, H, Q, HAS_INIT)
        weight = to_exit * step
        C_start = tl.where((start < c * Q)[:, None], C_entering, 0.0) + C_init  # C_i . Z_s
        B_exit = tl.where((seg == seg_last)[:, None], B_dstate, 0.0) + B_final  # B_i . X_s
    else:
        factor = in_state
        C_start = C_entering
        B_exit = B_dstate

    # Intra-chunk matrix M_ij = (C_i.B_j) exp(cum_i - cum_j) step_j on i >= j, same segment.
    same = (seg[:, None] == seg[None, :]) & (q[:, None] >= q[None, :])
    decay = tl.exp(tl.where(same, cum[:, None] - cum[None, :], float("-inf")))
    scaled = scores * decay
    matrix = scaled * step[None, :]
    dout = tl.load(dout_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        gate = tl.sigmoid(z)
        y_intra = _mm(matrix, x, IEEE, DTYPE)
        y = y_intra + factor[:, None] * C_start
        if HAS_D:
            y += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * x.to(tl.float32)
        dz = dout * y * gate * (1.0 + z * (1.0 - gate))
        tl.store(dz_ptr + x_offs, dz.to(dz_ptr.dtype.element_ty), mask=x_mask)
        dy = dout * z * gate
    else:
        dy = dout
        if FROM_OUTPUTS:
            y_intra = _mm(matrix, x, IEEE, DTYPE)

    # Through the intra-chunk matrix M = scaled * step_j. d/d step_j of the matrix term is
    # sum_i G_ij scaled_ij with G = dy x^T; d/d cum_i of it the row sums of G * M minus
    # the column sums.
    if FROM_OUTPUTS:
        # Without G: column sums x_j . (scaled^T dy)_j, row sums dy_i . (M x)_i.
        scaled_dy = _mm(tl.trans(scaled), dy, IEEE, DTYPE)
        dstep = tl.sum(x.to(tl.float32) * scaled_dy, 1)
        dcum = tl.sum(dy * y_intra, 1) - step * dstep
        dx = step[:, None] * scaled_dy + weight[:, None] * B_exit
    else:
        grad_matrix = _mm(dy, tl.trans(x), IEEE, DTYPE)                    # G_ij = dy_i . x_j
        through = grad_matrix * scaled                                     # d/d step_j
        dstep = tl.sum(through, 0)
        term = through * step[None, :]
        dcum = tl.sum(term, 1) - tl.sum(term, 0)
        dx = _mm(tl.trans(matrix), dy, IEEE, DTYPE) + weight[:, None] * B_exit
    dweight = tl.sum(x.to(tl.float32) * B_exit, 1)
    start_term = factor * tl.sum(dy * C_start, 1)
    if GENERAL:
        # Through the start states (cum_i - cum_b), the exit states (cum_e - cum_j) and
        # <X_s, Z_s> (cum_e - cum_b): masked sums over the same-segment matrix.
        dstep += dweight * to_exit
        state_term = dweight * weight
        dlog = tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum
        dlog += tl.sum(tl.where(same, start_term[:, None], 0.0), 0)
        dlog += tl.sum(tl.where(same, state_term[None, :], 0.0), 1) - state_term
        dlog += exit_start * tl.exp(cum_exit - cum_b)
    else:
        # Through the entering state and the state passed on (decay_c E_c + S_c: the decay's
        # gradient is <dS_c, E_c>).
        dcum += start_term
        dstep += dweight * to_end
        state_term = dweight * weight
        last_term = tl.sum(state_term, 0) + ddecay * tl.load(decay_ptr + c * H + h)
        dcum += tl.where(q == last, last_term, 0.0) - state_term
        # cum_i = sum_{j<=i} step_j A: d(step_j A) = sum_{i>=j} dcum_i.
        dlog = tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum

    if HAS_D:
        dx += tl.load(D_ptr + h * P + p, mask=p < P, other=0.0)[None, :] * dy
        tl.store(dD_ptr + (c * H + h) * P + p, tl.sum(dy * x.to(tl.float32), 0), mask=p < P)
    tl.store(dx_ptr + x_offs, dx.to(dx_ptr.dtype.element_ty), mask=x_mask)

    dstep += A * dlog
    tl.store(dA_ptr + (block * K + c) * H + h, tl.sum(tl.where(valid, step * dlog, 0.0), 0))
    if FINISH:
        if SOFTPLUS:
            raw = tl.load(dt_ptr + row * H + h, mask=valid, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw += tl.load(bias_ptr + h)
            dstep *= tl.sigmoid(raw)
    tl.store(ddt_ptr + block * T * H + row * H + h, dstep, mask=valid)


@triton.jit(do_not_specialize=("T", "K", "L", "dL"))
def _chunk_bwd_bc_kernel(x_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, seg_ptr, start_ptr, cu_ptr,
                         step_ptr, cum_ptr, local_ptr, prefix_ptr, group_ptr, dlocal_ptr,
                         dprefix_ptr, dgroup_ptr, init_ptr, dfinal_ptr, dB_ptr, dC_ptr,
                         order_ptr, T, H, P, G, N, heads_per_group, K, L, dL,
                         HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr,
                         HAS_DFINAL: tl.constexpr, GENERAL: tl.constexpr, Q: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                         REVERSE: tl.constexpr):
    """One chunk of one group, one block of ``BLOCK_N`` state columns: ``dB, dC``, summed
    over the group's heads in a fixed order (deterministic, no atomics)::

        dC_i = sum_j W_ij B_j + sum_h f_i dy_i Z_s^T      W = sum_h G ⊙ L
        dB_j = sum_i W_ij C_i + sum_h w_j x_j X_s

    with ``G = dy x^T`` and ``L`` the masked decay matrix of head h (the heads meet in the
    ``(Q, Q)`` matrix ``W``, so ``B`` and ``C`` enter one matmul each), ``Z_s`` / ``X_s`` the
    start state / exit gradient of the row's segment (see the backward notes)."""
    # The state-column blocks of a chunk are neighbouring programs (they share x, dy in L2).
    n_blocks = tl.cdiv(N, BLOCK_N)
    c = (tl.program_id(0) // n_blocks).to(tl.int64)  # 64-bit offsets: T * H * P may pass 2^31
    g = tl.program_id(1)
    DTYPE = x_ptr.dtype.element_ty
    q = tl.arange(0, Q)
    t = c * Q + q
    valid = t < T
    p = tl.arange(0, BLOCK_P)
    n = (tl.program_id(0) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    row = _rows(order_ptr, t, valid, REVERSE)
    seg = tl.load(seg_ptr + t, mask=valid, other=-1)
    start = tl.load(start_ptr + t, mask=valid, other=T)
    last = tl.minimum(Q, T - c * Q) - 1
    seg_first = tl.load(seg_ptr + c * Q).to(tl.int64)    # S * H * P * N may pass 2^31
    seg_last = tl.load(seg_ptr + c * Q + last)
    same = (seg[:, None] == seg[None, :]) & (q[:, None] >= q[None, :])
    B, C, bc_offs, bc_mask = _load_B_C(B_ptr, C_ptr, row, valid, g, G, N, n)
    state_offs = p[:, None] * N + n[None, :]
    state_mask = (p[:, None] < P) & (n[None, :] < N)
    x_mask = valid[:, None] & (p[None, :] < P)
    dB = tl.zeros((Q, BLOCK_N), dtype=tl.float32)
    dC = tl.zeros((Q, BLOCK_N), dtype=tl.float32)
    grad_lower = tl.zeros((Q, Q), dtype=tl.float32)        # sum over the group's heads
    for r in range(0, heads_per_group):
        h = g * heads_per_group + r
        x_offs = row[:, None] * (H * P) + h * P + p[None, :]
        x = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0)
        dy = tl.load(dout_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            dy *= z * tl.sigmoid(z)
        step = tl.load(step_ptr + t * H + h)
        cum = tl.load(cum_ptr + t * H + h)
        lower = tl.exp(tl.where(same, cum[:, None] - cum[None, :], float("-inf"))) * step[None, :]
        grad_lower += _mm(dy, tl.trans(x), IEEE, DTYPE) * lower
        # Matmul operands only: in the operand dtype, to save registers.
        entering = _load_entering(local_ptr, prefix_ptr, group_ptr, c, h, H, K, L, P * N,
                                  state_offs, state_mask, False).to(DTYPE)
        dstate = _load_entering(dlocal_ptr, dprefix_ptr, dgroup_ptr, c, h, H, K, dL, P * N,
                                state_offs, state_mask, True).to(DTYPE)
        dy_start = _mm(dy, entering, IEEE, DTYPE)
        x_exit = _mm(x, dstate, IEEE, DTYPE)
        if GENERAL:
            to_exit, cum_exit, cum_b, factor = _exit_and_start(
                cum_ptr, cu_ptr, seg, start, cum, t, valid, c, h, H, Q, HAS_INIT)
            weight = to_exit * step
            dy_start = tl.where((start < c * Q)[:, None], dy_start, 0.0)
            x_exit = tl.where((seg == seg_last)[:, None], x_exit, 0.0)
            for s in range(seg_first, seg_last + 1):
                mine = (seg == s)[:, None]
                if HAS_INIT:
                    init = tl.where(tl.load(cu_ptr + s) >= c * Q, tl.load(
                        init_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                        other=0.0), 0.0)
                    dy_start = _mma(tl.where(mine, dy, 0.0), init, dy_start, IEEE, DTYPE)
                if HAS_DFINAL:
                    final = tl.where(tl.load(cu_ptr + s + 1) <= c * Q + Q, tl.load(
                        dfinal_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                        other=0.0), 0.0)
                    x_exit = _mma(tl.where(mine, x, 0.0), final, x_exit, IEEE, DTYPE)
        else:
            factor = tl.where(start < c * Q, tl.exp(cum), 0.0)
            cum_last = tl.load(cum_ptr + (c * Q + last) * H + h)
            weight = tl.exp(tl.where(seg == seg_last, cum_last - cum, float("-inf"))) * step
        dC += factor[:, None] * dy_start
        dB += weight[:, None] * x_exit
    dC = _mma(grad_lower, B, dC, IEEE, DTYPE)
    dB = _mma(tl.trans(grad_lower), C, dB, IEEE, DTYPE)
    tl.store(dB_ptr + bc_offs, dB.to(dB_ptr.dtype.element_ty), mask=bc_mask)
    tl.store(dC_ptr + bc_offs, dC.to(dC_ptr.dtype.element_ty), mask=bc_mask)


@triton.jit(do_not_specialize=("T", "K", "dL"))
def _initial_grad_kernel(dout_ptr, z_ptr, C_ptr, cu_ptr, step_ptr, cum_ptr, dlocal_ptr,
                         dprefix_ptr, dgroup_ptr, dfinal_ptr, dinit_ptr, order_ptr,
                         T, H, P, G, N, heads_per_group, K, dL,
                         HAS_Z: tl.constexpr, HAS_DFINAL: tl.constexpr, Q: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                         IEEE: tl.constexpr, REVERSE: tl.constexpr):
    """Gradient of one segment's initial state, one head: its tokens in the chunk where it
    starts, ``sum_i e^(cum_i - cum_b) dy_i C_i^T``, plus ``e^(cum_e - cum_b) X`` with ``X``
    the gradient leaving that chunk at its last token there (the state passed on, if it
    runs on; its final-state gradient, if it ends there); an empty segment's is its
    final-state gradient."""
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // heads_per_group
    start = tl.load(cu_ptr + s).to(tl.int64)
    end = tl.load(cu_ptr + s + 1).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    state_offs = p[:, None] * N + n[None, :]
    state_mask = (p[:, None] < P) & (n[None, :] < N)
    grad = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if HAS_DFINAL:
        final = tl.load(dfinal_ptr + (s * H + h) * P * N + state_offs, mask=state_mask,
                        other=0.0)
    else:
        final = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if end > start:
        c = start // Q
        chunk_end = tl.minimum(c * Q + Q, T)
        part_end = tl.minimum(end, chunk_end)
        cum_b = tl.where(start > c * Q,
                         tl.load(cum_ptr + tl.maximum(start - 1, 0) * H + h), 0.0)
        grad = _decayed_dout_C(dout_ptr, z_ptr, C_ptr, cum_ptr, order_ptr, start, part_end,
                               cum_b, h, g, H, P, G, N, grad, HAS_Z, BLOCK_K, BLOCK_P, BLOCK_N,
                               IEEE, REVERSE)
        exit_grad = tl.where(end <= chunk_end, final, 0.0)
        if part_end == chunk_end:                  # the segment is the chunk's last
            exit_grad += _load_entering(dlocal_ptr, dprefix_ptr, dgroup_ptr, c, h, H, K, dL,
                                        P * N, state_offs, state_mask, True)
        cum_e = tl.load(cum_ptr + (part_end - 1) * H + h)
        grad += tl.exp(cum_e - cum_b) * exit_grad
    else:
        grad = final
    tl.store(dinit_ptr + (s * H + h) * P * N + state_offs, grad, mask=state_mask)


def _add_initial_states(states, fresh, initial_states, seg, T, Q):
    """The last segment of a chunk that began in it (not before) passes on its initial state,
    decayed over its tokens there: ``states[c] += fresh[c] * init[seg(last token of c)]``."""
    K = states.shape[0]
    ends = torch.clamp(torch.arange(1, K + 1, device=states.device) * Q, max=T) - 1
    states += fresh[..., None, None] * initial_states[seg[ends].long()]


def ssd_scan_bwd(dout, x, dt, A, B, C, D, z, dt_bias, cu_seqlens, dt_softplus, reverse,
                 initial_states=None, dfinal=None):
    """Gradients ``(dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states)`` (None for absent
    inputs) of the output and, with ``dfinal`` ``(S, H, P, N)`` float32, of the final
    states. Deterministic (no atomics). Launch settings: ``SETTINGS``."""
    settings = SETTINGS
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    S = cu_seqlens.shape[0] - 1
    if dfinal is not None:
        dfinal = dfinal.float().contiguous()
    if T == 0:
        zeros = [None if v is None else torch.zeros_like(v)
                 for v in (x, dt, A, B, C, D, z, dt_bias)]
        dinit = None
        if initial_states is not None:
            dinit = dfinal.clone() if dfinal is not None else torch.zeros_like(initial_states)
        return (*zeros, dinit)
    Q = settings.bwd_chunk
    K = triton.cdiv(T, Q)
    seg, seg_start, order, step, cum, states, decay, fresh = _chunk_states(
        x, dt, A, B, dt_bias, cu_seqlens, dt_softplus, reverse, Q, settings)
    if initial_states is not None:
        _add_initial_states(states, fresh, initial_states, seg, T, Q)
    f32 = dict(device=x.device, dtype=torch.float32)
    dummy = step
    ieee = _uses_ieee(x)
    BLOCK_P, BLOCK_N = _block(P), _block(N)
    has_init, has_dfinal = initial_states is not None, dfinal is not None
    general = has_init or has_dfinal
    init = initial_states if has_init else dummy
    final = dfinal if has_dfinal else dummy
    local, prefix, group, L = linear_scan_parts(decay, states, False, settings)
    dlocal = states  # the chunk states are no longer needed: reuse the buffer
    _entering_grad_kernel[(K, H)](
        dout, z if z is not None else dout, C, cum, seg, seg_start, cu_seqlens, final, dlocal,
        order, T, H, P, G, N, H // G, HAS_Z=z is not None, HAS_DFINAL=has_dfinal, Q=Q,
        BLOCK_K=min(settings.block_k, Q), BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, IEEE=ieee,
        REVERSE=bool(reverse), num_warps=settings.state_warps,
        num_stages=settings.state_stages)
    # dS_c = dE_{c+1}, with dE_c = local_c + decay_c dE_{c+1}: the same scan, reversed.
    dstate_local, dstate_prefix, dstate_group, dL = linear_scan_parts(decay, dlocal, True,
                                                                      settings)
    del states, dlocal
    dstate_parts = (dstate_local, dstate_prefix, dstate_group)
    dx = torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    dB = torch.empty_like(B)
    dC = torch.empty_like(C)
    block_p = min(BLOCK_P, settings.bwd_block_p)
    p_blocks = triton.cdiv(P, block_p)
    finish = p_blocks == 1
    ddt = torch.empty(p_blocks, T, H, **f32)
    dA = torch.empty(p_blocks, K, H, **f32)
    dD = torch.empty(K, H, P, **f32) if D is not None else None
    parts = (local, prefix, group, *dstate_parts)
    _chunk_bwd_kernel[(K * p_blocks, H)](
        x, dt, A, B, C, D if D is not None else dummy, z if z is not None else x,
        dt_bias if dt_bias is not None else dummy, dout, seg, seg_start, cu_seqlens, step,
        cum, *parts, decay, init, final, dx, dz if dz is not None else dx, ddt, dA,
        dD if dD is not None else dummy, order, T, H, P, G, N, H // G, K, L, dL,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), HAS_INIT=has_init, HAS_DFINAL=has_dfinal, GENERAL=general,
        FINISH=finish, FROM_OUTPUTS=settings.bwd_step_from_outputs, Q=Q, BLOCK_P=block_p, BLOCK_N=min(BLOCK_N, settings.bwd_block_n),
        IEEE=ieee, REVERSE=bool(reverse), num_warps=settings.bwd_warps,
        num_stages=settings.bwd_stages)
    bc_block_n = min(BLOCK_N, settings.bwd_bc_block_n)
    _chunk_bwd_bc_kernel[(K * triton.cdiv(N, bc_block_n), G)](
        x, B, C, z if z is not None else x, dout, seg, seg_start, cu_seqlens, step, cum, *parts,
        init, final, dB, dC, order, T, H, P, G, N, H // G, K, L, dL, HAS_Z=z is not None,
        HAS_INIT=has_init, HAS_DFINAL=has_dfinal, GENERAL=general, Q=Q, BLOCK_P=BLOCK_P,
        BLOCK_N=bc_block_n, IEEE=ieee, REVERSE=bool(reverse),
        num_warps=settings.bwd_bc_warps, num_stages=settings.bwd_stages)
    dinit = None
    if has_init:
        dinit = torch.empty_like(initial_states)
        if S > 0:
            _initial_grad_kernel[(S, H)](
                dout, z if z is not None else dout, C, cu_seqlens, step, cum, *dstate_parts,
                final, dinit, order, T, H, P, G, N, H // G, K, dL, HAS_Z=z is not None,
                HAS_DFINAL=has_dfinal, Q=Q, BLOCK_K=min(settings.block_k, Q), BLOCK_P=BLOCK_P,
                BLOCK_N=BLOCK_N, IEEE=ieee, REVERSE=bool(reverse),
                num_warps=settings.state_warps, num_stages=settings.state_stages)
    ddt = ddt[0] if finish else _finish_step_grad(ddt.sum(0), dt, dt_bias, dt_softplus)
    return (dx, ddt.to(dt.dtype), dA.sum((0, 1)), dB, dC, None if D is None else dD.sum(0), dz,
            None if dt_bias is None else ddt.sum(0), dinit)


def _finish_step_grad(dstep, dt, dt_bias, dt_softplus):
    """``d loss / d dt`` from the gradient of the step sizes (``(T, H)`` float32): times
    ``sigmoid(dt + dt_bias)`` under softplus."""
    if not dt_softplus:
        return dstep
    raw = dt.float()
    if dt_bias is not None:
        raw = raw + dt_bias
    return dstep * torch.sigmoid(raw)
