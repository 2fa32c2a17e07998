"""ssd_scan: every backend against the float64 reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from geossm import _compat
from geossm.kernels import ssd_scan
from geossm.kernels.ssd_scan_torch import ssd_scan_ref

from .conftest import assert_close as shared_assert_close
from .conftest import (device_under_test, interpreted, projection_gradients, rel_err,
                       scan_in_two_parts, short_lengths)

DEVICE = device_under_test()
HAS_TRITON = _compat.has_triton() and (DEVICE == "cuda" or _compat.triton_interpret())
BACKENDS = ["reference", "chunked"] + (["triton"] if HAS_TRITON else [])
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
# float32 inputs against the float64 reference. On CUDA the sums over all tokens (dA,
# ddt_bias) reduce in another order than on the CPU: measured up to 1.1e-5 there.
FP32_TOLERANCE = 3e-5 if DEVICE == "cuda" else 1e-5
# The Triton backward: its sums over all tokens (dA, ddt_bias) accumulate float32 terms in
# another order than the float64 reference (measured 1.1e-5 on "wide" in the interpreter).
OWN_BACKWARD_TOLERANCE = 3e-5


def tolerance(backend: str) -> float:
    """Float32 tolerance of ``backend`` against the float64 reference."""
    return OWN_BACKWARD_TOLERANCE if backend == "triton" else FP32_TOLERANCE

LENGTHS = {
    "len0": [0],
    "len1": [1],
    "len2": [2],
    "len63": [63],
    "len1000": [1000],
    "mixed": [0, 5, 1, 0, 63, 2, 17, 0],
    "across_chunks": [3, 0, 70, 130, 1, 64, 64],
}


def skip_heavy_in_interpreter(backend: str, heavy: bool) -> None:
    if heavy and interpreted(backend):
        pytest.skip("Triton interpreter: heavy case runs on the GPU test run only "
                    "(tests/kernels/test_ssd_scan_triton.py on CUDA)")


def make_inputs(lengths, heads=4, head_dim=3, groups=2, state=5, dtype=torch.float32, z=True,
                skip=True, bias=True, init=True, seed=0, positive_dt=False, per_channel_D=True):
    """Random inputs for ``ssd_scan`` (leaf tensors requiring grad) and cu_seqlens."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)

    def leaf(tensor, dt=dtype):
        return tensor.to(device=DEVICE, dtype=dt).requires_grad_()

    D_shape = (heads, head_dim) if per_channel_D else (heads,)
    inputs = dict(
        x=leaf(torch.randn(T, heads, head_dim, generator=gen)),
        # without softplus, a negative step would make the state grow without bound
        dt=leaf(torch.rand(T, heads, generator=gen) * 0.5 + 0.01 if positive_dt
                else torch.randn(T, heads, generator=gen) * 0.5),
        A=leaf(-torch.rand(heads, generator=gen) * 2 - 0.05, torch.float32),
        B=leaf(torch.randn(T, groups, state, generator=gen)),
        C=leaf(torch.randn(T, groups, state, generator=gen)),
        D=leaf(torch.randn(*D_shape, generator=gen), torch.float32) if skip else None,
        z=leaf(torch.randn(T, heads, head_dim, generator=gen)) if z else None,
        dt_bias=leaf(torch.rand(heads, generator=gen) * 0.3, torch.float32) if bias else None,
        initial_states=(leaf(torch.randn(len(lengths), heads, head_dim, state, generator=gen),
                             torch.float32) if init else None),
    )
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(DEVICE)
    return inputs, cu


def run(backend, inputs, cu, softplus=True, reverse=False, seed=1, final=True):
    """Output, final states and the gradients of a random projection of both.

    ``backend="exact"`` runs the reference in float64 on float64 copies of the inputs.
    ``final=False`` asks for the output only (the loss then ignores the final states; the
    Triton backend's own backward runs only then and without initial states).
    """
    if backend == "exact":
        inputs = {k: None if v is None else v.detach().double().requires_grad_()
                  for k, v in inputs.items()}
        D = inputs["D"]
        if D is not None and D.dim() == 1:
            call = dict(inputs, D=D[:, None].expand(D.shape[0], inputs["x"].shape[2]))
        else:
            call = inputs
        out, states = ssd_scan_ref(**call, dt_softplus=softplus, cu_seqlens=cu,
                                   reverse=reverse)
    else:
        out, states = ssd_scan(**inputs, dt_softplus=softplus, cu_seqlens=cu, reverse=reverse,
                               return_final_states=True, backend=backend) if final else (
            ssd_scan(**inputs, dt_softplus=softplus, cu_seqlens=cu, reverse=reverse,
                     backend=backend), None)
    if not final:
        states = torch.zeros(0, device=DEVICE)
    return out, states, projection_gradients(out, states, inputs, GRAD_NAMES, seed)


