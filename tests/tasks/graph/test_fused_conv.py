import pytest
import torch
from torch_geometric.nn import GINEConv, ResGatedGraphConv

from geossm.tasks.graph.fused_conv import can_fuse, can_fuse_gine, gated_gcn, gine_aggregate


def _case(dtype: torch.dtype, seed: int = 0):
    """A conv with a non-zero bias and a random multigraph of 12 nodes (some without incoming
    edges, some edges repeated) with edge features that take a gradient."""
    torch.manual_seed(seed)
    conv = ResGatedGraphConv(8, 6, edge_dim=5).to(dtype)
    with torch.no_grad():
        conv.bias.normal_()
    n, e = 12, 40
    edge_index = torch.randint(0, n - 2, (2, e))
    edge_index[:, -1] = edge_index[:, 0]
    x = torch.randn(n, 8, dtype=dtype, requires_grad=True)
    edge_attr = torch.randn(e, 5, dtype=dtype, requires_grad=True)
    return conv, x, edge_index, edge_attr


def _outputs_and_grads(conv, fn, x, edge_index, edge_attr):
    out = fn(x, edge_index, edge_attr)
    grad = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    wanted = [x, edge_attr, *conv.parameters()]
    return out, torch.autograd.grad(out, wanted, grad)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gated_gcn_is_the_conv_in_values_and_gradients(dtype, tol):
    conv, x, edge_index, edge_attr = _case(dtype)
    want, want_grads = _outputs_and_grads(conv, conv, x, edge_index, edge_attr)
    got, got_grads = _outputs_and_grads(
        conv, lambda *a: gated_gcn(conv, *a), x, edge_index, edge_attr)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(got_grads) == len(want_grads) == 10  # x, edge_attr and the eight parameters
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_gated_gcn_under_autocast_computes_in_its_dtype_and_returns_the_convs_dtype():
    conv, x, edge_index, edge_attr = _case(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = conv(x, edge_index, edge_attr)
        got = gated_gcn(conv, x, edge_index, edge_attr)
    assert got.dtype == want.dtype == torch.float32  # bf16 messages + the float32 bias
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    dx, = torch.autograd.grad(got.sum(), x)
    assert dx.dtype == torch.float32 and torch.isfinite(dx).all()


def test_only_a_gated_conv_with_edge_features_and_biases_is_fused():
    assert can_fuse(ResGatedGraphConv(4, 4, edge_dim=2))
    for conv in (ResGatedGraphConv(4, 4), ResGatedGraphConv(4, 4, edge_dim=2, bias=False),
                 ResGatedGraphConv(4, 4, edge_dim=2, root_weight=False),
                 ResGatedGraphConv(4, 4, edge_dim=2, aggr="mean"),
                 GINEConv(torch.nn.Linear(4, 4), edge_dim=2)):
        assert not can_fuse(conv)
    with pytest.raises(ValueError, match="conv: expected a ResGatedGraphConv with edge"):
        gated_gcn(ResGatedGraphConv(4, 4), torch.randn(3, 4), torch.zeros(2, 1, dtype=torch.long),
                  torch.randn(1, 2))
    conv, x, edge_index, edge_attr = _case(torch.float32)
    with pytest.raises(ValueError, match=r"edge_attr: expected shape \(40, 5\), got \(39, 5\)"):
        gated_gcn(conv, x, edge_index, edge_attr[1:])
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 8\), got \(12, 7\)"):
        gated_gcn(conv, x[:, 1:], edge_index, edge_attr)


def _gine_case(dtype: torch.dtype):
    """A GINE conv (edge lin, trained eps set away from 0) on 10 token members, 25 member
    edges whose features are rows of 7 graph edges."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.GELU(), torch.nn.Linear(6, 6))
    conv = GINEConv(mlp, train_eps=True, edge_dim=4).to(dtype)
    with torch.no_grad():
        conv.eps.fill_(0.3)
    x = torch.randn(10, 6, dtype=dtype, requires_grad=True)
    edge_attr = torch.randn(7, 4, dtype=dtype, requires_grad=True)
    edge_index = torch.randint(0, 8, (2, 25))
    edge_id = torch.randint(0, 7, (25,))
    return conv, x, edge_index, edge_attr, edge_id


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gine_aggregate_then_the_mlp_is_the_conv_on_the_gathered_edges(dtype, tol):
    conv, x, edge_index, edge_attr, edge_id = _gine_case(dtype)
    grad = torch.randn(10, 6, dtype=dtype)
    wanted = [x, edge_attr, *conv.parameters()]
    want = conv(x, edge_index, edge_attr[edge_id])
    want_grads = torch.autograd.grad(want, wanted, grad)
    got = conv.nn(gine_aggregate(conv, x, edge_index, edge_attr, edge_id))
    got_grads = torch.autograd.grad(got, wanted, grad)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(got_grads) == 9  # x, edge_attr, eps, lin and the MLP's weights and biases
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_gine_aggregate_under_autocast_follows_the_convs_dtypes():
    conv, x, edge_index, edge_attr, edge_id = _gine_case(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = conv(x, edge_index, edge_attr[edge_id])
        got = conv.nn(gine_aggregate(conv, x, edge_index, edge_attr, edge_id))
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
    dx, de = torch.autograd.grad(got.float().sum(), [x, edge_attr])
    assert dx.dtype == de.dtype == torch.float32


def test_only_a_gine_conv_with_an_edge_lin_is_fused_and_shapes_are_checked():
    assert not can_fuse_gine(GINEConv(torch.nn.Linear(4, 4)))  # no edge lin
    assert not can_fuse_gine(ResGatedGraphConv(4, 4, edge_dim=2))
    conv, x, edge_index, edge_attr, edge_id = _gine_case(torch.float32)
    assert can_fuse_gine(conv)
    with pytest.raises(ValueError, match="conv: expected a GINEConv with an edge lin"):
        gine_aggregate(GINEConv(torch.nn.Linear(6, 6)), x, edge_index, edge_attr, edge_id)
    with pytest.raises(ValueError, match=r"edge_attr: expected shape \(E, 4\), got \(7, 3\)"):
        gine_aggregate(conv, x, edge_index, edge_attr[:, 1:], edge_id)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 6\), got \(10, 5\)"):
        gine_aggregate(conv, x[:, 1:], edge_index, edge_attr, edge_id)
    with pytest.raises(ValueError, match=r"edge_id: expected shape \(25,\), got \(24,\)"):
        gine_aggregate(conv, x, edge_index, edge_attr, edge_id[1:])
