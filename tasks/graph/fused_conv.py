"""PyG's ``ResGatedGraphConv`` with edge features as one autograd function (``gated_gcn``),
and the message passing of ``GINEConv`` before its MLP (``gine_aggregate``).

With edge features, ``ResGatedGraphConv`` (the GatedGCN branch of the graph models) computes
for every edge ``j -> i``::

    k_i = W_k [x_i, e_ji] + b_k,   q_j = W_q [x_j, e_ji] + b_q,   v_j = W_v [x_j, e_ji] + b_v
    out_i = sum_j sigmoid(k_i + q_j) * v_j  +  W_s x_i + bias

by gathering ``x`` three times, concatenating each gather with the edge features and running
three linear layers over the edges. Its forward and autograd's backward are ~90 dispatched
operators per layer (the graph step on the GPU is bound by their dispatch). Split by columns,
``W [x, e] = W^x x + W^e e``: one matmul of the nodes with ``W^x_k, W^x_q, W^x_v, W_s``
stacked, one of the edges with ``W^e_k, W^e_q, W^e_v``, two gathers, the gate, one scatter;
the backward is written out (~17 fewer dispatched operators per layer, and no autograd graph
inside). The same math; the float rounding differs (the node part of a projection
is computed before its gather, the sums run in another order).

``GINEConv`` with edge features computes ``nn(sum_j relu(x_j + lin(e_ji)) + (1 + eps) x_i)``;
the token encoder of the graph models runs it on the members of every token, over the edges
between them, whose features are gathered from the graph's edges (``eid``). ``gine_aggregate``
is the part before ``nn`` as one autograd function: ``lin`` applied to the graph's edges before
the gather (fewer rows; the same values row by row), one gather per side, one scatter, the
backward written out.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torch_geometric.nn import GINEConv, ResGatedGraphConv

# the matmul dtype under autocast, and a cast that is no operator call where nothing changes
from geossm.nn.packed_mixer import cast_if_needed, compute_dtype

__all__ = ["gated_gcn", "can_fuse", "gine_aggregate", "can_fuse_gine"]


def can_fuse(conv) -> bool:
    """Whether ``gated_gcn`` computes ``conv``: a ``torch_geometric.nn.ResGatedGraphConv`` with
    edge features, a sigmoid gate, the root weight, a bias and sum aggregation, messages from
    source to target."""
    return (type(conv) is ResGatedGraphConv and conv.edge_dim is not None
            and isinstance(conv.act, torch.nn.Sigmoid) and conv.lin_skip is not None
            and conv.bias is not None and conv.lin_key.bias is not None
            and conv.aggr == "add" and conv.flow == "source_to_target"
            and isinstance(conv.in_channels, int))


class _GatedGCN(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, edge_attr, src, dst, w_k, b_k, w_q, b_q, w_v, b_v, w_s, bias):
        cd = compute_dtype(x)
        n, d = x.shape
        o = w_s.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            w3 = cast_if_needed(torch.cat([w_k, w_q, w_v]), cd)                     # (3O, D + De)
            w_nodes = torch.cat([w3[:, :d], cast_if_needed(w_s, cd)])   # (4O, D): k q v skip
            w_edges = w3[:, d:]                                         # (3O, De): k q v
            xc, ec = cast_if_needed(x, cd), cast_if_needed(edge_attr, cd)
            p = xc.mm(w_nodes.t())                                      # (N, 4O)
            b3 = cast_if_needed(torch.cat([b_k, b_q, b_v]), cd)
            q = torch.addmm(b3, ec, w_edges.t())                        # (E, 3O)
            gate = p[:, :o].index_select(0, dst)
            src_qv = p[:, o:3 * o].index_select(0, src)                 # (E, 2O)
            gate += q[:, :o]
            gate += src_qv[:, :o]
            gate += q[:, o:2 * o]
            gate = torch.sigmoid(gate)
            value = src_qv[:, o:]
            value += q[:, 2 * o:]
            out = p.new_zeros(n, o).index_add_(0, dst, gate * value)
            out = (out + p[:, 3 * o:]) + bias                          # bias: its own dtype
        ctx.save_for_backward(xc, ec, src, dst, w_nodes, w_edges, gate, value)
        ctx.dtypes = (x.dtype, edge_attr.dtype, w_k.dtype, b_k.dtype, w_s.dtype, bias.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        xc, ec, src, dst, w_nodes, w_edges, gate, value = ctx.saved_tensors
        t_x, t_e, t_w, t_b, t_s, t_bias = ctx.dtypes
        n, d = xc.shape
        o = w_edges.shape[0] // 3
        with torch.no_grad(), torch.autocast(xc.device.type, enabled=False):
            d_bias = cast_if_needed(dout.sum(0), t_bias)
            dc = cast_if_needed(dout, xc.dtype)
            d_msg = dc.index_select(0, dst)
            d_gate = torch.ops.aten.sigmoid_backward(d_msg * value, gate)
            d_src = torch.cat([d_gate, d_msg * gate], 1)                # (E, 2O): q v
            d_q = torch.cat([d_gate, d_src], 1)                         # (E, 3O): k q v
            d_p = torch.cat([xc.new_zeros(n, o).index_add_(0, dst, d_gate),
                             xc.new_zeros(n, 2 * o).index_add_(0, src, d_src), dc], 1)
            dx = cast_if_needed(d_p.mm(w_nodes), t_x)
            d_w_nodes = d_p.t().mm(xc)                                  # (4O, D)
            de = cast_if_needed(d_q.mm(w_edges), t_e)
            d_w_edges = d_q.t().mm(ec)                                  # (3O, De)
            d_b = cast_if_needed(d_q.sum(0), t_b)
            d_w = [cast_if_needed(torch.cat([d_w_nodes[i * o:(i + 1) * o],
                                    d_w_edges[i * o:(i + 1) * o]], 1), t_w) for i in range(3)]
            d_s = cast_if_needed(d_w_nodes[3 * o:], t_s)
        return (dx, de, None, None, d_w[0], d_b[:o], d_w[1], d_b[o:2 * o], d_w[2],
                d_b[2 * o:], d_s, d_bias)


def gated_gcn(conv, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
    """``conv(x, edge_index, edge_attr)`` of a ``ResGatedGraphConv`` that ``can_fuse`` (see
    the module docstring), as one autograd function with the conv's own parameters.

    Shapes: ``x (N, D)``, ``edge_index (2, E) long``, ``edge_attr (E, De)`` -> ``(N, O)``;
    under autocast the projections run in its dtype and the output comes out in the
    promotion of that dtype and the bias's, as from the conv itself.
    """
    if not can_fuse(conv):
        raise ValueError("conv: expected a ResGatedGraphConv with edge features, sigmoid gate, "
                         f"root weight, biases and sum aggregation, got {conv!r}")
    if x.dim() != 2 or x.shape[1] != conv.in_channels:
        raise ValueError(f"x: expected shape (N, {conv.in_channels}), got {tuple(x.shape)}")
    if edge_attr.dim() != 2 or edge_attr.shape != (edge_index.shape[1], conv.edge_dim):
        raise ValueError(f"edge_attr: expected shape ({edge_index.shape[1]}, {conv.edge_dim}), "
                         f"got {tuple(edge_attr.shape)}")
    return _GatedGCN.apply(x, edge_attr, edge_index[0], edge_index[1],
                           conv.lin_key.weight, conv.lin_key.bias, conv.lin_query.weight,
                           conv.lin_query.bias, conv.lin_value.weight, conv.lin_value.bias,
                           conv.lin_skip.weight, conv.bias)


def can_fuse_gine(conv) -> bool:
    """Whether ``gine_aggregate`` computes ``conv``'s message passing: a
    ``torch_geometric.nn.GINEConv`` with an edge ``lin`` (with bias), sum aggregation, messages
    from source to target."""
    return (type(conv) is GINEConv and conv.lin is not None and conv.lin.bias is not None
            and conv.aggr == "add" and conv.flow == "source_to_target")


class _GINEAggregate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, edge_attr, src, dst, eid, w, b, eps):
        cd = compute_dtype(edge_attr)
        with torch.autocast(x.device.type, enabled=False):
            ec = cast_if_needed(edge_attr, cd)
            e = torch.addmm(cast_if_needed(b, cd), ec, cast_if_needed(w, cd).t())  # (E, D)
            msg = torch.relu(x.index_select(0, src) + e.index_select(0, eid))
            out = x.new_zeros(x.shape[0], x.shape[1], dtype=msg.dtype).index_add_(0, dst, msg)
            out = out + (1 + eps) * x
        ctx.save_for_backward(x, ec, src, dst, eid, w, eps, msg)
        ctx.dtypes = (cd, edge_attr.dtype, w.dtype, b.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, ec, src, dst, eid, w, eps, msg = ctx.saved_tensors
        cd, t_e, t_w, t_b = ctx.dtypes
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            d_eps = (dout * x).sum().reshape(eps.shape).to(eps.dtype)
            d_pre = torch.ops.aten.threshold_backward(dout.index_select(0, dst), msg, 0)
            dx = (dout * (1 + eps)).index_add_(0, src, d_pre).to(x.dtype)
            d_pre = cast_if_needed(d_pre, cd)
            de = d_pre.new_zeros(ec.shape[0], d_pre.shape[1]).index_add_(0, eid, d_pre)
            d_edge = cast_if_needed(de.mm(cast_if_needed(w, cd)), t_e)
            d_w = cast_if_needed(de.t().mm(ec), t_w)
            d_b = cast_if_needed(de.sum(0), t_b)
        return dx, d_edge, None, None, None, d_w, d_b, d_eps


def gine_aggregate(conv, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                   edge_id: Tensor) -> Tensor:
    """``sum_j relu(x_j + lin(edge_attr)[edge_id]) + (1 + eps) x_i`` of a ``GINEConv`` that
    ``can_fuse_gine``: what it feeds its ``nn`` for ``conv(x, edge_index,
    edge_attr[edge_id])`` (see the module docstring), with the conv's own parameters.

    Shapes: ``x (N, D)``, ``edge_index (2, E') long``, ``edge_attr (E, De)``, ``edge_id (E',)
    long`` (rows of ``edge_attr``) -> ``(N, D)``; under autocast ``lin`` runs in its dtype and
    the messages in the promotion of that and ``x``'s, as in the conv.
    """
    if not can_fuse_gine(conv):
        raise ValueError("conv: expected a GINEConv with an edge lin (with bias) and sum "
                         f"aggregation, got {conv!r}")
    if edge_attr.dim() != 2 or edge_attr.shape[1] != conv.lin.in_channels:
        raise ValueError(f"edge_attr: expected shape (E, {conv.lin.in_channels}), got "
                         f"{tuple(edge_attr.shape)}")
    if x.dim() != 2 or x.shape[1] != conv.lin.out_channels:
        raise ValueError(f"x: expected shape (N, {conv.lin.out_channels}), got "
                         f"{tuple(x.shape)}")
    if edge_id.shape != (edge_index.shape[1],):
        raise ValueError(f"edge_id: expected shape ({edge_index.shape[1]},), got "
                         f"{tuple(edge_id.shape)}")
    return _GINEAggregate.apply(x, edge_attr, edge_index[0], edge_index[1], edge_id,
                                conv.lin.weight, conv.lin.bias, conv.eps)
