"""The fused paths (inner Mamba, RMSNorm, GELU + linear) against the plain ops: outputs, every
gradient, saved memory."""

import pytest
import torch

from geossm.kernels import available_backends
from geossm.nn import BiMamba, Mamba
from geossm.nn.fused import gelu_linear, mamba_inner, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Every backend that runs here: numba on CPU, triton on CUDA (or in Triton's CPU interpreter
#: with TRITON_INTERPRET=1), and the torch reference.
BACKENDS = available_backends(DEVICE)

LENGTHS = [5, 0, 1, 9, 2, 0, 3, 70]
DIM = 8


def cu_of(lengths):
    return torch.tensor([0] + list(lengths), dtype=torch.int32).cumsum(0).to(torch.int32)


def twins(cls=Mamba, **kw):
    """The same module twice (same weights), fused and unfused."""
    kw.setdefault("d_state", 4)
    torch.manual_seed(0)
    fused = cls(DIM, fused=True, **kw)
    plain = cls(DIM, fused=False, **kw)
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():  # non-default D and conv bias so every gradient path is exercised
        for m in (fused, plain):
            for p in m.parameters():
                p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
    return fused, plain


def run(module, x, grad_out, **kw):
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x, **kw)
    y.backward(grad_out)
    grads = {name: p.grad for name, p in module.named_parameters()}
    return y.detach(), x.grad, grads


def assert_same(a, b, atol, rtol):
    (ya, xa, ga), (yb, xb, gb) = a, b
    torch.testing.assert_close(ya, yb, atol=atol, rtol=rtol)
    torch.testing.assert_close(xa, xb, atol=atol, rtol=rtol)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert ga[name] is not None, name
        torch.testing.assert_close(ga[name], gb[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_outputs_and_gradients_equal_unfused(backend, reverse):
    cu = cu_of(LENGTHS).to(DEVICE)
    torch.manual_seed(2)
    x = torch.randn(int(cu[-1]), DIM, device=DEVICE)
    g = torch.randn_like(x)
    fused, plain = (m.to(DEVICE) for m in twins(backend=backend))
    assert_same(run(fused, x, g, cu_seqlens=cu, reverse=reverse),
                run(plain, x, g, cu_seqlens=cu, reverse=reverse), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_dense_and_bidirectional_equal_unfused(cls):
    torch.manual_seed(3)
    x = torch.randn(3, 17, DIM, device=DEVICE)
    g = torch.randn_like(x)
    fused, plain = (m.to(DEVICE) for m in twins(cls))
    assert_same(run(fused, x, g), run(plain, x, g), atol=1e-6, rtol=1e-5)


def test_bimamba_packed_int64_boundaries_and_no_conv_bias():
    cu = cu_of(LENGTHS).long()
    torch.manual_seed(4)
    x = torch.randn(int(cu[-1]), DIM)
    g = torch.randn_like(x)
    fused, plain = twins(BiMamba, conv_bias=False, bias=True)
    assert_same(run(fused, x, g, cu_seqlens=cu), run(plain, x, g, cu_seqlens=cu),
                atol=1e-6, rtol=1e-5)


def test_bf16_autocast_equals_unfused():
    """Under autocast the backward recomputes in the forward's autocast dtype."""
    cu = cu_of(LENGTHS)
    torch.manual_seed(5)
    x = torch.randn(int(cu[-1]), DIM)
    g = torch.randn_like(x)
    fused, plain = twins()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = run(fused, x, g, cu_seqlens=cu)
        b = run(plain, x, g, cu_seqlens=cu)
    assert a[0].dtype == torch.bfloat16
    assert_same(a, b, atol=1e-2, rtol=1e-2)


def _saved_bytes(module, x, cu) -> int:
    """Bytes of the tensors autograd keeps for the backward (parameters excluded)."""
    params = {p.data_ptr() for p in module.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x, cu_seqlens=cu)
    return total


def test_fused_keeps_far_fewer_activations():
    cu = cu_of([300, 200, 500])
    x = torch.randn(1000, DIM, requires_grad=True)
    fused, plain = twins(d_state=16)
    kept_fused, kept_plain = _saved_bytes(fused, x, cu), _saved_bytes(plain, x, cu)
    # E = 16, N = 16, R = 1: unfused ~ x + conv input + h + x_dbl + delta + B + C + z + y
    # (~ 8 + 16 * 5 + 33 + 32 values per token); fused x + y (8 + 16) + chunk states.
    assert kept_fused < 0.35 * kept_plain, (kept_fused, kept_plain)


def test_switch_and_paths_without_gradients():
    fused, plain = twins()
    x = torch.randn(10, DIM)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=0, rtol=0)
    fused.fused = False
    torch.testing.assert_close(fused(x), plain(x), atol=0, rtol=0)
    with pytest.raises(TypeError, match="fused must be a bool, got 1"):
        Mamba(DIM, fused=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5, DIM), (3, 0, DIM), (0, DIM)])
