"""Mamba and BiMamba on packed input of mixed lengths (numba kernels on CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F

from geossm.nn import BiMamba, Mamba
from geossm.nn.mamba import from_mamba_ssm_state_dict, to_mamba_ssm_state_dict

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
    (dict(expand=0), "expand must be a positive int or fraction, got 0"),
    (dict(expand=True), "expand must be a positive int or fraction, got True"),
    (dict(expand=0.3), r"expand \* d_model must be a positive integer"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba(DIM, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "numba", None])
@pytest.mark.parametrize("fused", [True, False])
def test_float64_is_refused_naming_the_dtypes_of_every_backend(backend, fused):
    m = Mamba(DIM, d_state=4, backend=backend, fused=fused)
    x = torch.randn(2, 5, DIM)
    with pytest.raises(TypeError, match=r"Mamba: x must be float32, float16 or bfloat16 with "
                                        r"every backend \(torch, numba, triton.*got dtype "
                                        r"torch.float64 with backend="):
        m.double()(x.double())
    with pytest.raises(TypeError, match=r"Mamba: parameters must be float32.*torch.float64"):
        m.double()(x)
    with pytest.raises(TypeError, match=r"Mamba: x must be .*torch.float64"):
        BiMamba(DIM, d_state=4, backend=backend)(x.double())
    assert m.float()(x).dtype == torch.float32 and m.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_fractional_expand_gives_a_narrow_inner_width(packed):
    x, cu = packed  # a quarter of the model width inside: the projections' shapes follow
    m = Mamba(DIM, d_state=4, expand=0.25)
    assert m.d_inner == DIM // 4
    assert m.in_proj.weight.shape == (DIM // 2, DIM) and m.out_proj.weight.shape == (DIM, DIM // 4)
    y = m(x, cu)
    y.sum().backward()
    assert y.shape == x.shape and m.A_log.grad.shape == (DIM // 4, 4)


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


# ------------------------------------------------------------- mamba_ssm state dicts

def mamba_ssm_state_dict(d_model=8, d_state=4, d_conv=4, expand=2, dt_rank=2, bias=False,
                         seed=0):
    """Random weights under mamba_ssm's ``Mamba`` key names and shapes (built here: mamba_ssm
    needs CUDA to import)."""
    g = torch.Generator().manual_seed(seed)
    inner = expand * d_model
    sd = {
        "in_proj.weight": torch.randn(2 * inner, d_model, generator=g) * 0.3,
        "conv1d.weight": torch.randn(inner, 1, d_conv, generator=g) * 0.5,
        "conv1d.bias": torch.randn(inner, generator=g) * 0.1,
        "x_proj.weight": torch.randn(dt_rank + 2 * d_state, inner, generator=g) * 0.3,
        "dt_proj.weight": torch.randn(inner, dt_rank, generator=g) * 0.5,
        "dt_proj.bias": torch.randn(inner, generator=g) * 0.5 - 3.0,
        "A_log": torch.log(torch.rand(inner, d_state, generator=g) * 3 + 0.5),
        "D": torch.randn(inner, generator=g),
        "out_proj.weight": torch.randn(d_model, inner, generator=g) * 0.3,
    }
    if bias:
        sd["in_proj.bias"] = torch.randn(2 * inner, generator=g) * 0.1
        sd["out_proj.bias"] = torch.randn(d_model, generator=g) * 0.1
    return sd


def mamba_ssm_reference(sd, x):
    """mamba_ssm's slow path written out from its tensors: ``nn.Conv1d`` (padding W-1, cut to
    L) and the recurrence as a Python loop over time. ``x: (B, L, D)``."""
    inner, _, width = sd["conv1d.weight"].shape
    d_state = sd["A_log"].shape[1]
    length = x.shape[1]
    xz = F.linear(x, sd["in_proj.weight"], sd.get("in_proj.bias"))
    u, z = xz.split(inner, dim=-1)
    u = F.conv1d(u.transpose(1, 2), sd["conv1d.weight"], sd["conv1d.bias"], padding=width - 1,
                 groups=inner)[..., :length].transpose(1, 2)
    u = F.silu(u)
    dt, B, C = F.linear(u, sd["x_proj.weight"]).split(
        [sd["dt_proj.weight"].shape[1], d_state, d_state], dim=-1)
    delta = F.softplus(F.linear(dt, sd["dt_proj.weight"], sd["dt_proj.bias"]))  # (B, L, E)
    A = -torch.exp(sd["A_log"])
    h = torch.zeros(x.shape[0], inner, d_state)
    ys = []
    for t in range(length):
        h = (torch.exp(delta[:, t, :, None] * A) * h
             + delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None])
        ys.append((h * C[:, t, None, :]).sum(-1) + sd["D"] * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return F.linear(y, sd["out_proj.weight"], sd.get("out_proj.bias"))


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("bias", [False, True])
def test_mamba_ssm_weights_give_mamba_ssm_outputs(backend, bias):
    sd = mamba_ssm_state_dict(bias=bias)
    m = Mamba(8, d_state=4, d_conv=4, expand=2, dt_rank=2, bias=bias, backend=backend)
    m.load_mamba_ssm_state_dict(sd)
    x = torch.randn(2, 11, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(m(x), mamba_ssm_reference(sd, x), rtol=1e-4, atol=1e-5)
    # Sized from the shapes alone: the same module.
    built = Mamba.from_mamba_ssm(sd, backend=backend)
    assert (built.d_model, built.d_state, built.d_conv, built.expand, built.dt_rank) == (
        8, 4, 4, 2, 2)
    assert (built.in_proj.bias is not None) == bias
    with torch.no_grad():
        torch.testing.assert_close(built(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("d_model, expand", [(64, 1.5), (8, 0.25), (7, 29 / 7)])
def test_mamba_ssm_round_trip_with_a_fractional_expand(d_model, expand):
    m = Mamba(d_model, d_state=4, expand=expand, dt_rank=2)
    back = Mamba.from_mamba_ssm(m.mamba_ssm_state_dict())
    assert back.d_inner == m.d_inner == int(back.expand * d_model)  # mamba_ssm's d_inner
    assert back.state_dict().keys() == m.state_dict().keys()
    for key, value in m.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(2, 5, d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)


def test_mamba_ssm_round_trip_is_identity():
    sd = mamba_ssm_state_dict(bias=True, seed=5)
    m = Mamba.from_mamba_ssm(sd)
    back = m.mamba_ssm_state_dict()
    assert back.keys() == sd.keys()
    for key in sd:
        assert torch.equal(back[key], sd[key]), key
    # geossm -> mamba_ssm -> geossm, from a freshly initialised module.
    fresh = Mamba(16, d_state=3, d_conv=3)
    again = from_mamba_ssm_state_dict(to_mamba_ssm_state_dict(fresh.state_dict(), "mixer."),
                                      "mixer.")
    assert again.keys() == fresh.state_dict().keys()
    for key, value in fresh.state_dict().items():
        assert torch.equal(again[key], value), key


def test_mamba_ssm_prefix_picks_one_mixer():
    whole = {f"layers.{i}.mixer.{k}": v for i in range(2)
             for k, v in mamba_ssm_state_dict(seed=i).items()}
    whole["embedding.weight"] = torch.zeros(3, 8)
    m = Mamba.from_mamba_ssm(whole, prefix="layers.1.mixer.")
    assert torch.equal(m.D, whole["layers.1.mixer.D"])


def test_mamba_ssm_errors():
    sd = mamba_ssm_state_dict()
    without = {k: v for k, v in sd.items() if k != "A_log"}
    with pytest.raises(ValueError, match=r"missing \['A_log'\], unknown \[\]"):
        from_mamba_ssm_state_dict(without)
    with pytest.raises(ValueError, match=r"unknown \['norm.weight'\]"):
        from_mamba_ssm_state_dict({**sd, "norm.weight": torch.ones(8)})
    with pytest.raises(ValueError, match=r"'conv1d.weight' expected shape \(E, 1, W\) .*got "
                                         r"\(16, 4\)"):
        from_mamba_ssm_state_dict({**sd, "conv1d.weight": sd["conv1d.weight"][:, 0]})
    m = Mamba(8, d_state=6, d_conv=4, expand=2, dt_rank=2)
    with pytest.raises(ValueError,
                       match=r"'x_proj.weight' expected shape \(14, 16\) .*got \(10, 16\)"):
        m.load_mamba_ssm_state_dict(sd)
    with pytest.raises(ValueError, match=r"'conv1d.weight' expected shape \(16, 1, 3\) .*got "
                                         r"\(16, 1, 4\)"):
        Mamba(8, d_state=4, d_conv=3, dt_rank=2).load_mamba_ssm_state_dict(sd)
    with pytest.raises(ValueError, match=r"geossm keys missing \['in_proj.bias', "
                                         r"'out_proj.bias'\]"):
        Mamba(8, d_state=4, dt_rank=2, bias=True).load_mamba_ssm_state_dict(sd)
    with pytest.raises(ValueError, match=r"'conv_weight' expected shape \(E, W\)"):
        to_mamba_ssm_state_dict({**m.state_dict(), "conv_weight": torch.zeros(16, 1, 4)})
