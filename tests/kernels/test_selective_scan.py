"""selective_scan: every backend against the torch reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from geossm.kernels import selective_scan
from geossm.kernels.selective_scan_torch import selective_scan_ref

from .conftest import (assert_close, device_under_test, fast_backends, projection_gradients,
                       rel_err, scan_in_two_parts, short_lengths, skip_in_interpreter)

DEVICE = device_under_test()
BACKENDS = ["torch", *fast_backends()]
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")

LENGTHS = {
    "len0": [0],
    "len1": [1],
    "len2": [2],
    "len63": [63],
    "len1000": [1000],
    "mixed": [0, 5, 1, 0, 63, 2, 17, 0],
}


def make_inputs(lengths, channels=8, state=4, groups=2, dtype=torch.float32, z=True, skip=True,
                bias=True, init=True, seed=0, positive_delta=False):
    """Random inputs for ``selective_scan`` (leaf tensors requiring grad) and cu_seqlens."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)

    def leaf(tensor, dt=dtype):
        return tensor.to(device=DEVICE, dtype=dt).requires_grad_()

    inputs = dict(
        u=leaf(torch.randn(T, channels, generator=gen)),
        # without softplus, a negative step would make the state grow without bound
        delta=leaf(torch.randn(T, channels, generator=gen).abs_().mul_(0.5).add_(0.01)
                   if positive_delta else torch.randn(T, channels, generator=gen) * 0.5),
        A=leaf(-torch.rand(channels, state, generator=gen) * 2 - 0.05, torch.float32),
        B=leaf(torch.randn(T, groups, state, generator=gen)),
        C=leaf(torch.randn(T, groups, state, generator=gen)),
        D=leaf(torch.randn(channels, generator=gen), torch.float32) if skip else None,
        z=leaf(torch.randn(T, channels, generator=gen)) if z else None,
        delta_bias=(leaf(torch.rand(channels, generator=gen) * 0.3, torch.float32) if bias
                    else None),
        initial_state=(leaf(torch.randn(len(lengths), channels, state, generator=gen),
                            torch.float32) if init else None),
    )
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(DEVICE)
    return inputs, cu


