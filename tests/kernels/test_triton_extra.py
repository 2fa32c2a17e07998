"""Triton backend extras: chunk boundaries against a float64 reference, determinism,
``torch.compile(fullgraph=True)`` of a module calling both ops, and CUDA-graph capture.

The float64 checks run everywhere Triton runs (CPU interpreter in CI, CUDA on a GPU) with tiny
chunks so that every segment spans several of them; the compile / graph / determinism tests need
CUDA and skip with the reason otherwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geossm import _compat
from geossm.kernels import causal_conv1d, selective_scan

from .conftest import device_under_test

DEVICE = device_under_test()
HAS_TRITON = _compat.has_triton() and (DEVICE == "cuda" or _compat.triton_interpret())
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed / not interpretable")
needs_cuda = pytest.mark.skipif(
    DEVICE != "cuda" or not HAS_TRITON,
    reason="needs a CUDA GPU with triton (CPU runs use the interpreter)")


def _scan64(u, delta, A, B, C, D, z, bias, cu, init, softplus, reverse):
    """float64 reference: a plain loop over segments and steps (autograd gives the gradients)."""
    T, channels = u.shape
    G, N = B.shape[1], B.shape[2]
    dt = delta + (bias if bias is not None else 0)
    dt = F.softplus(dt) if softplus else dt
    Bc, Cc = B.repeat_interleave(channels // G, 1), C.repeat_interleave(channels // G, 1)
    ys, finals = [None] * T, []
    for s in range(cu.numel() - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        h = init[s] if init is not None else u.new_zeros(channels, N)
        for t in (range(b - 1, a - 1, -1) if reverse else range(a, b)):
            h = torch.exp(dt[t][:, None] * A) * h + dt[t][:, None] * Bc[t] * u[t][:, None]
            ys[t] = (h * Cc[t]).sum(-1)
        finals.append(h)
    y = torch.stack(ys) if T else u.new_zeros(0, channels) + 0 * u.sum()
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y, torch.stack(finals)


def _inputs(lengths, channels, state, groups, dtype, seed=0, init=True):
    gen = torch.Generator().manual_seed(seed)
    T, S = sum(lengths), len(lengths)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = dict(u=r(T, channels), delta=r(T, channels) * 0.5,
             A=-torch.rand(channels, state, generator=gen, dtype=torch.float64) * 3 - 0.2,
             B=r(T, groups, state), C=r(T, groups, state), D=r(channels), z=r(T, channels),
             bias=r(channels) * 0.3, init=r(S, channels, state) if init else None)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return x, cu


def _tiny_chunks(**settings):
    """A launch config with 4-step chunks, so that every segment spans several of them."""
    from geossm.kernels.selective_scan_triton import LaunchConfig

    return LaunchConfig(**{"forward": "chunked", "chunk": 4, "chunk_interpret": 4, **settings})


@needs_triton
@pytest.mark.parametrize("lengths, channels, state, groups, saved, reverse", [
    ([1, 2, 0, 9, 5], 8, 5, 2, False, False),
    ([13, 0, 7], 12, 3, 3, True, True),
    ([17], 16, 16, 1, False, True),
    ([6, 11], 8, 4, 1, True, False),
])
def test_chunked_scan_matches_float64(lengths, channels, state, groups, saved, reverse):
    _check_against_float64(_tiny_chunks(), lengths, channels, state, groups, saved, reverse)


_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "bias", "init"]


def _kernels_and_float64(config, lengths, channels, state, groups, saved, reverse):
    """The kernels' forward and backward under launch ``config`` and float64 autograd's, on the
    same inputs: ``(out, final, grads, y, fin, want)`` with grads / want in ``_NAMES`` order."""
    from geossm.kernels import selective_scan_triton as ST

    x, cu = _inputs(lengths, channels, state, groups, torch.float64)
    leaves = [x[n].requires_grad_() for n in _NAMES]
    y, fin = _scan64(*leaves[:8], cu, leaves[8], True, reverse)
    gen = torch.Generator().manual_seed(5)
    dout = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    dfin = torch.randn(fin.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad((y * dout).sum() + (fin * dfin).sum(), leaves,
                               allow_unused=True, materialize_grads=True)

    dev = DEVICE
    f32 = [x[n].detach().float().to(dev) for n in _NAMES]
    args = (*f32[:8], cu.to(dev), f32[8], True, reverse)
    out, final, keep = ST.selective_scan_fwd(*args, config=config)
    got = ST.selective_scan_bwd(dout.float().to(dev), dfin.float().to(dev), *args,
                                chunk_states=keep if saved else None, config=config)
    return out, final, got, y.detach(), fin.detach(), want


def _rel_err(a, b):
    return float((a.detach().cpu().double() - b).norm() / b.norm().clamp_min(1e-12))


def _check_against_float64(config, lengths, channels, state, groups, saved, reverse):
    """Forward and backward of the kernels under launch ``config`` against float64 autograd."""
    out, final, got, y, fin, want = _kernels_and_float64(config, lengths, channels, state,
                                                         groups, saved, reverse)
    assert _rel_err(out, y) < 1e-5
    assert _rel_err(final, fin) < 1e-5
    for name, g, w in zip(_NAMES, got, want):
        assert torch.isfinite(g).all(), name
        assert _rel_err(g, w) < 1e-5, f"d{name}: {_rel_err(g, w)}"


# launch variants the GPU benchmark compares (LaunchConfig settings of selective_scan_triton)
_VARIANTS = {
    "narrow_backward_blocks": dict(max_bd=8, max_bd_bwd=4),
    "v1_layout_states_across_lanes": dict(state_in_thread=False, forward="chunked"),
    "states_in_thread_everywhere": dict(state_in_thread=True, forward="chunked"),
    "serial_forward_v1_layout": dict(forward="serial", serial_state_in_thread=False),
    "serial_forward": dict(forward="serial"),
    "serial_forward_narrow_blocks": dict(forward="serial", bd_serial=4),
    "pieces_of_two_chunks": dict(forward="pieces", piece_chunks=2),
    "pieces_of_one_chunk_reverse_poly": dict(forward="pieces", piece_chunks=1,
                                             exp_poly_every=3),
    "auto_forward": dict(forward="auto"),
    "polynomial_exp2_every_second_step": dict(exp_poly_every=2),
    "polynomial_exp2_everywhere": dict(exp_poly_every=1, forward="serial"),
    "da_sub_chunks_of_two_steps": dict(da_sub_chunk=2, da_sub_chunk_interpret=2),
    "da_sub_chunks_of_one_step": dict(da_sub_chunk=1, da_sub_chunk_interpret=1),
    # the carries' scan (GPU only; the interpreter walks rows one by one): 8 rows per step
    "carry_small_tiles_many_programs": dict(carry_tile=64, num_warps_carry=8,
                                            carry_programs_per_sm=16),
    # single-chunk segments swept both ways by one kernel, the others by the carry and dh-pass
    "fused_backward": dict(fuse_backward=True),
    "fused_backward_da_sub_chunks_of_two_steps": dict(fuse_backward=True, da_sub_chunk=2,
                                                      da_sub_chunk_interpret=2),
}


@needs_triton
@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_kernel_variants_match_float64(variant):
    """Every switchable code path of the kernels gives the float64 results (mixed lengths with an
    empty segment, both directions through two cases)."""
    config = _tiny_chunks(**_VARIANTS[variant])
    _check_against_float64(config, [1, 2, 0, 9, 5], 8, 5, 2, True, False)
    _check_against_float64(config, [13, 0, 7], 12, 3, 3, False, True)


@needs_triton
@pytest.mark.parametrize("init, channels", [(True, 8), (False, 8), (True, 40)])
def test_forward_without_second_chunks_skips_the_carry_and_writes_empty_finals(monkeypatch, init,
                                                                               channels):
    """When no segment can have a second chunk (tokens <= one chunk, e.g. the serial forward's
    whole-segment pieces), the forward launches no chunk-state or carry pass (known from shapes)
    and a light pass writes the empty segments' final states: their initial states or zeros.
    Segments over many programs, many of them empty, and (40 channels x 4 states) more (d, n)
    pairs than one tile; NaN-filled buffers show any that stays unwritten."""
    from geossm.kernels import selective_scan_triton as ST
    from geossm.kernels.selective_scan_triton import launch

    from .conftest import short_lengths

    for kernel in ("fwd_carry", "fwd_chunk_state"):
        monkeypatch.setattr(launch, kernel, _RefusedKernel(kernel))
    lengths = short_lengths(150, seed=3)
    assert lengths.count(0) > 10
    x, cu = _inputs(lengths, channels, 4, 1, torch.float64, init=init)
    y, fin = _scan64(*[x[n] for n in _NAMES[:8]], cu, x["init"], True, False)
    f32 = {n: (None if v is None else v.float().to(DEVICE)) for n, v in x.items()}
    args = (*[f32[n] for n in _NAMES[:8]], cu.to(DEVICE), f32["init"], True, False)
    out, final, _ = ST.selective_scan_fwd(*args, config=ST.LaunchConfig(forward="serial"))
    assert _rel_err(out, y) < 1e-5 and _rel_err(final, fin) < 1e-5
    empty = torch.tensor(lengths) == 0
    want_empty = x["init"][empty].float() if init else torch.zeros(int(empty.sum()), channels, 4)
    assert torch.equal(final[empty.to(final.device)].cpu(), want_empty)


@needs_triton
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_without_second_chunks_skips_its_carry(monkeypatch, reverse):
    """Tokens <= one chunk: the backward launches no carry either (known from shapes), and the
    empty segments' initial-state gradients (their final-state gradients) come from the light
    pass; forward and backward against float64, chunk states recomputed."""
    from geossm.kernels.selective_scan_triton import LaunchConfig, launch

    from .conftest import short_lengths

    for kernel in ("fwd_carry", "fwd_chunk_state", "bwd_carry"):
        monkeypatch.setattr(launch, kernel, _RefusedKernel(kernel))
    lengths = short_lengths(20, seed=4)
    assert sum(lengths) <= 64 and lengths.count(0) >= 2
    config = LaunchConfig(forward="chunked", chunk_interpret=64)
    _check_against_float64(config, lengths, 8, 4, 1, False, reverse)


@needs_triton
@pytest.mark.parametrize("fused", [False, True])
def test_backward_of_empty_segments_only_sums_zero_partials(fused):
    """Two empty segments, no token: the backward passes do not run, so the per-program partial
    sums (left unset where the passes write every row of them) must start as zeros; the
    NaN-filled ``torch.empty`` of the kernel tests shows any that are not. Against float64."""
    from geossm.kernels.selective_scan_triton import LaunchConfig

    _check_against_float64(LaunchConfig(fuse_backward=fused), [0, 0], 8, 4, 1, False, False)


@needs_triton
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_backward_is_bitwise_the_two_passes(monkeypatch, reverse):
    """``fuse_backward`` where no segment has a second chunk: the h-pass kernel runs both sweeps
    (the dh-pass and carry kernels refused), and every gradient is bitwise that of the two passes
    (same programs, same partial sums) and matches float64. Chunks of 64 with dA sub-chunks of
    8, so the fused dh sweep reads the h sweep's inner sub-chunk states; initial states,
    final-state gradients and empty segments included."""
    from geossm.kernels.selective_scan_triton import LaunchConfig, launch

    from .conftest import short_lengths

    lengths = short_lengths(12, seed=4)
    lengths[3:3] = [17, 11]          # segments over two and three dA sub-chunks
    assert sum(lengths) <= 64 and lengths.count(0) >= 2
    chunks = dict(forward="chunked", chunk=64, chunk_interpret=64, da_sub_chunk=8,
                  da_sub_chunk_interpret=8)
    two_passes = LaunchConfig(**chunks)
    fused = LaunchConfig(**chunks, fuse_backward=True)
    *_, want, _, _, _ = _kernels_and_float64(two_passes, lengths, 8, 4, 1, False, reverse)
    for kernel in ("bwd_dh_pass", "bwd_carry"):
        monkeypatch.setattr(launch, kernel, _RefusedKernel(kernel))
    _check_against_float64(fused, lengths, 8, 4, 1, False, reverse)
    *_, got, _, _, _ = _kernels_and_float64(fused, lengths, 8, 4, 1, False, reverse)
    for name, g, w in zip(_NAMES, got, want):
        assert torch.equal(g, w), f"d{name} differs from the two passes'"


@needs_triton
@pytest.mark.parametrize("saved, reverse", [(True, False), (False, True)])
def test_fused_backward_leaves_segments_of_several_chunks_to_the_carry(monkeypatch, saved,
                                                                       reverse):
    """Segments of one chunk and of several side by side: the fused h-pass sweeps every chunk
    forward and the single ones backward too; the carry and the dh-pass (``ONLY_MULTI``) take
    the chunks of the longer segments. Against float64; every h-pass launch is the fused one."""
    from geossm.kernels.selective_scan_triton import launch

    h_pass = _RecordedKernel(launch.bwd_h_pass)
    monkeypatch.setattr(launch, "bwd_h_pass", h_pass)
    _check_against_float64(_tiny_chunks(fuse_backward=True), [13, 3, 0, 7, 1, 4, 2, 9], 12, 3,
                           3, saved, reverse)
    assert h_pass.flags("FUSE_DH") == [True]


@needs_triton
@pytest.mark.parametrize("by_row", [0, 1])
@pytest.mark.parametrize("saved, reverse", [(False, False), (True, True)])
def test_carry_grids_by_segment_and_by_row_match_float64(monkeypatch, by_row, saved, reverse):
    """Both carry grids give the float64 forward and backward: one program per segment, or one
    per state row that carries the segment whose first row it is (the default where rows are
    fewer than segments). Many short and empty segments between segments of 2-5 chunks, so
    that programs of rows that start no segment, rows past the true count and segments
    without rows all occur; initial states and final-state gradients included."""
    from geossm.kernels.selective_scan_triton.config import Plan

    from .conftest import short_lengths

    lengths = short_lengths(30, seed=4)
    for at, length in ((3, 13), (11, 9), (20, 17), (29, 5)):
        lengths.insert(at, length)
    config = _tiny_chunks()
    rows, segments = sum(lengths) // 4, len(lengths)
    assert rows < segments, "this case must default to the row grid"
    default = Plan.carry_programs
    modes = []

    def forced(plan, table):
        modes.append(default(plan, table)[1])
        return (table.n_rows if by_row else plan.S), by_row
    monkeypatch.setattr(Plan, "carry_programs", forced)
    _check_against_float64(config, lengths, 8, 4, 2, saved, reverse)
    # forward carry, backward carry, and the backward's recomputed forward carry when unsaved
    assert modes == [1] * (2 if saved else 3)


class _RecordedKernel:
    """Stands in for a jitted kernel: launches it and records each launch's keyword arguments."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch

    def flags(self, name: str) -> list:
        return [kwargs.get(name) for kwargs in self.launches]


