"""RMSNorm, DropPath and MLP on packed input of mixed lengths."""

import pytest
import torch

from geossm.nn import MLP, DropPath, RMSNorm

LENGTHS = [4, 0, 1, 7, 0, 2]
CU = torch.tensor([0] + LENGTHS).cumsum(0).to(torch.int32)
T = sum(LENGTHS)


def test_rmsnorm_formula_dtype_and_gradient():
    torch.manual_seed(0)
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(T, 6, requires_grad=True)
    y = norm(x)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(y, expected)
    # Token-wise: each segment alone gives the same rows.
    for a, b in zip(CU[:-1].tolist(), CU[1:].tolist()):
        torch.testing.assert_close(norm(x[a:b]), y[a:b])
    y.sum().backward()
    assert norm.weight.grad.abs().sum() > 0 and x.grad is not None
    assert norm(x.detach().bfloat16()).dtype == torch.bfloat16
    assert norm(torch.randn(2, 3, 6)).shape == (2, 3, 6)


def test_rmsnorm_errors():
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 6\), got \(3, 5\)"):
        RMSNorm(6)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        RMSNorm(4, eps=0.0)


def test_drop_path_identity_in_eval_and_at_zero():
    x = torch.randn(T, 3)
    dp = DropPath(0.5).eval()
    assert dp(x, CU) is x
    assert DropPath(0.0).train()(x, CU) is x


def test_drop_path_drops_whole_segments():
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    x = torch.rand(T, 3) + 1.0  # no zeros, so a zero row means "dropped"
    seen = set()
    for _ in range(20):
        y = dp(x, CU)
        for a, b in zip(CU[:-1].tolist(), CU[1:].tolist()):
            if b == a:
                continue
            rows = y[a:b]
            if (rows == 0).all():
                seen.add("dropped")
            else:
                torch.testing.assert_close(rows, 2 * x[a:b])
                seen.add("kept")
    assert seen == {"dropped", "kept"}


def test_drop_path_dense_per_sample_and_gradient():
    torch.manual_seed(1)
    dp = DropPath(0.25).train()
    x = (torch.rand(64, 5, 3) + 1).requires_grad_(True)
    y = dp(x)
    per_sample = (y != 0).flatten(1)
    assert (per_sample.all(1) | ~per_sample.any(1)).all()
    kept = per_sample.all(1).float().mean()
    assert 0.5 < kept < 0.95
    y.sum().backward()
    torch.testing.assert_close(x.grad[per_sample.all(1)], torch.full_like(
        x.grad[per_sample.all(1)], 1 / 0.75))


def test_drop_path_errors():
    with pytest.raises(ValueError, match=r"p must be a float in \[0, 1\), got 1.0"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="p must be a float in"):
        DropPath(-0.1)
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int32 tensor"):
        DropPath(0.1).train()(torch.randn(T, 3), CU.float())


def test_mlp_shapes_gradient_and_errors():
    torch.manual_seed(2)
    mlp = MLP(4, hidden_dim=10, out_dim=3)
    x = torch.randn(T, 4)
    y = mlp(x)
    assert y.shape == (T, 3)
    torch.testing.assert_close(y, mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))))
    y.pow(2).sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert MLP(4).fc1.out_features == 16 and MLP(4).fc2.out_features == 4
    with pytest.raises(ValueError, match="hidden_dim must be a positive int, got 0"):
        MLP(4, hidden_dim=0)


def test_rmsnorm_fused_switch_same_values_and_gradients():
    """RMSNorm.fused runs geossm.nn.fused.rms_norm; off (the CPU default), the plain ops: same
    numbers."""
    from geossm.nn import RMSNorm

    torch.manual_seed(0)
    x = torch.randn(9, 16)
    runs = []
    for fused in (True, False):
        norm = RMSNorm(16)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        norm.fused = fused
        xi = x.clone().requires_grad_()
        y = norm(xi)
        y.pow(2).sum().backward()
        runs.append((y, xi.grad, norm.weight.grad))
    assert RMSNorm(4).fused is None  # on for CUDA inputs only: see RMSNorm.fused
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_mlp_fused_switch_same_values_and_gradients(drop):
    """MLP.fused runs fc2(GELU) through geossm.nn.fused.gelu_linear (not with dropout between
    them while training); the plain ops give the same numbers."""
    from geossm.nn import MLP
    from geossm.nn import fused as fused_mod

    torch.manual_seed(0)
    x = torch.randn(11, 6, dtype=torch.float64)
    runs, calls = [], []
    original = fused_mod._GeluLinear.apply
    for fused in (True, False):
        torch.manual_seed(1)
        mlp = MLP(6, drop=drop).double()
        mlp.fused = fused
        xi = x.clone().requires_grad_()
        fused_mod._GeluLinear.apply = lambda *a: calls.append(1) or original(*a)
        try:
            torch.manual_seed(2)
            y = mlp(xi)
        finally:
            fused_mod._GeluLinear.apply = original
        y.pow(2).sum().backward()
        runs.append((y, xi.grad, *[p.grad for p in mlp.parameters()]))
    assert len(calls) == (1 if drop == 0 else 0)
    assert MLP(4).fused is None  # on for CUDA inputs only: see MLP.fused
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_mlp_default_keeps_plain_ops_on_cpu_and_other_activations():
    from geossm.nn import MLP

    x = torch.randn(3, 4)
    assert not MLP(4)._use_fused(x)                       # None: CPU keeps the plain ops
    assert not MLP(4, act=torch.nn.ReLU)._use_fused(x.requires_grad_())
    forced = MLP(4)
    forced.fused = True
    assert forced._use_fused(x)
