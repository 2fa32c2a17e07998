"""Mamba and BiMamba on packed input of mixed lengths (numba kernels on CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F

from geossm.nn import BiMamba, Mamba

LENGTHS = [5, 0, 1, 9, 2, 0, 3]
DIM = 8


def cu_of(lengths):
    return torch.tensor([0] + list(lengths), dtype=torch.int32).cumsum(0).to(torch.int32)


def flip_segments(x, cu):
    """Reverse every segment of packed ``x`` (the reference for ``reverse=True``)."""
    parts = [x[a:b].flip(0) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    return torch.cat(parts, 0)


def small(**kw):
    torch.manual_seed(0)
    return Mamba(DIM, d_state=4, **kw)


@pytest.fixture
def packed():
    torch.manual_seed(1)
    cu = cu_of(LENGTHS)
    return torch.randn(int(cu[-1]), DIM), cu


def test_initialisation():
    m = Mamba(32, d_state=6, dt_min=1e-3, dt_max=0.1)
    assert m.d_inner == 64 and m.dt_rank == 2
    assert torch.equal(-torch.exp(m.A_log), -torch.arange(1, 7.0).expand(64, 6))
    assert torch.equal(m.D, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    assert not getattr(m.in_proj.weight, "_no_weight_decay", False)
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv_bias is not None
    assert Mamba(20, dt_rank=3).dt_rank == 3 and Mamba(20).dt_rank == math.ceil(20 / 16)


def test_packed_matches_each_sequence_alone(packed):
    x, cu = packed
    m = small()
    y = m(x, cu)
    assert y.shape == x.shape
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            torch.testing.assert_close(y[a:b], m(x[a:b]), atol=1e-5, rtol=1e-5)


def test_no_tokens_at_all():
    m = small()
    x = torch.zeros(0, DIM, requires_grad=True)
    y = m(x, cu_of([0, 0]))
    y.sum().backward()
    assert y.shape == (0, DIM) and x.grad.shape == (0, DIM)


def test_dense_equals_packed():
    torch.manual_seed(2)
    m = small()
    x = torch.randn(3, 7, DIM)
    cu = torch.arange(4, dtype=torch.int32) * 7
    torch.testing.assert_close(m(x), m(x.reshape(21, DIM), cu).reshape(3, 7, DIM),
                               atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_parameter(packed):
    x, cu = packed
    x = x.clone().requires_grad_(True)
    m = small(bias=True)
    (m(x, cu) ** 2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_numba_matches_torch_reference_with_gradients(packed):
    x, cu = packed
    fast, ref = small(), small(backend="torch")
    ref.load_state_dict(fast.state_dict())
    outs, grads = [], []
    for m in (fast, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi, cu, reverse=True)
        y.pow(2).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-4, rtol=1e-4)


def test_reverse_equals_flip_run_flip(packed):
    x, cu = packed
    m = small()
    torch.testing.assert_close(m(x, cu, reverse=True),
                               flip_segments(m(flip_segments(x, cu), cu), cu),
                               atol=1e-5, rtol=1e-5)


def test_bimamba_is_forward_plus_flipped_backward(packed):
    x, cu = packed
    torch.manual_seed(3)
    bi = BiMamba(DIM, d_state=4)
    expected = bi.forward_mamba(x, cu) + flip_segments(
        bi.backward_mamba(flip_segments(x, cu), cu), cu)
    torch.testing.assert_close(bi(x, cu), expected, atol=1e-5, rtol=1e-5)


def test_bimamba_separate_parameters_and_per_sequence(packed):
    x, cu = packed
    torch.manual_seed(4)
    bi = BiMamba(DIM, d_state=4, expand=1)
    fwd = dict(bi.forward_mamba.named_parameters())
    for name, p in bi.backward_mamba.named_parameters():
        assert p is not fwd[name]
    assert not torch.equal(bi.forward_mamba.in_proj.weight, bi.backward_mamba.in_proj.weight)
    xg = x.clone().requires_grad_(True)
    y = bi(xg, cu)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            torch.testing.assert_close(y[a:b], bi(x[a:b]), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    for name, p in bi.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    dense = x[:5].reshape(1, 5, DIM)
    torch.testing.assert_close(bi(dense)[0], y[:5], atol=1e-5, rtol=1e-5)


# The kernels' backend choice reads an lru_cache'd availability check; dynamo traces through it.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a .functools.lru_cache.:UserWarning")
def test_torch_compile_fullgraph_matches_eager(packed):
    x, cu = packed
    m = small()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    ye, yc = m(xe, cu), compiled(xc, cu)
    torch.testing.assert_close(yc, ye)
    ye.sum().backward()
    yc.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_conv=1), "d_conv must be an int in \\[2, 8\\]"),
    (dict(d_conv=9), "d_conv must be an int in \\[2, 8\\]"),
    (dict(d_state=0), "d_state must be a positive int"),
    (dict(dt_rank="big"), "dt_rank must be 'auto' or a positive int"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_min and dt_max"),
    (dict(backend="cuda"), "backend must be None"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba(DIM, **kwargs)


def test_forward_errors(packed):
    x, cu = packed
    m = small()
    with pytest.raises(ValueError,
                       match=r"x must have shape \(T, 8\) or \(B, L, 8\), got \(3, 5\)"):
        m(torch.randn(3, 5))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        m(torch.ones(3, DIM, dtype=torch.long))
    with pytest.raises(ValueError, match="cu_seqlens must be None for dense"):
        m(x[:4].reshape(1, 4, DIM), cu_of([4]))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int32 tensor"):
        m(x, cu.float())
    with pytest.raises(ValueError, match="cu_seqlens must end with the number of tokens"):
        m(x, cu_of([1, 2]))