class _RefusedKernel:
    """Stands in for a jitted kernel that must not be launched: launching it fails the test."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        def launch(*_, **__):
            raise AssertionError(f"{self.name} must not be launched here")
        return launch


def _dA_error(config, lengths, reverse):
    """Relative error of the kernels' dA against float64 autograd (8 channels, 4 states)."""
    _, _, got, _, _, want = _kernels_and_float64(config, lengths, 8, 4, 1, True, reverse)
    return _rel_err(got[2], want[2])


@needs_triton
@pytest.mark.parametrize("lengths, reverse", [([512], False), ([300, 0, 212], True)])
def test_long_chunks_keep_the_dA_accuracy_of_their_sub_chunks(lengths, reverse):
    """dA sums terms of the two backward passes that cancel; weighted by the time since the start
    of a 256-step chunk their float32 error is ~1.6e-4. Weighted per 16-step sub-chunk
    (``da_sub_chunk``) it stays within the 1e-5 of the kernel tests."""
    from geossm.kernels.selective_scan_triton import LaunchConfig

    config = LaunchConfig(forward="chunked", chunk=256, chunk_interpret=256, da_sub_chunk=16,
                          da_sub_chunk_interpret=16)
    assert _dA_error(config, lengths, reverse) < 1e-5


def test_chunk_must_be_a_multiple_of_its_dA_sub_chunk():
    from geossm.kernels.selective_scan_triton import LaunchConfig

    with pytest.raises(ValueError, match="multiple"):
        LaunchConfig(chunk=96, da_sub_chunk=64)
    assert LaunchConfig(chunk=32, da_sub_chunk=64).da_sub_length("cuda") == 32


