"""causal_conv1d: every backend against a float64 reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from geossm.kernels import causal_conv1d
from geossm.kernels.causal_conv1d_torch import causal_conv1d_ref

from .conftest import device_under_test, fast_backends, skip_in_interpreter

DEVICE = device_under_test()
BACKENDS = ["torch", *fast_backends()]
LENGTHS = {"len0": [0], "len1": [1], "len2": [2], "len63": [63], "len1000": [1000],
           "mixed": [0, 5, 1, 0, 63, 2, 17, 0, 3]}


def make_inputs(lengths, channels=6, width=4, dtype=torch.float32, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    x = torch.randn(T, channels, generator=gen).to(DEVICE, dtype).requires_grad_()
    weight = torch.randn(channels, width, generator=gen).to(DEVICE).requires_grad_()
    b = torch.randn(channels, generator=gen).to(DEVICE).requires_grad_() if bias else None
    cu = torch.tensor([0] + lengths).cumsum(0).to(device=DEVICE, dtype=torch.int32)
    return x, weight, b, cu


def run(backend, x, weight, bias, cu, activation="silu", reverse=False):
    """Output and the gradients of a random projection of it (``"exact"``: float64 reference)."""
    if backend == "exact":
        x, weight = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
        bias = None if bias is None else bias.detach().double().requires_grad_()
        out = causal_conv1d_ref(x, weight, bias, cu, silu=activation is not None, reverse=reverse)
    else:
        out = causal_conv1d(x, weight, bias, cu, activation=activation, reverse=reverse,
                            backend=backend)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    leaves = [t for t in (x, weight, bias) if t is not None]
    grads = torch.autograd.grad((out.double() * probe).sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return out, grads


def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def check(backend, inputs, tol=1e-5, **kw):
    out, grads = run(backend, *inputs, **kw)
    ref_out, ref_grads = run("exact", *inputs, **kw)
    assert out.dtype == inputs[0].dtype and out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= tol
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        assert g.shape == r.shape, name
        assert rel_err(g, r) <= tol, f"d{name}: {rel_err(g, r)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "anticausal"])
@pytest.mark.parametrize("case", list(LENGTHS))
def test_matches_reference_on_lengths(backend, case, reverse):
    skip_in_interpreter(backend, heavy=case in ("len1000",))
    check(backend, make_inputs(LENGTHS[case]), reverse=reverse)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [2, 3, 8])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference_with_features(backend, width, activation, bias):
    check(backend, make_inputs(LENGTHS["mixed"], width=width, bias=bias), activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_short_segments(backend):
    skip_in_interpreter(backend)
    lengths = torch.randint(0, 6, (500,), generator=torch.Generator().manual_seed(3)).tolist()
    check(backend, make_inputs(lengths), reverse=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(backend, dtype):
    check(backend, make_inputs(LENGTHS["mixed"], dtype=dtype),
          tol={torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_reads_across_a_boundary(backend):
    """Changing one segment's tokens changes no other segment's output."""
    x, weight, bias, cu = make_inputs([4, 5, 3])
    x = x.detach()
    for reverse in (False, True):
        base = causal_conv1d(x, weight.detach(), bias.detach(), cu, reverse=reverse,
                             backend=backend)
        changed = x.clone()
        changed[4:9] += 100.0
        moved = causal_conv1d(changed, weight.detach(), bias.detach(), cu, reverse=reverse,
                              backend=backend)
        assert torch.equal(base[:4], moved[:4]) and torch.equal(base[9:], moved[9:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_equals_flip_convolve_flip(backend):
    x, weight, bias, cu = make_inputs([7, 0, 11])
    x, weight, bias = x.detach(), weight.detach(), bias.detach()
    reverse = causal_conv1d(x, weight, bias, cu, activation="silu", reverse=True, backend=backend)
    flipped = torch.cat([x[0:7].flip(0), x[7:18].flip(0)])
    out = causal_conv1d(flipped, weight, bias, cu, activation="silu", backend=backend)
    expected = torch.cat([out[0:7].flip(0), out[7:18].flip(0)])
    torch.testing.assert_close(reverse, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_input_equals_packed(backend):
    x, weight, bias, cu = make_inputs([9, 9, 9])
    x, weight, bias = x.detach(), weight.detach(), bias.detach()
    packed = causal_conv1d(x, weight, bias, cu, backend=backend)
    dense = causal_conv1d(x.reshape(3, 9, -1), weight, bias, backend=backend)
    torch.testing.assert_close(dense.reshape(27, -1), packed)


@pytest.mark.parametrize("change, error, message", [
    (dict(x=torch.randn(5)), ValueError, r"x must have 2 or 3 dimensions, got shape \(5,\)"),
    (dict(x=[1.0]), TypeError, r"x must be a torch.Tensor, got list"),
    (dict(weight=torch.randn(6, 1)), ValueError,
     r"weight must have shape \(D, W\) with D=6 and 2 <= W <= 8, got \(6, 1\)"),
    (dict(weight=torch.randn(6, 9)), ValueError, r"2 <= W <= 8, got \(6, 9\)"),
    (dict(weight=torch.randn(5, 4)), ValueError, r"with D=6"),
    (dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(D,\) = \(6,\), got \(5,\)"),
    (dict(activation="relu"), ValueError, r"activation must be None or 'silu', got 'relu'"),
    (dict(cu_seqlens=torch.tensor([0, 2, 3], dtype=torch.int32)), ValueError,
     r"cu_seqlens must end with the number of tokens T=5, got 3"),
    (dict(backend="cuda"), ValueError, r"backend must be one of"),
])
def test_validation_errors(change, error, message):
    x, weight, bias, cu = make_inputs([2, 3])
    call = dict(x=x.detach().cpu(), weight=weight.detach().cpu(), bias=bias.detach().cpu(),
                cu_seqlens=cu.cpu())
    call.update(change)
    with pytest.raises(error, match=message):
        causal_conv1d(**call)


@pytest.mark.parametrize("backend", fast_backends())
def test_custom_op_passes_opcheck(backend):
    x, weight, bias, cu = make_inputs([5, 0, 9])
    torch.library.opcheck(torch.ops.geossm.causal_conv1d.default,
                          (x, weight, bias, cu, True, False, backend),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
