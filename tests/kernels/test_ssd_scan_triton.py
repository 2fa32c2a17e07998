"""Triton SSD kernels: the heavy cases of test_ssd_scan.py and GPU-only checks.

On CPU these run in Triton's interpreter only where tiny (chunk-boundary cases); the long,
many-segment and 16-bit tensor-core cases need CUDA and skip with the reason otherwise.
"""

from __future__ import annotations

import re

import pytest
import torch

from geossm import _compat
from geossm.kernels import ssd_scan
from geossm.kernels.ssd_scan_triton import LaunchSettings, use_settings

from .conftest import device_under_test
from .test_ssd_scan import (FP32_TOLERANCE, LENGTHS, OWN_BACKWARD_TOLERANCE, assert_close,
                            make_inputs, rel_err, run, short_lengths)

DEVICE = device_under_test()
HAS_TRITON = _compat.has_triton() and (DEVICE == "cuda" or _compat.triton_interpret())
needs_triton = pytest.mark.skipif(not HAS_TRITON,
                                  reason="triton not installed / not interpretable")
needs_cuda = pytest.mark.skipif(DEVICE != "cuda" or not HAS_TRITON,
                                reason="needs a CUDA GPU with triton (CPU runs use the "
                                       "interpreter on tiny cases only)")


# Forward chunk / row block / source tile / backward chunk: the default and two others that
# cut chunks into several row blocks and tiles (the interpreter ignores warps and stages).
SETTINGS = {
    "default": LaunchSettings(),
    "c64_m32_k16": LaunchSettings(chunk=64, block_m=32, block_k=16, bwd_chunk=64),
    "c128_m64_k32_b128": LaunchSettings(chunk=128, block_m=64, block_k=32, bwd_chunk=128),
}


def boundary_lengths(case: str, chunk: int) -> list[int]:
    return {"end_minus_1": [chunk - 1, 2], "exact": [chunk, chunk], "plus_1": [chunk + 1, 0, 3],
            "spans_two": [5, 2 * chunk - 3]}[case]


@needs_triton
@pytest.mark.parametrize("settings", list(SETTINGS))
@pytest.mark.parametrize("case", ["end_minus_1", "exact", "plus_1", "spans_two"])
@pytest.mark.parametrize("states", [True, False], ids=["with_states", "output_only"])
def test_segments_around_chunk_boundaries(settings, case, states):
    """Segments that start or end at, before or after a forward and a backward chunk edge
    keep their own state, with initial and final states or without (the Triton backward
    runs in both). Gradients sum over hundreds of float32 terms: the own-backward
    tolerance."""
    chosen = SETTINGS[settings]
    lengths = boundary_lengths(case, chosen.chunk) + boundary_lengths(case, chosen.bwd_chunk)
    inputs, cu = make_inputs(lengths, heads=2, head_dim=4, groups=1, state=4, init=states)
    want = run("exact", inputs, cu, final=states)
    with use_settings(chosen):
        got = run("triton", inputs, cu, final=states)
    assert_close_with_sums(got, want)


@needs_triton
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split_p_and_n"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_state_columns_in_blocks_and_heads_sharing_a_group(reverse, split):
    """N = 20 walked in blocks of 16 state columns by the backward, P = 20 padded to 32, two
    groups of two heads each (the dB/dC kernel sums over a group's heads); ``split``: the
    dx kernel's channels in two programs of 16 (their ddt / dA shares summed after) and
    dB/dC's state columns in two programs of 16."""
    inputs, cu = make_inputs([70, 3, 0, 90], heads=4, head_dim=20, groups=2, state=20,
                             init=False)
    want = run("exact", inputs, cu, reverse=reverse, final=False)
    extra = dict(bwd_block_p=16, bwd_bc_block_n=16) if split else {}
    with use_settings(LaunchSettings(chunk=64, block_m=32, block_k=16, bwd_block_n=16,
                                     **extra)):
        got = run("triton", inputs, cu, reverse=reverse, final=False)
    assert_close_with_sums(got, want)


# Backward chunks of 16: segments over several chunks, several segments (and empty ones) in
# one chunk, a segment of one token, one ending exactly at a chunk edge (5 + 1 + 10 = 16).
STATE_LENGTHS = [0, 5, 1, 10, 0, 40, 2, 17, 0]


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("init, final", [(True, True), (True, False), (False, True)],
                         ids=["init_and_final", "init_only", "final_only"])