def test_carry_settings_are_checked_and_set_the_plan():
    """``carry_tile`` (rows x pairs per scan step) must be 0 (auto) or a power of two; with one
    segment the (d, n) blocks narrow until ``carry_programs_per_sm`` programs per SM (the
    interpreter counts 4 SMs), and the rows per step follow the tile: auto gives 512-tiles
    from 2 programs per SM on, 4096-tiles below."""
    from geossm.kernels.selective_scan_triton import LaunchConfig
    from geossm.kernels.selective_scan_triton.config import Plan

    for bad in (1000, -4):
        with pytest.raises(ValueError, match="power of two"):
            LaunchConfig(carry_tile=bad)
    with pytest.raises(ValueError, match="num_warps_carry"):
        LaunchConfig(num_warps_carry=0)
    cu = torch.tensor([0, 4000], dtype=torch.int32)

    def blocks_and_rows(**settings):
        plan = Plan(cu, 4000, 64, 1, 16, torch.device("cpu"), LaunchConfig(**settings))
        return plan.BDN, plan.K

    assert blocks_and_rows(carry_tile=2048) == (64, 32)         # 16 blocks: 4 per SM
    assert blocks_and_rows(carry_tile=2048, carry_programs_per_sm=16) == (16, 128)
    assert blocks_and_rows(carry_programs_per_sm=1) == (256, 16)    # 1 per SM: 4096 / 256
    assert blocks_and_rows(carry_programs_per_sm=2) == (128, 8)     # 2 per SM: 512 / 128, at least 8


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ddelta_is_written_in_delta_dtype_as_the_rounded_float32_gradient(dtype):
    """The dh-pass stores ddelta in delta's dtype (no cast pass after the kernels): the same
    values as a float32 delta holding the same numbers gives, rounded once (to nearest even
    on the GPU, as ``Tensor.to``; Triton's CPU interpreter truncates float32 -> bfloat16, so
    there within one unit in the last place)."""
    from geossm.kernels import selective_scan_triton as ST

    x, cu = _inputs([7, 0, 12], 8, 4, 2, torch.float64)
    f32 = {n: (None if v is None else v.float().to(DEVICE)) for n, v in x.items()}
    low = f32["delta"].to(dtype)
    grads = {}
    for name, delta in (("low", low), ("f32", low.float())):
        args = (f32["u"], delta, f32["A"], f32["B"], f32["C"], f32["D"], f32["z"], f32["bias"],
                cu.to(DEVICE), f32["init"], True, False)
        out, final, keep = ST.selective_scan_fwd(*args, config=_tiny_chunks())
        dout = torch.ones_like(out)
        grads[name] = ST.selective_scan_bwd(dout, None, *args, chunk_states=keep,
                                            config=_tiny_chunks())
    assert grads["low"][1].dtype == dtype and grads["f32"][1].dtype == torch.float32
    if DEVICE == "cuda":
        assert torch.equal(grads["low"][1], grads["f32"][1].to(dtype))
    else:
        ulp = torch.finfo(dtype).eps * grads["f32"][1].abs()   # one unit at the value's scale
        assert ((grads["low"][1].float() - grads["f32"][1]).abs() <= ulp).all()
        assert not torch.equal(grads["low"][1].float(), grads["f32"][1])   # it was rounded
    for got, want in zip(grads["low"][2:], grads["f32"][2:]):   # the rest: unchanged
        if want is not None:
            assert torch.equal(got, want)


