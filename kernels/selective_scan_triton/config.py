"""Launch settings of the Triton selective scan and the launch plan derived from them.

A :class:`LaunchConfig` is a frozen (hashable) value passed to the host functions; nothing reads
module globals at launch time. ``DEFAULT_CONFIG`` is what the public API uses; ``V1_CONFIG`` is
the session-3 launch (chunked forward, 32 programs per SM) that the benchmark times alongside.
"""

from __future__ import annotations

import collections
import dataclasses
import weakref

import torch
import triton

from geossm.packed import tensor_version

FORWARD_MODES = ("chunked", "serial", "pieces", "auto")
SERIAL_PIECE_CHUNKS = 1 << 16   # "serial": pieces of 8M tokens at L = 128, i.e. whole segments


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Block sizes, warps and program counts of the scan's passes (GPU defaults).

    Attributes:
        chunk: time steps per chunk on the GPU (matters for multi-chunk segments only); 128
            (session 30, H100, against 64: forward 5-9 % and forward + backward 7-10 % faster
            on multi-chunk segments; the dA sub-chunks keep dA's error that of 64).
        chunk_interpret: chunk under the interpreter (small tests still cross chunks); 16.
        max_bd: channels per forward program (a program keeps an (N, BD) float32 tile); 64.
        max_bd_bwd: channels per backward program (one warp: no cross-warp sums); 32.
        num_warps_fwd, num_warps_bwd: None = BD // 32 warps, so that N stays inside a thread.
        maxnreg_fwd: register cap per thread of the serial forward, and of the chunked
            forward's passes whose own cap below is None; None = compiler's choice.
        maxnreg_output, maxnreg_chunk_state, maxnreg_h_pass, maxnreg_dh_pass: the same for the
            chunked forward's output pass and chunk-state pass (None = ``maxnreg_fwd``) and
            the backward's two passes (None = the compiler's choice). The passes are
            latency-bound with few resident warps, and their registers set how many fit on an
            SM. Default output 80 (96 uncapped: 10 -> 12 programs per SM) and chunk-state 64
            (80: 12 -> 16), no spills: forward -1.5 to -3.7 % on H100 (NOTES, session 39);
            the serial forward stays uncapped (80 spills there: graph_tokens +2 %).
        programs_per_sm_fwd, programs_per_sm_bwd: programs per SM of the chunk-walking passes
            (more, shorter programs shrink the last wave; session 3 measured 60 / 48 best).
        forward: ``"chunked"`` (local chunk states, carry, rescan: two exponentials per element
            of multi-chunk segments, chunk-parallel), ``"serial"`` (one program per (segment,
            channel block) walks its segment once: one exponential per element, no chunk-state
            work; parallel over segments only), ``"pieces"`` (segments cut into pieces of
            ``piece_chunks`` chunks: local end states and a carry per piece, then one program
            per piece walks it like the serial forward: the second exponential only for the
            non-last pieces, far fewer state rows than chunks) or ``"auto"`` (default: serial
            when segments x channel blocks give ``serial_programs_per_sm`` programs per SM and
            segments average at most ``serial_max_mean`` tokens, else chunked; session 16's
            H200 run measured serial faster than chunked only there).
        bd_serial, num_warps_serial: channels and warps per program of the serial and piece
            forwards (32 / 1: one channel per lane).
        serial_programs_per_sm: programs per SM the serial / piece forwards aim for.
        serial_max_mean: maximum mean segment length (T / S) for ``auto`` to go serial.
        piece_chunks: chunks per piece of the piece forward; 0 = from the shapes (a power of
            two: the mean segment cut into as many pieces as ``serial_programs_per_sm`` needs).
        state_in_thread: the chunked forward's and the backward's passes keep all N states of a
            channel in one thread (tiles read through ``load_state`` so that Triton lays the
            channels across lanes): sums over N without shuffles, 17-34 % fewer step-loop
            instructions, yet 1-11 % slower on the H200 (session 16); False = the v1 layout
            (a channel's states over 16 lanes).
        serial_state_in_thread: the same for the serial / piece forward kernel (measured: its
            state-in-thread form beat the chunked v1 forward on many short segments).
        da_sub_chunk, da_sub_chunk_interpret: the backward weighs dA's terms by the time since
            the start of their sub-chunk of this many steps (GPU / interpreter; chunks no longer
            than it are one sub-chunk). dA sums terms of both backward passes that cancel, and
            their float32 error grows with the weights, so longer chunks keep it at this length
            (64 / 8: a chunk of 128 has the dA error of one of 64).
        carry_tile: (chunk rows x (d, n) pairs) a carry program scans per step (a power of
            two), or 0 (default): 512 where the carry grid has at least 2 programs per SM (more
            than one wave of 4096-tiles, whose ~233 registers per thread fit 2 programs per SM),
            else 4096 (few programs walking long segments want long steps). H100, session 43
            (NOTES): scene forward -4.0 %, windows -1.2 %, long unchanged against 4096.
        num_warps_carry: warps per carry program; 4.
        carry_programs_per_sm: the carries narrow their (d, n) blocks (down to 8 pairs) until
            segments x blocks give this many programs per SM; 4.
        fuse_backward: the h-pass kernel (``FUSE_DH``) runs the h sweep over every
            chunk and, right after it, the dh-pass over each segment's only chunk; the carry
            and the dh-pass take the chunks of longer segments. Bitwise the two passes' results
            where every segment is one chunk (elsewhere dA / d(delta_bias) are summed in
            another order). Off: not faster. On an H100 (NOTES, session 46) it ties on
            graph_tokens (every segment one chunk) and is 0.0-0.2 % slower on the other
            workloads: its 244 registers fit 8 programs per SM against the dh-pass's 12.
        exp_poly_every: k > 0 evaluates the decays of every k-th step with a polynomial on the
            FMA pipe instead of MUFU ``ex2``; 0 = all on MUFU (measured 17-30 % slower with
            k = 4: the loops are not MUFU-bound).
    """

    chunk: int = 128
    chunk_interpret: int = 16
    da_sub_chunk: int = 64
    da_sub_chunk_interpret: int = 8
    max_bd: int = 64
    max_bd_bwd: int = 32
    num_warps_fwd: int | None = None
    num_warps_bwd: int | None = None
    maxnreg_fwd: int | None = None
    maxnreg_output: int | None = 80
    maxnreg_chunk_state: int | None = 64
    maxnreg_h_pass: int | None = None
    maxnreg_dh_pass: int | None = None
    programs_per_sm_fwd: int = 60
    programs_per_sm_bwd: int = 48
    forward: str = "auto"
    bd_serial: int = 32
    num_warps_serial: int | None = None
    serial_programs_per_sm: int = 16
    serial_max_mean: int = 8192
    piece_chunks: int = 0
    exp_poly_every: int = 0
    state_in_thread: bool = False
    serial_state_in_thread: bool = True
    carry_tile: int = 0
    num_warps_carry: int = 4
    carry_programs_per_sm: int = 4
    fuse_backward: bool = False

    def __post_init__(self):
        if self.forward not in FORWARD_MODES:
            raise ValueError(f"forward must be one of {FORWARD_MODES}, got {self.forward!r}")
        for name in ("chunk", "chunk_interpret", "max_bd", "max_bd_bwd", "bd_serial",
                     "programs_per_sm_fwd", "programs_per_sm_bwd", "serial_programs_per_sm",
                     "da_sub_chunk", "da_sub_chunk_interpret", "num_warps_carry",
                     "carry_programs_per_sm"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for chunk, sub in (("chunk", "da_sub_chunk"),
                           ("chunk_interpret", "da_sub_chunk_interpret")):
            steps, sub_steps = getattr(self, chunk), getattr(self, sub)
            if steps > sub_steps and steps % sub_steps:
                raise ValueError(f"{chunk} ({steps}) must be a multiple of {sub} "
                                 f"({sub_steps}) when longer than it")
        for name in ("maxnreg_fwd", "maxnreg_output", "maxnreg_chunk_state", "maxnreg_h_pass",
                     "maxnreg_dh_pass"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 24 <= value <= 255):
                raise ValueError(f"{name} must be None or an int in [24, 255], got {value!r}")
        if (not isinstance(self.carry_tile, int) or self.carry_tile < 0
                or self.carry_tile & (self.carry_tile - 1)):
            raise ValueError(f"carry_tile must be 0 (auto) or a power of two, "
                             f"got {self.carry_tile!r}")
        if self.piece_chunks < 0:
            raise ValueError(f"piece_chunks must be >= 0, got {self.piece_chunks!r}")
        if self.exp_poly_every < 0:
            raise ValueError(f"exp_poly_every must be >= 0, got {self.exp_poly_every!r}")

    def register_cap(self, kernel: str) -> int | None:
        """Register cap per thread of ``kernel``: ``"fwd"`` (the serial forward),
        ``"output"`` and ``"chunk_state"`` (the chunked forward's passes; both fall back to
        the forward's), ``"h_pass"`` or ``"dh_pass"``."""
        return {"fwd": self.maxnreg_fwd,
                "output": self.maxnreg_output or self.maxnreg_fwd,
                "chunk_state": self.maxnreg_chunk_state or self.maxnreg_fwd,
                "h_pass": self.maxnreg_h_pass, "dh_pass": self.maxnreg_dh_pass}[kernel]

    def chunk_length(self, device) -> int:
        return self.chunk if torch.device(device).type == "cuda" else self.chunk_interpret

    def da_sub_length(self, device) -> int:
        """Steps per dA sub-chunk on ``device``: at most the chunk length, which it divides."""
        cuda = torch.device(device).type == "cuda"
        sub = self.da_sub_chunk if cuda else self.da_sub_chunk_interpret
        return min(sub, self.chunk_length(device))


# the fastest measured per part (session 16, H200): v1 layout, 60 / 48 programs per SM, the
# serial forward where many short segments fill the GPU
DEFAULT_CONFIG = LaunchConfig()
V1_CONFIG = LaunchConfig(programs_per_sm_fwd=32, programs_per_sm_bwd=32, forward="chunked",
                         state_in_thread=False, maxnreg_output=None, maxnreg_chunk_state=None)


def pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two that divides ``n`` and is at most ``cap``."""
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def num_sms(dev: torch.device) -> int:
    if dev.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(dev).multi_processor_count


def _programs(bound: int, per_sm: int, sms: int, channel_blocks: int, dev) -> int:
    """Programs of a chunk-walking pass: ``per_sm`` per SM shared by the channel blocks (4 on
    the interpreter), at most one per chunk."""
    if dev.type != "cuda":
        return max(1, min(bound, 4))
    return max(1, min(bound, (sms * per_sm) // max(1, channel_blocks)))


def carry_grid(segments: int, rows: int) -> tuple[int, int]:
    """Programs along a carry grid's first axis and ``by_row`` (``carry`` module docstring):
    one per segment, or one per state row where rows are fewer."""
    by_row = int(rows < segments)
    return (rows if by_row else segments), by_row


class ChunkTable:
    """Device-side metadata of the cut of every segment into chunks of ``L`` steps (the last
    chunk of a segment may be shorter; chunks never cross segments). No host sync.

    Attributes: ``n_chunks_bound`` (>= the chunk count: ceil(len/L) <= len/L + 1 per segment),
    ``n_rows`` (>= the non-last chunks, which are full: T // L), ``cu_nl`` (S+1,)
    non-last-chunk (state row) offsets per segment, ``meta`` (one 8-int row per chunk: valid,
    segment, k, chunks of the segment, segment's first token, segment length, segment's first
    state row, pad: one round trip per chunk), ``row_seg`` (segment of every state row) and
    ``may_have_rows`` (False: no segment has a second chunk, so there is nothing to carry).
    """

    def __init__(self, cu_seqlens: torch.Tensor, L: int, T: int, dev):
        S = cu_seqlens.numel() - 1
        self.L = L
        self.n_chunks_bound = max(1, T // L + S)
        self.n_rows = max(1, T // L)
        # a non-last chunk is full, so a second chunk needs more than L tokens (shapes, no sync)
        self.may_have_rows = T > L
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
        nck = ((lens.long() + (L - 1)) // L).to(torch.int32)     # int64: L may be ~2**22
        zero = torch.zeros(1, dtype=torch.int32, device=dev)
        cu_ch = torch.cat([zero, torch.cumsum(nck, 0, dtype=torch.int32)])
        self.cu_nl = torch.cat([zero, torch.cumsum((nck - 1).clamp_(min=0), 0, dtype=torch.int32)])
        ar = torch.arange(self.n_chunks_bound, device=dev, dtype=torch.int32)
        chunk_seg = torch.searchsorted(cu_ch[1:], ar, right=True, out_int32=True)
        seg = chunk_seg.clamp(max=max(S - 1, 0)).long()
        if S > 0:
            cols = [ar < cu_ch[-1], seg, ar - cu_ch[seg], nck[seg],
                    cu_seqlens[:-1][seg], lens[seg], self.cu_nl[seg], torch.zeros_like(ar)]
            self.meta = torch.stack([col.to(torch.int32) for col in cols], 1).contiguous()
        else:
            self.meta = torch.zeros(self.n_chunks_bound, 8, dtype=torch.int32, device=dev)
        # segment of every chunk-state row (rows past the true count point past the last one)
        self.row_seg = torch.searchsorted(self.cu_nl[1:], ar[:self.n_rows], right=True,
                                          out_int32=True)


class Plan:
    """Launch geometry and device-side chunk metadata (no host sync: only shapes are read)."""

    def __init__(self, cu_seqlens: torch.Tensor, T: int, D: int, G: int, N: int, dev,
                 config: LaunchConfig):
        S = cu_seqlens.numel() - 1
        L = config.chunk_length(dev)
        self.config = config
        self.S, self.T, self.D, self.G, self.N, self.L = S, T, D, G, N, L
        self.SUB = config.da_sub_length(dev)
        self.dpg = D // G
        self.BD = pow2_divisor(self.dpg, config.max_bd)
        self.n_dblk = D // self.BD
        self.nblk_g = self.dpg // self.BD                  # blocks sharing one group
        self.NP = max(2, triton.next_power_of_2(N))
        self.num_warps = config.num_warps_fwd or max(1, min(4, self.BD // 32))
        # the backward may use narrower channel blocks (its passes are register-bound)
        self.BD_bwd = pow2_divisor(self.dpg, config.max_bd_bwd)
        self.n_dblk_bwd = D // self.BD_bwd
        self.nblk_g_bwd = self.dpg // self.BD_bwd
        self.num_warps_bwd = config.num_warps_bwd or max(1, min(4, self.BD_bwd // 32))
        # serial forward: one program per (segment or piece, channel block)
        self.BD_serial = pow2_divisor(self.dpg, config.bd_serial)
        self.n_dblk_serial = D // self.BD_serial
        self.num_warps_serial = config.num_warps_serial or max(1, min(4, self.BD_serial // 32))
        sms = num_sms(dev)
        self.forward = self._forward_mode(config, sms, dev)
        self.chunks = ChunkTable(cu_seqlens, L, T, dev)
        self.cu_nl, self.meta = self.chunks.cu_nl, self.chunks.meta
        self.row_seg = self.chunks.row_seg
        self.n_chunks_bound, self.n_rows = self.chunks.n_chunks_bound, self.chunks.n_rows
        self.piece_chunks = self._piece_chunks(config, sms, dev)
        self.pieces = (ChunkTable(cu_seqlens, L * self.piece_chunks, T, dev)
                       if self.forward in ("serial", "pieces") else None)
        self.nprog = _programs(self.n_chunks_bound, config.programs_per_sm_fwd, sms,
                               self.n_dblk, dev)
        self.nprog_rows = max(1, min(self.nprog, self.n_rows))
        self.nprog_bwd = _programs(self.n_chunks_bound, config.programs_per_sm_bwd, sms,
                                   self.n_dblk_bwd, dev)
        # carry passes: one program per (segment, block of BDN (d, n) pairs), walking that
        # segment's chunk rows K at a time (or per (state row, block) where rows are fewer than
        # segments: ``carry`` module docstring). Few segments (one long sequence) get narrow
        # blocks so that enough programs run side by side; many short ones get wide blocks.
        DN = D * N
        bdn = triton.next_power_of_2(DN)
        while bdn > 8 and S * triton.cdiv(DN, bdn) < config.carry_programs_per_sm * sms:
            bdn //= 2
        self.BDN = min(bdn, 1024)
        programs = carry_grid(S, self.n_rows)[0] * triton.cdiv(DN, self.BDN)
        tile = config.carry_tile or (512 if programs >= 2 * sms else 4096)
        self.K = max(8, min(512, tile // self.BDN))

    def carry_programs(self, table: ChunkTable) -> tuple[int, int]:
        """:func:`carry_grid` of a carry pass over ``table``'s state rows."""
        return carry_grid(self.S, table.n_rows)

    def _serial_programs_wanted(self, sms: int, dev) -> int:
        return (self.config.serial_programs_per_sm * sms) if dev.type == "cuda" else 4

    def _forward_mode(self, config: LaunchConfig, sms: int, dev) -> str:
        """``chunked``, ``serial`` or ``pieces``; ``auto``: serial where segments x channel
        blocks alone fill the GPU with short segments, else chunked."""
        if config.forward != "auto":
            return config.forward
        enough = self.S * self.n_dblk_serial >= self._serial_programs_wanted(sms, dev)
        short = self.T <= config.serial_max_mean * max(self.S, 1)
        return "serial" if enough and short else "chunked"

    def _piece_chunks(self, config: LaunchConfig, sms: int, dev) -> int:
        """Chunks per piece: ``config.piece_chunks``, or (0) a power of two that cuts the mean
        segment into enough pieces for ``serial_programs_per_sm`` programs per SM."""
        if self.forward == "serial":
            return SERIAL_PIECE_CHUNKS
        if config.piece_chunks:
            return config.piece_chunks
        wanted = self._serial_programs_wanted(sms, dev)
        per_segment = -(-wanted // max(1, self.S * self.n_dblk_serial))
        mean_chunks = -(-self.T // max(1, self.S * self.L))
        chunks = max(1, -(-mean_chunks // per_segment))
        return min(1024, triton.next_power_of_2(chunks))


_PLAN_CACHE: "collections.OrderedDict" = collections.OrderedDict()
_PLAN_CACHE_SIZE = 16


def plan_for(cu_seqlens, T, D, G, N, dev, config: LaunchConfig) -> Plan:
    """The launch plan of ``cu_seqlens`` under ``config``, cached per tensor (identity and
    in-place version).

    Building one costs ~10 small device ops; the layers of a model and the backward share one
    ``cu_seqlens`` tensor per batch, so they share one plan. Never cached while a CUDA graph is
    being captured: a captured plan must live in the graph's own memory pool.
    """
    capturing = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    version = tensor_version(cu_seqlens)
    if capturing or version is None or torch.compiler.is_compiling():
        return Plan(cu_seqlens, T, D, G, N, dev, config)
    key = (id(cu_seqlens), version, T, D, G, N, str(dev), config)
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0]() is cu_seqlens:
        _PLAN_CACHE.move_to_end(key)
        return hit[1]
    plan = Plan(cu_seqlens, T, D, G, N, dev, config)
    _PLAN_CACHE[key] = (weakref.ref(cu_seqlens), plan)
    while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return plan