def test_initial_and_final_state_gradients(init, final, reverse):
    """The Triton backward with initial states (their gradient) and / or a final-state
    gradient against the float64 reference, with channels and state columns split over
    programs."""
    inputs, cu = make_inputs(STATE_LENGTHS, heads=4, head_dim=20, groups=2, state=20,
                             init=init)
    want = run("exact", inputs, cu, reverse=reverse, final=final)
    settings = LaunchSettings(chunk=64, block_m=32, block_k=16, bwd_chunk=16, bwd_block_n=16,
                              bwd_block_p=16, bwd_bc_block_n=16)
    with use_settings(settings):
        got = run("triton", inputs, cu, reverse=reverse, final=final)
    assert_close_with_sums(got, want)


@needs_triton
def test_backward_is_bitwise_deterministic():
    """No atomics: two backward passes give identical bits (heads sharing a group, initial
    and final states)."""
    inputs, cu = make_inputs(STATE_LENGTHS, heads=4, groups=2, init=True)
    with use_settings(LaunchSettings(bwd_chunk=16)):
        first, second = (run("triton", inputs, cu, final=True) for _ in range(2))
    for name, grad in first[2].items():
        assert torch.equal(grad, second[2][name]), name


@needs_triton
@pytest.mark.parametrize("half_states", [True, False], ids=["bf16_states", "fp32_states"])
def test_bfloat16_across_chunks(half_states):
    """bfloat16 inputs over several forward and backward chunks: the per-chunk states stored
    in bfloat16 (or float32) stay within the 16-bit tolerance of the float64 reference."""
    inputs, cu = make_inputs([150, 3, 0, 90], heads=2, head_dim=16, groups=1, state=16,
                             dtype=torch.bfloat16, init=False)
    want = run("exact", inputs, cu, final=False)
    settings = LaunchSettings(chunk=64, block_m=32, block_k=32, half_states=half_states)
    with use_settings(settings):
        got = run("triton", inputs, cu, final=False)
    assert_close(got, want, 2e-2)


# dA and ddt_bias are one sum per head over hundreds of float32 terms of both signs
# (cancellation): the chunked torch backend lands at 1.1e-4 on [255, 2, 63, 2].
SUM_TOLERANCE = 1e-3


def assert_close_with_sums(got, want):
    """``assert_close`` at the own-backward tolerance, the per-head sums at SUM_TOLERANCE."""
    sums = ("A", "dt_bias")
    for name in sums:
        assert rel_err(got[2][name], want[2][name]) <= SUM_TOLERANCE, name
    rest = [(out, final, {k: v for k, v in grads.items() if k not in sums})
            for out, final, grads in (got, want)]
    assert_close(*rest, OWN_BACKWARD_TOLERANCE)


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", ["len63", "len1000", "mixed", "across_chunks", "S500_short"])
@pytest.mark.parametrize("states", [True, False], ids=["with_states", "output_only"])
def test_heavy_cases_match_reference(case, reverse, states):
    """With initial and final states (their gradients) or without."""
    lengths = short_lengths() if case == "S500_short" else LENGTHS[case]
    inputs, cu = make_inputs(lengths, init=states)
    assert_close(run("triton", inputs, cu, reverse=reverse, final=states),
                 run("exact", inputs, cu, reverse=reverse, final=states),
                 FP32_TOLERANCE if states else OWN_BACKWARD_TOLERANCE)


@needs_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["bf16", "fp16"])
@pytest.mark.parametrize("state", [64, 128])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_tensor_core_sizes_in_half_precision(dtype, tol, state, reverse):
    """Mamba-2 sizes (heads of 64 channels, N = 64 / 128) on mixed lengths, 16-bit inputs,
    output only (the Triton backward)."""
    lengths = [0, 700, 1, 64, 300, 0, 5] + short_lengths(50)
    inputs, cu = make_inputs(lengths, heads=2, head_dim=64, groups=1, state=state, dtype=dtype,
                             init=False)
    assert_close(run("triton", inputs, cu, reverse=reverse, final=False),
                 run("exact", inputs, cu, reverse=reverse, final=False), tol)