def test_register_caps_are_checked_and_reach_their_pass(monkeypatch):
    """A cap outside the registers a thread can hold is refused; each pass gets its own cap
    (the output and chunk-state passes fall back to the forward's; by default they are
    capped at 80 / 64 and the serial forward and backward are not) and none under the
    interpreter."""
    from geossm.kernels.selective_scan_triton import LaunchConfig, launch

    for bad in (8, 256, 96.0):
        with pytest.raises(ValueError, match="maxnreg_h_pass"):
            LaunchConfig(maxnreg_h_pass=bad)
    config = LaunchConfig(maxnreg_fwd=72, maxnreg_output=None, maxnreg_chunk_state=None,
                          maxnreg_h_pass=168, maxnreg_dh_pass=128)
    monkeypatch.setattr(launch, "_interpreting", lambda u: False)
    kernels = ("fwd", "output", "chunk_state", "h_pass", "dh_pass")
    caps = {k: launch._reg_cap(None, config, k) for k in kernels}
    assert caps == dict(fwd=dict(maxnreg=72), output=dict(maxnreg=72),
                        chunk_state=dict(maxnreg=72), h_pass=dict(maxnreg=168),
                        dh_pass=dict(maxnreg=128))
    defaults = {k: launch._reg_cap(None, LaunchConfig(), k) for k in kernels}
    assert defaults == dict(fwd={}, output=dict(maxnreg=80), chunk_state=dict(maxnreg=64),
                            h_pass={}, dh_pass={})
    assert launch._reg_cap(None, LaunchConfig(maxnreg_fwd=80, maxnreg_chunk_state=64),
                           "chunk_state") == dict(maxnreg=64)
    assert launch._reg_cap(None, LaunchConfig(), "h_pass") == {}
    monkeypatch.setattr(launch, "_interpreting", lambda u: True)
    assert launch._reg_cap(None, config, "h_pass") == {}


