"""Mamba2 / BiMamba2 mixers and build_mixer: shapes, segment isolation, direction, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geossm import _compat
from geossm.nn import BiMamba, BiMamba2, Mamba, Mamba2, SerializedBlock, build_mixer
from geossm.serialization import Serialization

torch.manual_seed(0)


def packed(lengths, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), dim, generator=gen)
    cu = torch.tensor([0] + list(lengths)).cumsum(0).to(torch.int32)
    return x, cu


def flip_segments(cu):
    return torch.cat([torch.arange(b - 1, a - 1, -1) for a, b in
                      zip(cu[:-1].tolist(), cu[1:].tolist())])


def small(**kwargs):
    return dict(dict(d_state=8, headdim=8, ngroups=2, backend="torch"), **kwargs)


def test_shapes_packed_and_dense_agree():
    model = Mamba2(16, **small())
    x, cu = packed([7, 7, 7])
    out = model(x, cu)
    dense = model(x.view(3, 7, 16))
    assert out.shape == x.shape and dense.shape == (3, 7, 16)
    torch.testing.assert_close(dense.reshape(-1, 16), out, rtol=1e-5, atol=1e-5)


def test_segments_do_not_leak():
    model = Mamba2(16, **small())
    x, cu = packed([5, 0, 9, 4])
    out = model(x, cu)
    changed = x.clone()
    changed[5:14] += 3.0                                    # the third segment only
    out2 = model(changed, cu)
    torch.testing.assert_close(out2[:5], out[:5])
    torch.testing.assert_close(out2[14:], out[14:])
    assert not torch.allclose(out2[5:14], out[5:14])


def test_reverse_equals_flipped_segments():
    model = Mamba2(16, **small())
    x, cu = packed([5, 0, 9, 1])
    flip = flip_segments(cu)
    torch.testing.assert_close(model(x, cu, reverse=True), model(x[flip], cu)[flip],
                               rtol=1e-5, atol=1e-5)


def test_bidirectional_is_the_sum_of_both_directions():
    model = BiMamba2(16, **small())
    x, cu = packed([6, 3])
    want = model.forward_mamba(x, cu) + model.backward_mamba(x, cu, reverse=True)
    torch.testing.assert_close(model(x, cu), want)


def test_z_gate_inside_the_scan_without_rmsnorm():
    """``rmsnorm=False`` gates inside the kernel: out = out_proj(y * silu(z))."""
    model = Mamba2(16, **small(rmsnorm=False))
    assert model.norm_weight is None
    x, cu = packed([4, 6])
    inner, groups, N = model.d_inner, model.ngroups, model.d_state
    z, xBC, dt = model.in_proj(x).split([inner, inner + 2 * groups * N, model.nheads], -1)
    from geossm.kernels import causal_conv1d, ssd_scan
    xBC = causal_conv1d(xBC, model.conv_weight, model.conv_bias, cu_seqlens=cu,
                        activation="silu", backend="torch")
    h, B, C = xBC.split([inner, groups * N, groups * N], -1)
    y = ssd_scan(h.view(-1, model.nheads, 8), dt, -torch.exp(model.A_log), B.view(-1, 2, N),
                 C.view(-1, 2, N), D=model.D, dt_bias=model.dt_bias, dt_softplus=True,
                 cu_seqlens=cu, backend="reference")
    want = model.out_proj(y.reshape(-1, inner) * F.silu(z))
    torch.testing.assert_close(model(x, cu), want, rtol=1e-4, atol=1e-5)


def test_gated_rmsnorm_normalises_each_group():
    model = Mamba2(16, **small())
    y, z = torch.randn(5, model.d_inner), torch.randn(5, model.d_inner)
    gated = (y * F.silu(z)).view(5, 2, -1)
    want = gated / gated.pow(2).mean(-1, keepdim=True).add(model.norm_eps).sqrt()
    torch.testing.assert_close(model._gated_norm(y, z), want.view(5, -1))


def test_mamba2_initialisation():
    model = Mamba2(32, d_state=16, expand=2, dt_min=1e-3, dt_max=0.1)
    assert model.headdim == 64 and model.nheads == 1
    model = Mamba2(32, d_state=16, expand=2, headdim=8, dt_min=1e-3, dt_max=0.1)
    dt = F.softplus(model.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    A = torch.exp(model.A_log)
    assert A.min() >= 1.0 and A.max() <= 16.0 and A.shape == (8,)
    assert torch.equal(model.D, torch.ones(8))
    assert torch.equal(model.norm_weight, torch.ones(64))
    assert all(getattr(p, "_no_weight_decay", False)
               for p in (model.A_log, model.D, model.dt_bias))
    assert math.gcd(48, 64) == Mamba2(24, expand=2).headdim == 16


def test_every_parameter_gets_a_gradient():
    model = BiMamba2(16, **small())
    x, cu = packed([5, 0, 9])
    model(x, cu).square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.skipif(not (_compat.has_triton() and (torch.cuda.is_available()
                                                    or _compat.triton_interpret())),
                    reason="triton not installed / not interpretable")
def test_triton_backend_matches_torch_backend():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Mamba2(16, **small()).to(device)
    x, cu = packed([5, 0, 9, 1])
    x, cu = x.to(device).requires_grad_(), cu.to(device)
    want = model(x, cu, reverse=True)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    model.backend = "triton"
    got = model(x, cu, reverse=True)
    (gx,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gx_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(headdim=5), r"headdim must divide expand \* d_model = 32, got 5"),
    (dict(headdim=8, ngroups=3), r"ngroups must divide the number of heads H = 4, got 3"),
    (dict(d_conv=9), r"d_conv must be an int in \[2, 8\]"),
    (dict(A_init_range=(0, 2)), r"A_init_range must be \(low, high\) with 0 < low <= high"),
    (dict(dt_min=0.2, dt_max=0.1), r"dt_min and dt_max must satisfy"),
    (dict(backend="chunked"), r"backend must be None, 'torch', 'numba' or 'triton'"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mamba2(16, **kwargs)


def test_build_mixer_picks_the_class():
    assert type(build_mixer("mamba", 8, True, d_state=4)) is BiMamba
    assert type(build_mixer("mamba", 8, False, d_state=4)) is Mamba
    assert type(build_mixer("mamba2", 8, True, d_state=4)) is BiMamba2
    assert type(build_mixer("mamba2", 8, False, d_state=4)) is Mamba2
    with pytest.raises(ValueError, match=r"mixer must be one of \['mamba', 'mamba2'\], got 'x'"):
        build_mixer("x", 8)


def test_serialized_block_runs_mamba2():
    block = SerializedBlock(16, mixer="mamba2", d_state=8, backend="torch")
    assert isinstance(block.mixer, BiMamba2)
    x, cu = packed([5, 7])
    ser = Serialization(order=torch.arange(12), inverse=torch.arange(12), cu_seqlens=cu)
    out = block(x, ser)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["PointCloudMambaSeg", "PointCloudMambaCls", "LION",
                                  "GraphMambaNetwork", "GraphMamba", "EventMambaCls"])
def test_task_models_take_mixer_mamba2(name):
    """``model.mixer: mamba2`` reaches every mixer of the task models (config key)."""
    from geossm.registry import MODELS

    cls = MODELS.get(name)
    init, inputs = cls.example()
    torch.manual_seed(0)
    model = cls(**init, mixer="mamba2")
    kinds = {type(m) for m in model.modules()}
    assert BiMamba2 in kinds and not kinds & {Mamba, BiMamba}, name
    out = model(**inputs)
    tensors = [out] if isinstance(out, torch.Tensor) else [
        v for v in (out.values() if isinstance(out, dict) else out)
        if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in tensors)
    sum(t.float().sum() for t in tensors).backward()
    assert all(p.grad is not None for m in model.modules() if isinstance(m, Mamba2)
               for p in m.parameters())