def assert_close(got, want, tol):
    shared_assert_close(got, want, tol, final_name="final_states")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", [*LENGTHS, "S500_short"])
def test_matches_reference_on_lengths(backend, case, reverse):
    skip_heavy_in_interpreter(backend, heavy=case not in ("mixed", "len2"))
    lengths = short_lengths() if case == "S500_short" else LENGTHS[case]
    inputs, cu = make_inputs(lengths)
    want = run("exact", inputs, cu, reverse=reverse)
    got = run(backend, inputs, cu, reverse=reverse)
    assert_close(got, want, tolerance(backend))


FEATURES = {
    "G1_plain": dict(groups=1, z=False, skip=False, bias=False, init=False),
    "G4_per_head": dict(groups=4),
    "no_z": dict(z=False),
    "no_D": dict(skip=False),
    "D_per_head": dict(per_channel_D=False),
    "no_bias": dict(bias=False),
    "no_init": dict(init=False),
    "wide": dict(heads=2, head_dim=20, state=17, groups=1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("feature", list(FEATURES) + ["no_softplus"])
def test_matches_reference_with_features(backend, feature):
    skip_heavy_in_interpreter(backend, heavy=feature not in ("G1_plain", "no_softplus", "wide"))
    softplus = feature != "no_softplus"
    inputs, cu = make_inputs(LENGTHS["mixed"], positive_dt=not softplus,
                             **FEATURES.get(feature, {}))
    want = run("exact", inputs, cu, softplus=softplus)
    got = run(backend, inputs, cu, softplus=softplus)
    assert_close(got, want, tolerance(backend))


# Half-precision inputs: the reference sees the same rounded inputs; the gap is the 16-bit
# rounding of outputs, gradients and (Triton) of the matmul operands.
HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(backend, dtype):
    skip_heavy_in_interpreter(backend, heavy=dtype == torch.float16)
    inputs, cu = make_inputs(LENGTHS["mixed"], dtype=dtype)
    want = run("exact", inputs, cu)
    got = run(backend, inputs, cu)
    assert got[0].dtype == dtype
    assert_close(got, want, HALF_TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", ["len0", "len2", "mixed", "across_chunks", "G1_plain",
                                  "no_softplus", "wide", "bf16", "len1000", "S500_short"])
def test_output_only_gradients(backend, case, reverse):
    """Without initial and final states (the Mamba-2 layers' call: the Triton backward's
    fast path)."""
    skip_heavy_in_interpreter(backend, heavy=case in ("len1000", "S500_short") or (
        reverse and case not in ("mixed", "across_chunks")))
    lengths = {"S500_short": short_lengths()}.get(case) or LENGTHS.get(case, LENGTHS["mixed"])
    options = dict(FEATURES.get(case, {}), init=False)
    if case == "bf16":
        options["dtype"] = torch.bfloat16
    softplus = case != "no_softplus"
    inputs, cu = make_inputs(lengths, positive_dt=not softplus, **options)
    want = run("exact", inputs, cu, softplus=softplus, reverse=reverse, final=False)
    got = run(backend, inputs, cu, softplus=softplus, reverse=reverse, final=False)
    tol = HALF_TOLERANCE[torch.bfloat16] if case == "bf16" else OWN_BACKWARD_TOLERANCE
    assert_close(got, want, tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_equals_flipped_segments(backend):
    lengths = [5, 0, 9, 1]
    inputs, cu = make_inputs(lengths, init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    reversed_out = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, reverse=True,
                            backend=backend)
    flip = torch.cat([torch.arange(b - 1, a - 1, -1) for a, b in
                      zip(cu[:-1].tolist(), cu[1:].tolist())]).to(DEVICE)
    flipped = {k: (v[flip] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    forward_out = ssd_scan(**flipped, cu_seqlens=cu, dt_softplus=True, backend=backend)
    assert rel_err(reversed_out, forward_out[flip]) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_initial_state_chaining(backend, reverse):
    """Scanning a segment in two halves, passing the final state on, equals one whole scan."""
    skip_heavy_in_interpreter(backend, heavy=reverse)
    inputs, _ = make_inputs([90], init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    whole = ssd_scan(**args, dt_softplus=True, reverse=reverse, backend=backend)

    def part(piece, state):
        tokens = {k: (v[piece] if k in ("x", "dt", "B", "C", "z") else v)
                  for k, v in args.items()}
        return ssd_scan(**tokens, dt_softplus=True, reverse=reverse, backend=backend,
                        initial_states=state, return_final_states=True)

    assert rel_err(scan_in_two_parts(part, 90, 37, reverse), whole) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_input_equals_packed(backend):
    batch, length = 3, 20
    inputs, cu = make_inputs([length] * batch, init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    packed = ssd_scan(**args, cu_seqlens=cu, dt_softplus=True, backend=backend)
    dense_args = {k: (v.reshape(batch, length, *v.shape[1:]) if k in ("x", "dt", "B", "C", "z")
                      else v) for k, v in args.items()}
    dense = ssd_scan(**dense_args, dt_softplus=True, backend=backend)
    assert dense.shape == (batch, length) + packed.shape[1:]
    assert rel_err(dense.reshape(packed.shape), packed) <= 1e-6


def test_empty_segment_final_state_is_initial_state():
    inputs, cu = make_inputs([3, 0, 4])
    for backend in BACKENDS:
        _, final = ssd_scan(**inputs, cu_seqlens=cu, return_final_states=True, backend=backend)
        assert torch.equal(final[1], inputs["initial_states"][1].detach())


def test_reference_is_the_formula_on_a_hand_case():
    """One head of one channel, one state: h1 = 2, h2 = e^-1 * 2 + 3."""
    def tensor(values):
        return torch.tensor(values, device=DEVICE)

    x, dt, A = tensor([[[1.0]], [[1.5]]]), tensor([[1.0], [1.0]]), tensor([-1.0])
    B, C = tensor([[[2.0]], [[2.0]]]), tensor([[[1.0]], [[1.0]]])
    expected = tensor([[[2.0]], [[2.0 * torch.exp(torch.tensor(-1.0)).item() + 3.0]]])
    for backend in BACKENDS:
        torch.testing.assert_close(ssd_scan(x, dt, A, B, C, backend=backend), expected)


# ---------------------------------------------------------------------------- validation
def valid_args():
    inputs, cu = make_inputs([3, 4], init=False)
    return {k: v.detach().cpu() for k, v in inputs.items() if v is not None}, cu.cpu()


@pytest.mark.parametrize("change, error, message", [
    (dict(x="not a tensor"), TypeError, r"x must be a torch.Tensor, got str"),
    (dict(x=torch.randn(7, 12)), ValueError, r"x must have 3 or 4 dimensions, got shape \(7, 12\)"),
    (dict(dt=torch.randn(7, 3)), ValueError, r"dt must have shape tokens of x by heads H = \(7, 4\)"),
    (dict(z=torch.randn(6, 4, 3)), ValueError, r"z must have shape like x"),
    (dict(A=torch.randn(5)), ValueError, r"A must have shape \(H,\) = \(4,\), got \(5,\)"),
    (dict(B=torch.randn(6, 2, 5)), ValueError, r"B must have shape \(7, 'G', 'N'\)"),
    (dict(C=torch.randn(7, 2, 4)), ValueError, r"C must have shape like B = \(7, 2, 5\)"),
    (dict(B=torch.randn(7, 3, 5), C=torch.randn(7, 3, 5)), ValueError,
     r"number of groups G=3 of B/C must divide the heads H=4"),
    (dict(D=torch.randn(5)), ValueError, r"D must have shape \(H,\) = \(4,\) or \(H, P\)"),
    (dict(dt_bias=torch.randn(4, 1)), ValueError, r"dt_bias must have 1 dimensions"),
    (dict(initial_states=torch.randn(3, 4, 3, 5)), ValueError,
     r"initial_states must have shape \(S, H, P, N\) = \(2, 4, 3, 5\)"),
    (dict(cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32)), ValueError,
     r"cu_seqlens must end with the number of tokens T=7, got 6"),
    (dict(backend="cuda"), ValueError,
     r"backend must be one of \('reference', 'chunked', 'triton'\) or None, got 'cuda'"),
])
def test_validation_errors(change, error, message):
    args, cu = valid_args()
    call = dict(args, cu_seqlens=cu)
    call.update(change)
    with pytest.raises(error, match=message):
        ssd_scan(**call)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed / not interpretable")
def test_custom_op_passes_opcheck():
    """The registered op's fake implementation, schema and autograd agree with the kernel."""
    inputs, cu = make_inputs([5, 0, 9])
    args = [inputs[n] for n in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
    torch.library.opcheck(torch.ops.geossm.ssd_scan.default,
                          (*args, cu, inputs["initial_states"], True, False, True),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