class _ConvScan(torch.nn.Module):
    """conv -> selective scan, as in a Mamba block, on packed tokens."""

    def __init__(self, channels=32, state=16, width=4):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, width) * 0.3)
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.A_log = torch.nn.Parameter(torch.rand(channels, state).log())
        self.D = torch.nn.Parameter(torch.ones(channels))
        self.dt_bias = torch.nn.Parameter(torch.full((channels,), -2.0))

    def forward(self, x, delta, B, C, z, cu):
        h = causal_conv1d(x, self.weight, self.bias, cu_seqlens=cu, activation="silu",
                          backend="triton")
        return selective_scan(h, delta, -self.A_log.exp(), B, C, D=self.D, z=z,
                              delta_bias=self.dt_bias, delta_softplus=True, cu_seqlens=cu,
                              backend="triton")


def _module_inputs(T_lengths, channels=32, state=16, dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    T = sum(T_lengths)
    cu = torch.tensor([0] + T_lengths, device="cuda").cumsum(0).to(torch.int32)

    def r(*s):
        return torch.randn(*s, generator=gen, device="cuda").to(dtype)

    return (r(T, channels), r(T, channels), r(T, state), r(T, state), r(T, channels)), cu


@needs_cuda
def test_compile_fullgraph_module_calling_both_ops():
    torch.manual_seed(0)
    model = _ConvScan().cuda()
    (x, delta, B, C, z), cu = _module_inputs([300, 0, 1, 77, 1000])
    x.requires_grad_()
    eager = model(x, delta, B, C, z, cu)
    eager.float().square().sum().backward()
    g_eager = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, delta, B, C, z, cu)
    out.float().square().sum().backward()
    g_comp = [p.grad for p in model.parameters()] + [x.grad]
    assert torch.equal(out, eager)
    for a, b in zip(g_comp, g_eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


class _ConvScanOps(_ConvScan):
    """The same module through the registered custom ops (no public-wrapper validation)."""

    def forward(self, x, delta, B, C, z, cu):
        h = torch.ops.geossm.causal_conv1d(x, self.weight, self.bias, cu, True, False, "triton")
        out = torch.ops.geossm.selective_scan(
            h, delta, -self.A_log.exp(), B[:, None], C[:, None], self.D, z, self.dt_bias, cu,
            None, True, False, "triton")[0]
        return out


@needs_cuda
def test_compile_fullgraph_custom_ops():
    torch.manual_seed(0)
    model = _ConvScanOps().cuda()
    (x, delta, B, C, z), cu = _module_inputs([300, 0, 1, 77, 1000])
    x.requires_grad_()
    eager = model(x, delta, B, C, z, cu)
    eager.float().square().sum().backward()
    g_eager = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    out = torch.compile(model, fullgraph=True)(x, delta, B, C, z, cu)
    out.float().square().sum().backward()
    assert torch.equal(out, eager)
    for a, b in zip([p.grad for p in model.parameters()] + [x.grad], g_eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("forward", ["chunked", "serial"])
def test_cuda_graph_capture_forward_and_backward(forward):
    from geossm.kernels import causal_conv1d_triton as CT
    from geossm.kernels import selective_scan_triton as ST

    config = ST.LaunchConfig(forward=forward)

    channels, state = 32, 16
    (x, delta, B, C, z), cu = _module_inputs([300, 0, 1, 77, 1000], channels, state)
    weight = torch.randn(channels, 4, device="cuda") * 0.3
    A = -torch.rand(channels, state, device="cuda") - 0.1
    Dsk = torch.randn(channels, device="cuda")
    bias = torch.randn(channels, device="cuda") * 0.1
    dout = torch.randn_like(x)
    B3, C3 = B.view(-1, 1, state), C.view(-1, 1, state)

    def step():
        h = CT.causal_conv1d_fwd(x, weight, None, cu, True, False)
        out, final, saved = ST.selective_scan_fwd(h, delta, A, B3, C3, Dsk, z, bias, cu, None,
                                                  True, False, config=config)
        grads = ST.selective_scan_bwd(dout, None, h, delta, A, B3, C3, Dsk, z, bias, cu, None,
                                      True, False, chunk_states=saved, config=config)
        dx = CT.causal_conv1d_bwd(grads[0], x, weight, None, cu, True, False)[0]
        return out, final, grads[2], dx

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()                                     # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        for t in (x, delta, z):
            t.copy_(torch.randn(t.shape, generator=gen, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for a, b in zip(static, eager):
            assert torch.equal(a, b)


@needs_cuda
def test_backward_is_deterministic():
    from geossm.kernels import selective_scan_triton as ST

    (x, delta, B, C, z), cu = _module_inputs([5000, 3, 0, 20000, 77], 64, 16)
    A = -torch.rand(64, 16, device="cuda") - 0.1
    args = (x, delta, A, B.view(-1, 1, 16), C.view(-1, 1, 16), None, z, None, cu, None, True,
            False)
    dout = torch.randn_like(x)
    first = ST.selective_scan_bwd(dout, None, *args)
    second = ST.selective_scan_bwd(dout, None, *args)
    for a, b in zip(first, second):
        if a is not None:
            assert torch.equal(a, b)