def test_empty_input_gives_empty_output_and_gradients(backend, shape):
    # A dense batch of no sequences has no (S+1,) boundaries: it runs as one empty segment.
    fused, plain = twins(cls=Mamba, backend=backend)
    x = torch.zeros(shape, device=DEVICE)
    fused, plain = fused.to(DEVICE), plain.to(DEVICE)
    for module in (fused, plain):
        y, dx, grads = run(module, x, torch.zeros(shape, device=DEVICE))
        assert y.shape == shape and dx.shape == shape
        assert all(g is None or not g.any() for g in grads.values())
    if len(shape) == 3:  # boundaries with dense input are still refused
        with pytest.raises(ValueError, match="cu_seqlens"):
            fused(x, torch.tensor([0, 0], dtype=torch.int32, device=DEVICE))


def test_mamba_inner_refuses_boundaries_with_an_empty_dense_batch():
    """``mamba_inner`` itself (not only ``Mamba.forward``) refuses ``cu_seqlens`` beside an
    empty dense batch, which it runs as one empty packed segment."""
    m = Mamba(DIM, d_state=4)
    with pytest.raises(ValueError, match=r"cu_seqlens must be None for dense \(Bt, L, D\)"):
        mamba_inner(torch.zeros(0, 5, DIM), m.in_proj.weight, m.in_proj.bias, m.conv_weight,
                    m.conv_bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log,
                    m.D, cu_seqlens=torch.tensor([0, 0], dtype=torch.int32))


def test_mamba_inner_shape_error():
    m = Mamba(DIM, d_state=4)
    with pytest.raises(ValueError, match=r"x must have shape \(T, 8\) or \(B, L, 8\), got "
                                         r"\(5, 7\)"):
        mamba_inner(torch.randn(5, 7), m.in_proj.weight, m.in_proj.bias, m.conv_weight,
                    m.conv_bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D)