def run(backend, inputs, cu, softplus=True, reverse=False, seed=1):
    """Output, final state and the gradients of a random projection of both.

    ``backend="exact"`` runs the torch reference in float64 on float64 copies of the inputs:
    the value every backend is measured against.
    """
    if backend == "exact":
        inputs = {k: None if v is None else v.detach().double().requires_grad_()
                  for k, v in inputs.items()}
        out, final = selective_scan_ref(**inputs, delta_softplus=softplus, cu_seqlens=cu,
                                        reverse=reverse)
    else:
        out, final = selective_scan(**inputs, delta_softplus=softplus, cu_seqlens=cu,
                                    reverse=reverse, return_final_state=True, backend=backend)
    return out, final, projection_gradients(out, final, inputs, GRAD_NAMES, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", [*LENGTHS, "S1_long", "S500_short"])
def test_matches_reference_on_lengths(backend, case, reverse):
    skip_in_interpreter(backend, heavy=case != "mixed")
    lengths = {"S1_long": [1000], "S500_short": short_lengths()}.get(case) or LENGTHS[case]
    inputs, cu = make_inputs(lengths)
    want = run("exact", inputs, cu, reverse=reverse)
    got = run(backend, inputs, cu, reverse=reverse)
    assert_close(got, want, 1e-5)


FEATURES = {
    "G1_plain": dict(groups=1, z=False, skip=False, bias=False, init=False),
    "G4": dict(groups=4, channels=16),
    "G8_per_channel": dict(groups=8),
    "no_z": dict(z=False),
    "no_D": dict(skip=False),
    "no_bias": dict(bias=False),
    "no_init": dict(init=False),
    "odd_channels_N": dict(channels=5, state=3, groups=1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("feature", list(FEATURES) + ["no_softplus"])
def test_matches_reference_with_features(backend, feature, reverse):
    skip_in_interpreter(backend, heavy=feature not in ("G1_plain", "no_softplus", "no_z"))
    softplus = feature != "no_softplus"
    inputs, cu = make_inputs(LENGTHS["mixed"], positive_delta=not softplus,
                             **FEATURES.get(feature, {}))
    want = run("exact", inputs, cu, softplus=softplus, reverse=reverse)
    got = run(backend, inputs, cu, softplus=softplus, reverse=reverse)
    assert_close(got, want, 1e-5)


# Half-precision inputs: the reference sees the same rounded inputs and also computes in float32,
# so the gap is the rounding of the outputs and gradients to 16 bits (bf16: 8 mantissa bits).
HALF_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(backend, dtype):
    skip_in_interpreter(backend, heavy=dtype == torch.float16)
    extra = [] if backend == "triton" and DEVICE == "cpu" else [300]
    inputs, cu = make_inputs(LENGTHS["mixed"] + extra, dtype=dtype)
    want = run("exact", inputs, cu)
    got = run(backend, inputs, cu)
    assert got[0].dtype == dtype
    assert_close(got, want, HALF_TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_initial_state_chaining(backend, reverse):
    """Scanning a segment in two halves, passing the final state on, equals one whole scan."""
    skip_in_interpreter(backend, heavy=reverse)
    inputs, _ = make_inputs([90], init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    whole = selective_scan(**args, delta_softplus=True, reverse=reverse, backend=backend)

    def part(piece, state):
        tokens = {k: (v[piece] if k in ("u", "delta", "B", "C", "z") else v)
                  for k, v in args.items()}
        return selective_scan(**tokens, delta_softplus=True, reverse=reverse, backend=backend,
                              initial_state=state, return_final_state=True)

    assert rel_err(scan_in_two_parts(part, 90, 37, reverse), whole) <= 1e-5


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("used", ["out", "final_state"])
def test_gradient_through_one_output_only(backend, used):
    """When only one of out / final state reaches the loss, the other's gradient is absent
    (not materialised as zeros) and the gradients still equal the reference's."""
    inputs, cu = make_inputs([3, 0, 7])
    grads = {}
    for name in ("exact", backend):
        leaves = {k: None if v is None else v.detach().double().requires_grad_()
                  for k, v in inputs.items()} if name == "exact" else \
            {k: None if v is None else v.detach().clone().requires_grad_()
             for k, v in inputs.items()}
        if name == "exact":
            out, final = selective_scan_ref(**leaves, delta_softplus=True, cu_seqlens=cu)
        else:
            out, final = selective_scan(**leaves, delta_softplus=True, cu_seqlens=cu,
                                        return_final_state=True, backend=backend)
        loss = (out.sin().sum() if used == "out" else final.cos().sum())
        present = [v for v in leaves.values() if v is not None]
        grads[name] = torch.autograd.grad(loss, present, allow_unused=True,
                                          materialize_grads=True)
    for got, want in zip(grads[backend], grads["exact"]):
        assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_input_equals_packed(backend):
    batch, length, channels, state = 3, 20, 8, 4
    inputs, cu = make_inputs([length] * batch, channels=channels, state=state, init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    packed = selective_scan(**args, cu_seqlens=cu, delta_softplus=True, backend=backend)
    dense_args = {k: (v.reshape(batch, length, *v.shape[1:]) if k in ("u", "delta", "B", "C", "z")
                      else v) for k, v in args.items()}
    dense = selective_scan(**dense_args, delta_softplus=True, backend=backend)
    assert dense.shape == (batch, length, channels)
    assert rel_err(dense.reshape(-1, channels), packed) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_B_without_group_axis_equals_one_group(backend):
    inputs, cu = make_inputs([7, 0, 12], groups=1, init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    grouped = selective_scan(**args, cu_seqlens=cu, backend=backend)
    flat = selective_scan(**{**args, "B": args["B"][:, 0], "C": args["C"][:, 0]},
                          cu_seqlens=cu, backend=backend)
    assert torch.equal(grouped, flat)


def test_empty_segment_final_state_is_initial_state():
    inputs, cu = make_inputs([3, 0, 4])
    for backend in BACKENDS:
        _, final = selective_scan(**inputs, cu_seqlens=cu, return_final_state=True,
                                  backend=backend)
        assert torch.equal(final[1], inputs["initial_state"][1].detach())


# ---------------------------------------------------------------------------- validation
def valid_args():
    inputs, cu = make_inputs([3, 4], init=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    return args, cu


@pytest.mark.parametrize("change, error, message", [
    (dict(u="not a tensor"), TypeError, r"u must be a torch.Tensor, got str"),
    (dict(u=torch.randn(7)), ValueError, r"u must have 2 or 3 dimensions, got shape \(7,\)"),
    (dict(u=torch.randint(0, 3, (7, 8))), TypeError, r"u must be float32, float16 or bfloat16"),
    (dict(delta=torch.randn(7, 9)), ValueError, r"delta must have shape like u = \(7, 8\), got \(7, 9\)"),
    (dict(z=torch.randn(6, 8)), ValueError, r"z must have shape like u = \(7, 8\), got \(6, 8\)"),
    (dict(A=torch.randn(9, 4)), ValueError, r"A must have shape \(D, N\) with D=8, got \(9, 4\)"),
    (dict(B=torch.randn(7, 5)), ValueError, r"B must have shape \(7, 4\) or \(7, 'G', 4\)"),
    (dict(C=torch.randn(6, 2, 4)), ValueError, r"C must have shape"),
    (dict(B=torch.randn(7, 3, 4), C=torch.randn(7, 3, 4)), ValueError,
     r"number of groups G=3 of B/C must divide D=8"),
    (dict(C=torch.randn(7, 4, 4)), ValueError, r"B and C must have the same number of groups G, got 2 and 4"),
    (dict(D=torch.randn(7)), ValueError, r"D must have shape \(D,\) = \(8,\), got \(7,\)"),
    (dict(delta_bias=torch.randn(8, 1)), ValueError, r"delta_bias must have 1 dimensions"),
    (dict(initial_state=torch.randn(3, 8, 4)), ValueError,
     r"initial_state must have shape \(S, D, N\) = \(2, 8, 4\), got \(3, 8, 4\)"),
    (dict(cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32)), ValueError,
     r"cu_seqlens must end with the number of tokens T=7, got 6"),
    (dict(cu_seqlens=torch.tensor([1, 3, 7], dtype=torch.int32)), ValueError,
     r"cu_seqlens must start with 0, got 1"),
    (dict(cu_seqlens=torch.tensor([0, 5, 3, 7], dtype=torch.int32)), ValueError,
     r"cu_seqlens must be non-decreasing, got cu_seqlens\[1\]=5 > cu_seqlens\[2\]=3"),
    (dict(cu_seqlens=torch.tensor([0.0, 7.0])), TypeError, r"cu_seqlens must be int32 or int64"),
    (dict(cu_seqlens=torch.tensor([[0, 7]])), ValueError, r"cu_seqlens must be 1-D"),
    (dict(cu_seqlens=[0, 7]), TypeError, r"cu_seqlens must be a torch.Tensor, got list"),
    (dict(backend="cuda"), ValueError, r"backend must be one of \('torch', 'numba', 'triton'\) or None, got 'cuda'"),
    (dict(A=torch.randn(8, 4, device="meta")), ValueError, r"A must be on cpu like the input, got meta"),
])
def test_validation_errors(change, error, message):
    if DEVICE != "cpu" and "meta" in message:
        pytest.skip("device-mismatch case is written for CPU inputs")
    args, cu = valid_args()
    args = {k: v.cpu() for k, v in args.items()}
    call = dict(args, cu_seqlens=cu.cpu())
    call.update(change)
    with pytest.raises(error, match=message):
        selective_scan(**call)


def test_cu_seqlens_changed_in_place_is_checked_again():
    """The checks of cu_seqlens are cached per tensor: an in-place change must reach them."""
    args, cu = valid_args()                                   # cu = [0, 3, 7]
    selective_scan(**args, cu_seqlens=cu)
    cu[1] = 9
    with pytest.raises(ValueError, match=r"cu_seqlens must be non-decreasing"):
        selective_scan(**args, cu_seqlens=cu)


@pytest.mark.skipif(DEVICE != "cuda", reason="host syncs exist only with a CUDA device")
def test_second_call_with_the_same_cu_seqlens_does_not_sync():
    """Only the first call with a cu_seqlens tensor pays the host sync of its checks (the
    layers of a model share one), so the public path stays asynchronous and capturable."""
    args, cu = valid_args()
    with torch.no_grad():
        selective_scan(**args, cu_seqlens=cu)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            selective_scan(**args, cu_seqlens=cu)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_dense_input_refuses_cu_seqlens():
    args, cu = valid_args()
    dense = {k: (v.reshape(1, 7, *v.shape[1:]) if k in ("u", "delta", "B", "C", "z") else v)
             for k, v in args.items()}
    with pytest.raises(ValueError, match=r"cu_seqlens must be None for dense \(Bt, L, D\) input"):
        selective_scan(**dense, cu_seqlens=cu)


def test_numba_refuses_non_cpu_tensors():
    args, cu = valid_args()
    meta = {k: v.to("meta") for k, v in args.items()}
    with pytest.raises(ValueError, match=r"backend='numba' needs CPU tensors, got tensors on meta"):
        selective_scan(**meta, backend="numba")


def test_reference_is_the_formula_on_a_hand_case():
    """One channel, one state, hand-computed: h1 = 2, h2 = e^-1 * 2 + 3."""
    def tensor(values):
        return torch.tensor(values, device=DEVICE)

    u, delta, A = tensor([[1.0], [1.5]]), tensor([[1.0], [1.0]]), tensor([[-1.0]])
    B, C = tensor([[2.0], [2.0]]), tensor([[1.0], [1.0]])
    for backend in BACKENDS:
        out = selective_scan(u, delta, A, B, C, backend=backend)
        expected = tensor([[2.0], [2.0 * torch.exp(torch.tensor(-1.0)).item() + 3.0]])
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", fast_backends())
def test_custom_op_passes_opcheck(backend):
    """The registered op's fake implementation, schema and autograd agree with the kernel."""
    inputs, cu = make_inputs([5, 0, 9], init=True)
    args = [inputs[n] for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    torch.library.opcheck(torch.ops.geossm.selective_scan.default,
                          (*args, cu, inputs["initial_state"], True, False, backend),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "numba"])
def test_numba_kernels_leave_torch_thread_count_alone(backend):
    """numba's OpenMP layer must not override ``torch.set_num_threads`` (it shares the runtime)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        inputs, cu = make_inputs([5, 9])
        out = selective_scan(**inputs, cu_seqlens=cu, backend=backend)
        out.sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