@needs_cuda
def test_long_segment_matches_chunked_backend():
    """100k tokens in one segment: the Triton forward equals the chunked torch form."""
    inputs, cu = make_inputs([100_000], heads=2, head_dim=64, groups=1, state=64, init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    got = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, backend="triton")
    want = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, backend="chunked")
    assert rel_err(got, want) <= 1e-4


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_long_segments_forward_and_backward_match_chunked(reverse):
    """Benchmark-like sizes (segments of thousands of tokens, heads of 64, N = 128), float32:
    the Triton forward and backward equal the chunked torch form under autograd."""
    inputs, cu = make_inputs([5000, 0, 7000, 3000, 1], heads=2, head_dim=64, groups=1,
                             state=128, init=False)
    names = [n for n in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    results = []
    for backend in ("triton", "chunked"):
        out = ssd_scan(**inputs, cu_seqlens=cu, dt_softplus=True, reverse=reverse,
                       backend=backend)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        results.append((out, torch.autograd.grad((out * weight).sum(),
                                                 [inputs[n] for n in names])))
    (out, grads), (want, want_grads) = results
    assert rel_err(out, want) <= 1e-4
    for name, grad, ref in zip(names, grads, want_grads):
        # dA and ddt_bias are one sum per head over 15k float32 terms of both signs
        # (cancellation): 1.8e-5 already at 280 tokens in the interpreter.
        assert rel_err(grad, ref) <= (1e-3 if name in ("A", "dt_bias") else 1e-4), name


@needs_cuda
def test_forward_is_deterministic():
    inputs, cu = make_inputs([3000, 17, 900], heads=2, head_dim=64, groups=1, state=64)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    first = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, backend="triton")
    second = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, backend="triton")
    assert torch.equal(first, second)


@needs_cuda
def test_mamba2_compiles_fullgraph_with_the_same_result():
    """Both custom ops (forward, Triton backward) trace under torch.compile(fullgraph=True)."""
    from geossm.nn import BiMamba2

    torch.manual_seed(0)
    model = BiMamba2(128, d_state=64, backend="triton").cuda()
    x = torch.randn(3000, 128, device="cuda", requires_grad=True)
    cu = torch.tensor([0, 1000, 1000, 2500, 3000], dtype=torch.int32, device="cuda")
    want = model(x, cu)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x, cu)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("states", [True, False], ids=["with_states", "output_only"])
def test_backward_op_passes_opcheck(states):
    inputs, cu = make_inputs([5, 0, 9], init=states)
    args = [inputs[n] for n in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    dout = torch.randn_like(inputs["x"])
    init = inputs["initial_states"].detach() if states else None
    dfinal = torch.randn_like(init) if states else None
    torch.library.opcheck(torch.ops.geossm.ssd_scan_backward.default,
                          (dout, *[a.detach() for a in args], cu, init, dfinal, True, False),
                          test_utils=("test_schema", "test_faketensor"))


@needs_triton
@pytest.mark.parametrize("chunks", [1, 2, 3, 17, 50, 200])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_linear_scan_over_chunks_matches_a_loop(chunks, reverse):
    """The two-level chunk scan (groups of ~sqrt(K) chunks) equals the plain recurrence."""
    from geossm.kernels.ssd_scan_triton import linear_scan

    gen = torch.Generator().manual_seed(chunks)
    decay = torch.rand(chunks, 2, generator=gen).to(DEVICE)
    decay[chunks // 2] = 0.0                                  # a segment restart
    drive = torch.randn(chunks, 2, 3, 5, generator=gen).to(DEVICE)
    got = linear_scan(decay, drive, reverse=reverse)
    state = torch.zeros(2, 3, 5, device=DEVICE)
    want = torch.empty_like(drive)
    for c in (reversed(range(chunks)) if reverse else range(chunks)):
        want[c] = state
        state = decay[c][:, None, None] * state + drive[c]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fields, error, words", [
    (dict(chunk=100), ValueError, "chunk must be a power of two"),
    (dict(block_m=512), ValueError, "block_m=512 must not exceed chunk=128"),
    (dict(block_k=8), ValueError, "block_k=8 must lie in [16"),
    (dict(fwd_warps=0), ValueError, "fwd_warps must be a positive int"),
    (dict(half_states=1), TypeError, "half_states must be a bool"),
])
def test_launch_settings_refuse_bad_values(fields, error, words):
    with pytest.raises(error, match=re.escape(words)):
        LaunchSettings(**fields)


def test_use_settings_swaps_and_restores():
    from geossm.kernels import ssd_scan_triton

    before = ssd_scan_triton.SETTINGS
    chosen = LaunchSettings(chunk=64, block_m=64)
    with use_settings(chosen):
        assert ssd_scan_triton.SETTINGS is chosen
    assert ssd_scan_triton.SETTINGS is before
    with pytest.raises(TypeError, match="settings must be a LaunchSettings, got dict"):
        with use_settings({}):
            pass