def _rms_reference(x, weight, eps):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 64), (3, 5, 48), (1, 7)])
def test_rms_norm_equals_plain_formula_bitwise(dtype, shape):
    torch.manual_seed(0)
    x, weight = 3 * torch.randn(shape, dtype=dtype), torch.randn(shape[-1])
    g = torch.randn(shape, dtype=dtype)
    runs = []
    for fn in (rms_norm, _rms_reference):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        y = fn(xi, wi, 1e-5)
        y.backward(g)
        runs.append((y, xi.grad, wi.grad))
    for a, b in zip(*runs):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_rms_norm_keeps_only_input_and_row_scale():
    x = torch.randn(100, 32, requires_grad=True)
    weight = torch.ones(32, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        rms_norm(x, weight)
    assert sorted(t.numel() for t in kept) == [32, 100, 3200]


def _gelu_linear_runs(h, weight, bias, approximate, autocast_dtype=None):
    """(out, dh, dweight, dbias) of gelu_linear and of the plain ops, same upstream gradient."""
    runs = []
    for fused in (True, False):
        hi = h.clone().requires_grad_()
        wi = weight.clone().requires_grad_()
        bi = None if bias is None else bias.clone().requires_grad_()
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            out = (gelu_linear(hi, wi, bi, approximate) if fused else
                   torch.nn.functional.linear(torch.nn.functional.gelu(hi, approximate=approximate),
                                              wi, bi))
        out.float().pow(2).sum().backward()
        runs.append((out, hi.grad, wi.grad, None if bi is None else bi.grad))
    return runs


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape,bias", [((41, 24), True), ((2, 5, 24), False), ((1, 24), True)])
def test_gelu_linear_equals_plain_ops_float64(approximate, shape, bias):
    torch.manual_seed(0)
    h = 2 * torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(6, 24, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64) if bias else None
    fused, plain = _gelu_linear_runs(h, weight, b, approximate)
    for a, r in zip(fused, plain):
        if r is None:
            assert a is None
            continue
        assert a.dtype == r.dtype and a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_gelu_linear_under_bf16_autocast_matches_plain_ops():
    """The matmul runs in autocast's dtype as F.linear would; gradients land in the parameters'
    float32 and agree with the plain ops to bf16 rounding."""
    torch.manual_seed(0)
    h = torch.randn(64, 32).to(torch.bfloat16)   # fc1's output under autocast is bf16
    weight, bias = torch.randn(16, 32), torch.randn(16)
    fused, plain = _gelu_linear_runs(h, weight, bias, "none", autocast_dtype=torch.bfloat16)
    assert fused[0].dtype == plain[0].dtype == torch.bfloat16
    for a, r in zip(fused, plain):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a.float(), r.float(), rtol=2e-2, atol=2e-2)


def test_gelu_linear_keeps_only_its_input():
    h = torch.randn(100, 64, requires_grad=True)
    weight = torch.randn(16, 64, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        gelu_linear(h, weight)
    # h itself and the weight; the plain ops also keep gelu(h) (another 100 x 64)
    assert sorted(t.numel() for t in kept) == [1024, 6400]


def test_gelu_linear_errors_and_no_grad_path():
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        gelu_linear(torch.randn(3, 4), torch.randn(2, 4), approximate="erf")
    with pytest.raises(ValueError, match=r"h must have shape \(\.\.\., 4\), got \(3, 5\)"):
        gelu_linear(torch.randn(3, 5, requires_grad=True), torch.randn(2, 4))
    h, w = torch.randn(3, 4), torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(gelu_linear(h, w),
                           torch.nn.functional.linear(torch.nn.functional.gelu(h), w))


def _inner_run(x, params, cu, g, reverse, amp):
    xi = x.clone().requires_grad_()
    ps = [p.detach().clone().requires_grad_() for p in params]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = mamba_inner(xi, *ps, cu_seqlens=cu, reverse=reverse, backend="numba")
    y.backward(g.to(y.dtype))
    return [y.detach(), xi.grad] + [p.grad for p in ps]


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_backward_equals_autograd_replay_bitwise(monkeypatch, amp, reverse):
    """The hand-written backward of the kernel backends gives the bits of the autograd replay
    (the former backward), in float32 and under bf16 autocast."""
    from geossm.nn import fused as fused_mod

    torch.manual_seed(0)
    m = Mamba(DIM, d_state=4, bias=True)
    with torch.no_grad():
        m.D.uniform_(-1, 1)
        m.conv_bias.uniform_(-0.5, 0.5)
        m.in_proj.bias.uniform_(-0.2, 0.2)
    params = (m.in_proj.weight, m.in_proj.bias, m.conv_weight, m.conv_bias, m.x_proj.weight,
              m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D)
    cu = cu_of(LENGTHS)
    x = torch.randn(int(cu[-1]), DIM)
    g = torch.randn(int(cu[-1]), m.conv_weight.shape[0])
    explicit = _inner_run(x, params, cu, g, reverse, amp)
    monkeypatch.setattr(fused_mod, "_kernel_backward", fused_mod._replay_backward)
    replay = _inner_run(x, params, cu, g, reverse, amp)
    for a, b in zip(explicit, replay):
        assert a.dtype == b.dtype and torch.equal(a, b)
