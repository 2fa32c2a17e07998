import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from geossm.serialization import random_walk_tokens
from geossm.tasks.graph.datasets import KarateClub
from geossm.tasks.graph.models import (CategoricalEncoder, GraphMamba, GraphMambaNetwork,
                                       induced_token_edges)
from tests.tasks.graph.test_plan import _inputs, _molecules

TINY = {"dim": 8, "num_layers": 1, "walk_length": 2, "num_walks": 2, "d_state": 4}


def _path(n: int) -> torch.Tensor:
    a = torch.arange(n - 1)
    return torch.stack([torch.cat([a, a + 1]), torch.cat([a + 1, a])])


def test_induced_token_edges_match_brute_force():
    g = torch.Generator().manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 0, 2, 3, 3, 4], [1, 0, 2, 1, 0, 2, 3, 2, 4, 3]])
    tok = random_walk_tokens(ei, 5, 3, 2, generator=g)
    edges, eid = induced_token_edges(tok, ei, 5)
    got = {(int(tok.token[a]), int(tok.index[a]), int(tok.index[b]))
           for a, b in edges.t().tolist()}
    want = set()
    for k in range(tok.num_tokens):
        members = set(tok.index[tok.ptr[k]:tok.ptr[k + 1]].tolist())
        want |= {(k, u, v) for u, v in ei.t().tolist() if u in members and v in members}
    assert got == want
    assert (ei[0, eid] == tok.index[edges[0]]).all() and (ei[1, eid] == tok.index[edges[1]]).all()
    assert (tok.token[edges[0]] == tok.token[edges[1]]).all()


def test_node_model_accepts_tensors_or_data_and_is_repeatable_in_eval():
    torch.manual_seed(0)
    data = Data(x=torch.randn(6, 3), edge_index=_path(6))
    model = GraphMambaNetwork(in_channels=3, num_classes=4, mpnn="sage", **TINY).eval()
    a = model(data.x, data.edge_index)
    assert a.shape == (6, 4)
    assert torch.equal(a, model(data))  # seeded evaluation draws
    model.eval_samples = 3
    assert model(data).shape == (6, 4)


@pytest.mark.parametrize("mpnn", ["gcn", "sage"])
def test_sparse_adjacency_gives_the_edge_list_result_and_gradients(mpnn):
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 0, 4, 4, 5], [1, 0, 2, 1, 3, 2, 4, 0, 5, 4]])
    x = torch.randn(6, 3)
    dense = GraphMambaNetwork(in_channels=3, num_classes=2, mpnn=mpnn, tokens=False,
                              dropout=0.0, **TINY).eval()
    sparse = GraphMambaNetwork(in_channels=3, num_classes=2, mpnn=mpnn, tokens=False,
                               dropout=0.0, sparse_adjacency=True, **TINY).eval()
    sparse.load_state_dict(dense.state_dict())
    a, b = dense(x, ei), sparse(x, ei)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_jumping_knowledge_pools_every_depth():
    torch.manual_seed(0)
    graphs = [Data(x=torch.randn(n, 3), edge_index=_path(n)) for n in (4, 6)]
    batch = Batch.from_data_list(graphs)
    model = GraphMambaNetwork(in_channels=3, num_classes=2, task_level="graph", tokens=False,
                              mpnn="gcn", pool="sum", jumping_knowledge=True, dim=8,
                              num_layers=1).eval()
    from torch_geometric.nn import global_add_pool
    from geossm.tasks.graph.models import _Context
    h0 = model.input_encoder(batch.x)
    h1 = model.layers[0](h0, _Context(batch.edge_index, None, None, None, None))
    pooled = global_add_pool(model.norm(h0) + model.norm(h1), batch.batch)
    torch.testing.assert_close(model(batch), model.head(pooled))


def test_graph_level_with_categorical_features_edges_and_pe():
    torch.manual_seed(0)
    graphs = [Data(x=torch.randint(0, 3, (n, 2)), edge_index=_path(n),
                   edge_attr=torch.randint(0, 2, (2 * (n - 1), 1)), pe=torch.randn(n, 3))
              for n in (4, 1, 7)]
    batch = Batch.from_data_list(graphs)
    model = GraphMambaNetwork(node_vocab=[3, 3], edge_vocab=[2], num_classes=5,
                              task_level="graph", token_encoder="gine", mpnn="gatedgcn",
                              global_mamba=True, pe_dim=3, lap_dim=2, pool="sum", **TINY)
    out = model(batch)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.input_encoder.embeddings[0].weight.grad is not None



@pytest.mark.parametrize("pe_norm", [True, False])
def test_pe_norm_makes_the_output_blind_to_the_scale_of_pe(pe_norm):
    # Batch-normalised columns: pe and 10 * pe + 3 give the same training-mode output (the
    # encodings' scale no longer matters); without the norm the output follows the scale.
    torch.manual_seed(0)
    n = 12
    x, pe = torch.randn(n, 4), torch.rand(n, 5)
    model = GraphMambaNetwork(in_channels=4, num_classes=3, tokens=False, mpnn="gcn",
                              pe_dim=5, pe_norm=pe_norm, dropout=0.0, num_layers=1, dim=8)
    model.train()
    same = torch.allclose(model(x, _path(n), pe=pe), model(x, _path(n), pe=10 * pe + 3),
                          atol=1e-4)
    assert same == pe_norm

def test_graph_mamba_variant_orders_by_degree():
    torch.manual_seed(0)
    model = GraphMamba(in_channels=3, num_classes=2, dim=8, num_layers=1, d_state=4).eval()
    assert model.layers[0].tokens is None and model.layers[0].global_block is not None
    x, ei = torch.randn(5, 3), _path(5)
    assert torch.equal(model(x, ei), model(x, ei))


def test_index_order_feeds_the_global_branch_each_graph_in_node_id_order():
    torch.manual_seed(0)
    b = _molecules()
    model = GraphMambaNetwork(node_vocab=[5, 3], edge_vocab=[4], num_classes=2,
                              task_level="graph", tokens=False, global_mamba=True,
                              global_order="index", mpnn="gcn", mpnn_plus=True, gate=True,
                              expand=0.5, **{k: v for k, v in TINY.items() if "walk" not in k})
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    order, inverse, cu = plan.draws[0].order
    assert torch.equal(order, torch.arange(b.num_nodes)) and torch.equal(inverse, order)
    assert torch.equal(cu.long(), b.ptr)
    model.eval()
    assert torch.equal(model(**_inputs(b)), model(**_inputs(b), plan=plan))  # deterministic
    with pytest.raises(ValueError, match="global_order: expected one of"):
        GraphMambaNetwork(in_channels=3, global_mamba=True, global_order="random")


def test_dfs_order_draws_a_fresh_traversal_per_training_batch_and_the_id_one_to_evaluate():
    b = _molecules()
    model = GraphMambaNetwork(node_vocab=[5, 3], num_classes=2, task_level="graph",
                              tokens=False, global_mamba=True, global_order="dfs", mpnn="gcn",
                              **{k: v for k, v in TINY.items() if "walk" not in k})
    planner = model.planner()
    args = (b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    torch.manual_seed(0)
    train_orders = {tuple(planner(*args).draws[0].order[0].tolist()) for _ in range(3)}
    assert len(train_orders) > 1
    for order in train_orders:  # each draw keeps every graph's nodes inside its segment
        assert torch.equal(b.batch[list(order)], b.batch)
    evals = [planner(*args, training=False).draws[0].order[0] for _ in range(2)]
    assert torch.equal(evals[0], evals[1])
    from geossm.serialization import dfs_order
    assert torch.equal(evals[0], dfs_order(b.edge_index, b.num_nodes, b.batch).order)
    from geossm.tasks.graph.plan import GraphPlanner
    with pytest.raises(ValueError, match="global_order: expected 'degree', 'index' or 'dfs'"):
        GraphPlanner(degree_order=True, global_order="bfs")(*args)


def test_gcn_plus_branch_reads_the_embedded_edge_features():
    torch.manual_seed(0)
    b = _molecules()
    model = GraphMambaNetwork(node_vocab=[5, 3], edge_vocab=[4], num_classes=2,
                              task_level="graph", tokens=False, mpnn="gcn", mpnn_plus=True,
                              dropout=0.0, **TINY).eval()
    assert model.edge_encoder is not None and model.layers[0].local.edge_proj is not None
    other = _inputs(b) | {"edge_attr": (b.edge_attr + 1) % 4}
    assert not torch.allclose(model(**_inputs(b)), model(**other))


def test_gcne_branch_is_gnn_plus_peptides_layer_with_its_activation_and_head():
    from geossm.tasks.graph.baselines import EdgeSumConv
    torch.manual_seed(0)
    b = _molecules()
    model = GraphMambaNetwork(node_vocab=[5, 3], edge_vocab=[4], num_classes=2,
                              task_level="graph", tokens=False, mpnn="gcne", mpnn_plus=True,
                              mpnn_act="gelu", head_layers=4, head_input_dropout=True,
                              residual=False, dropout=0.0, **TINY).eval()
    local = model.layers[0].local
    assert isinstance(local.conv, EdgeSumConv) and isinstance(local.act, torch.nn.GELU)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Dropout"] + ["Linear", "GELU", "Dropout"] * 3 + ["Linear"]
    other = _inputs(b) | {"edge_attr": (b.edge_attr + 1) % 4}
    assert not torch.allclose(model(**_inputs(b)), model(**other))
    with pytest.raises(ValueError, match="'gcne' is a GNN\\+ layer and needs mpnn_plus"):
        GraphMambaNetwork(3, 2, mpnn="gcne")
    with pytest.raises(ValueError, match="act: expected one of"):
        GraphMambaNetwork(3, 2, mpnn="gcn", mpnn_plus=True, mpnn_act="swish")
    with pytest.raises(ValueError, match="head_layers: expected an int >= 1"):
        GraphMambaNetwork(3, 2, mpnn="gcn", head_layers=0)


def test_karate_club_trains():
    torch.manual_seed(0)
    data = KarateClub(split="train")[0]
    model = GraphMambaNetwork(in_channels=34, num_classes=4, dim=16, num_layers=1,
                              walk_length=2, num_walks=2, d_state=4, mpnn="gcn")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(data)[data.mask], data.y[data.mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"task_level": "edge"}, r"task_level: expected one of \('node', 'graph'\), got 'edge'"),
    ({"mpnn": "gat"}, "mpnn: expected one of"),
    ({"token_encoder": "gru"}, "token_encoder: expected one of"),
    ({"tokens": False}, "enable at least one branch"),
    ({"walk_length": 0}, "walk_length: expected an int >= 1, got 0"),
    ({"pe_dim": 2, "lap_dim": 3}, r"lap_dim: expected an int in \[0, pe_dim=2\], got 3"),
    ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\), got 1.0"),
    ({"node_vocab": [3]}, "give exactly one of in_channels"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphMambaNetwork(**{"in_channels": 3, **kwargs})


def test_bad_inputs_are_named():
    model = GraphMambaNetwork(in_channels=3, pe_dim=2, **TINY)
    with pytest.raises(ValueError, match=r"pe: expected shape \(4, 2\) .* got None"):
        model(torch.randn(4, 3), _path(4))
    with pytest.raises(ValueError, match=r"edge_index: expected shape \(2, E\), got \(3, 2\)"):
        model(torch.randn(4, 3), torch.zeros(3, 2, dtype=torch.long), pe=torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"x: expected integer features of shape \(N, 2\)"):
        CategoricalEncoder([2, 2], 4)(torch.zeros(3, 1, dtype=torch.long))


def test_a_positional_batch_is_refused_and_the_keyword_call_pools_per_graph():
    """PyG users write ``model(x, edge_index, batch)``; taken as ``edge_attr`` it would pool
    the whole batch into one row, so a third positional argument raises instead."""
    torch.manual_seed(0)
    graphs = [Data(x=torch.randn(n, 3), edge_index=_path(n)) for n in (4, 5, 3)]
    batch = Batch.from_data_list(graphs)
    for cls in (GraphMamba, GraphMambaNetwork):
        model = cls(in_channels=3, num_classes=2, task_level="graph", **TINY).eval()
        with pytest.raises(TypeError, match=r"edge_attr, batch and pe are keyword-only, got 1 "
                                            r"more positional argument"):
            model(batch.x, batch.edge_index, batch.batch)
        out = model(batch.x, batch.edge_index, batch=batch.batch)
        assert out.shape == (3, 2)
        torch.testing.assert_close(out, model(batch))


def test_sum_pooled_logits_do_not_grow_with_graph_size():
    # Sum pooling multiplies a graph's vector by its node count; PooledNorm (default for
    # pool="sum") brings it back to a unit scale, so a large graph does not saturate the head.
    torch.manual_seed(0)
    sizes = [10, 400]
    ei = torch.cat([torch.stack([torch.arange(n - 1), torch.arange(1, n)]) + sum(sizes[:i])
                    for i, n in enumerate(sizes)], 1)
    ei = torch.cat([ei, ei.flip(0)], 1)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    x = torch.randn(sum(sizes), 4)
    logits = {}
    for norm in (False, None):
        torch.manual_seed(0)
        model = GraphMambaNetwork(4, 6, task_level="graph", dim=16, num_layers=1, tokens=False,
                                  mpnn="gcn", pool="sum", pool_norm=norm, dropout=0.0)
        logits[norm] = model.train()(x, ei, batch=batch)  # batch statistics of the two graphs
    assert logits[False].abs().max() > 10  # the size shows in the raw sum
    assert logits[None].abs().max() < 3


def test_mpnn_plus_layer_is_the_gnn_plus_block_and_a_zero_gate_leaves_only_it():
    from geossm.tasks.graph.baselines import GNNPlusLayer
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    model = GraphMambaNetwork(3, 2, dim=8, num_layers=1, walk_length=2, num_walks=2,
                              mpnn="gcn", mpnn_plus=True, gate=True, d_state=4, mlp_ratio=0,
                              dropout=0.0).eval()
    layer = model.layers[0]
    assert isinstance(layer.local, GNNPlusLayer) and layer.mpnn is None
    h = torch.randn(5, 8)
    ctx = type("Ctx", (), {"edge_index": ei, "edge_attr": None, "adj_t": None, "order": None,
                           "tokens": random_walk_tokens(ei, 5, 2, 2), "token_edges": None,
                           "node_mask": None})()
    torch.testing.assert_close(layer(h, ctx), layer.local(h, ei))  # the gate starts at zero
    with torch.no_grad():
        layer.gate.fill_(1.0)
    assert not torch.allclose(layer(h, ctx), layer.local(h, ei))
    with pytest.raises(ValueError, match="mpnn_plus: needs an mpnn"):
        GraphMambaNetwork(3, 2, mpnn=None, mpnn_plus=True)


def test_branch_drop_zeroes_whole_nodes_of_the_sequence_branches_while_training():
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    model = GraphMambaNetwork(3, 2, dim=8, num_layers=1, walk_length=2, num_walks=2,
                              mpnn="gcn", mpnn_plus=True, branch_drop=0.5, d_state=4,
                              mlp_ratio=0, dropout=0.0)
    layer = model.layers[0]
    h = torch.randn(5, 8)
    ctx = type("Ctx", (), {"edge_index": ei, "edge_attr": None, "adj_t": None, "order": None,
                           "tokens": random_walk_tokens(ei, 5, 2, 2), "token_edges": None,
                           "node_mask": None})()
    local = layer.local(h, ei)
    branch = layer(h, ctx) - local  # (N, D): zero rows where a node's branches were dropped
    dropped = (branch.abs().sum(1) == 0)
    assert 0 < int(dropped.sum()) < 5
    with pytest.raises(ValueError, match="branch_drop: expected a probability"):
        GraphMambaNetwork(3, 2, mpnn="gcn", branch_drop=1.0)


def test_hop_adjacency_is_gcn_smoothing_or_the_neighbour_mean():
    from geossm.tasks.graph.models import hop_adjacency
    ei = _path(4)
    a = torch.zeros(4, 4)
    a[ei[1], ei[0]] = 1.0  # rows = targets
    a_loop = a + torch.eye(4)
    d = a_loop.sum(1)
    gcn = a_loop / torch.sqrt(d[:, None] * d[None, :])
    torch.testing.assert_close(hop_adjacency(ei, 4, "gcn").to_dense(), gcn)
    torch.testing.assert_close(hop_adjacency(ei, 4, "mean").to_dense(), a / a.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="hop_adjacency: expected one of"):
        hop_adjacency(ei, 4, "sym")


def test_hop_tokens_pack_every_node_widest_hop_first_and_itself_last():
    from geossm.tasks.graph.models import hop_adjacency, hop_tokens
    ei, x = _path(5), torch.randn(5, 3)
    p = hop_adjacency(ei, 5, "mean")
    t = hop_tokens(x, p, 2).view(5, 3, 3)  # (node, hop K..0, D)
    torch.testing.assert_close(t[:, 2], x)
    torch.testing.assert_close(t[:, 1], p.to_dense() @ x)
    torch.testing.assert_close(t[:, 0], p.to_dense() @ p.to_dense() @ x)


def test_hop_token_branch_sees_exactly_walk_length_hops_and_is_deterministic():
    torch.manual_seed(0)
    n, ei = 8, _path(8)
    model = GraphMambaNetwork(3, 2, dim=8, num_layers=1, walk_length=3, token_source="hops",
                              d_state=4, mlp_ratio=0, dropout=0.0).eval()
    x = torch.randn(n, 3)
    out = model(x, ei)
    torch.testing.assert_close(model(x, ei), out)  # no sampled walks: the same every call
    near, far = x.clone(), x.clone()
    near[3] += 1.0  # 3 hops from node 0
    far[4] += 1.0   # 4 hops from node 0
    assert not torch.allclose(model(near, ei)[0], out[0])
    torch.testing.assert_close(model(far, ei)[0], out[0])
    assert model.train()(x, ei).shape == (n, 2)


def test_hop_token_arguments_are_checked():
    with pytest.raises(ValueError, match="token_source: expected one of"):
        GraphMambaNetwork(3, 2, token_source="bfs")
    with pytest.raises(ValueError, match="hop_adjacency: expected one of"):
        GraphMambaNetwork(3, 2, token_source="hops", hop_adjacency="sym")
    with pytest.raises(ValueError, match="token_encoder: hop tokens"):
        GraphMambaNetwork(3, 2, token_source="hops", token_encoder="gine", edge_dim=2)


def test_attention_readout_is_a_convex_mix_of_the_raw_hops_starting_at_their_mean():
    from geossm.tasks.graph.models import _TokenBranch, hop_adjacency, hop_tokens
    torch.manual_seed(0)
    n, hops = 6, 3
    branch = _TokenBranch(16, hops, "mean", None, "attention", {"d_state": 4, "mixer": "mamba"},
                          source="hops")
    assert branch.length_embedding.weight.shape == (hops + 1, 8)  # the narrow scorer
    p = hop_adjacency(_path(n), n, "gcn")
    x = torch.randn(n, 16)
    ctx = type("Ctx", (), {"hop_adj": p})()
    raw = hop_tokens(x, p, hops).view(n, hops + 1, 16)
    torch.testing.assert_close(branch(x, ctx), raw.mean(1))  # zero-initialised scores
    with torch.no_grad():
        branch.score.weight.normal_()
    y = branch(x, ctx)
    lo, hi = raw.min(1).values, raw.max(1).values
    assert not torch.allclose(y, raw.mean(1))
    assert bool(((y >= lo - 1e-5) & (y <= hi + 1e-5)).all())  # a convex combination per node
    with pytest.raises(ValueError, match="readout: 'attention' weights hop tokens"):
        GraphMambaNetwork(3, 2, readout="attention")


def test_signed_readout_weights_the_raw_hops_by_tanh_and_can_subtract_one():
    from geossm.tasks.graph.models import _TokenBranch, hop_adjacency, hop_tokens
    torch.manual_seed(0)
    n, hops = 6, 2
    branch = _TokenBranch(16, hops, "mean", None, "signed", {"d_state": 4, "mixer": "mamba"},
                          source="hops")
    p = hop_adjacency(_path(n), n, "mean")
    x = torch.randn(n, 16)
    ctx = type("Ctx", (), {"hop_adj": p})()
    raw = hop_tokens(x, p, hops).view(n, hops + 1, 16)
    # zero-initialised score weights: every hop gets tanh(bias), the scaled mean
    w0 = torch.tanh(branch.score.bias)
    torch.testing.assert_close(branch(x, ctx), w0 * raw.sum(1))
    with torch.no_grad():
        branch.score.weight.normal_(std=3.0)
    captured = {}
    branch.score.register_forward_hook(lambda m, a, out: captured.setdefault("s", out))
    y = branch(x, ctx)
    weight = torch.tanh(captured["s"].squeeze(2))                      # (N, hops + 1)
    assert bool((weight < 0).any()) and bool((weight > 0).any())      # hops subtracted too
    torch.testing.assert_close(y, torch.einsum("nl,nld->nd", weight, raw))
    with pytest.raises(ValueError, match="readout: 'signed' weights hop tokens"):
        GraphMambaNetwork(3, 2, readout="signed")
    with pytest.raises(ValueError, match="'attention' or 'signed'"):
        GraphMambaNetwork(3, 2, readout="softmax")


def test_without_pre_norm_the_input_weights_scale_reaches_the_logits():
    # A norm right after the input projection makes the model invariant to the projection's
    # scale, so weight decay on it cannot regularise; pre_norm=False keeps the scale.
    torch.manual_seed(0)
    ei, x = _path(6), torch.randn(6, 3)
    for pre_norm in (True, False):
        model = GraphMambaNetwork(3, 2, dim=8, num_layers=1, walk_length=2, token_source="hops",
                                  residual=False, d_state=4, mlp_ratio=0, dropout=0.0,
                                  pre_norm=pre_norm).eval()
        before = model(x, ei)
        with torch.no_grad():
            model.input_encoder.weight.mul_(10.0)
            model.input_encoder.bias.mul_(10.0)
        after = model(x, ei)
        assert torch.allclose(before, after, atol=1e-3) == pre_norm


def test_linear_residual_reaches_the_gnn_plus_layer_and_needs_mpnn_plus():
    model = GraphMambaNetwork(3, 2, dim=8, num_layers=1, walk_length=2, num_walks=2,
                              mpnn="gcn", mpnn_plus=True, residual="linear", d_state=4)
    layer = model.layers[0].local
    assert layer.ego is not None and not layer.residual
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    assert model(torch.randn(3, 3), ei).shape == (3, 2)
    with pytest.raises(ValueError, match="residual: 'linear' is the GNN\\+ layer's ego term"):
        GraphMambaNetwork(3, 2, mpnn="gcn", residual="linear")


def test_mpnn_raw_first_gnn_plus_block_reads_the_raw_features_and_pe():
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    x, pe = torch.randn(4, 5), torch.randn(4, 1)
    model = GraphMambaNetwork(5, 3, dim=8, num_layers=2, walk_length=2, token_source="hops",
                              mpnn="gcn", mpnn_plus=True, residual="linear", gate=True,
                              mpnn_raw=True, pe_dim=1, d_state=4, mlp_ratio=0,
                              dropout=0.0).eval()
    first, second = model.layers[0].local, model.layers[1].local
    assert first.conv.in_channels == 6 and first.ego.in_features == 6  # [x, pe]
    assert second.conv.in_channels == 8
    # The gates start at zero: the model is the GCN+ stack on [x, pe], then RMSNorm and head.
    h = first(torch.cat([x, pe], 1), ei)
    want = model.head(model.norm(second(h, ei)))
    torch.testing.assert_close(model(x, ei, pe=pe), want)
    with pytest.raises(ValueError, match="mpnn_raw: the first GNN\\+ block reads raw"):
        GraphMambaNetwork(5, 3, mpnn="gcn", mpnn_raw=True)


def _peptides_like(**kwargs) -> GraphMambaNetwork:
    torch.manual_seed(0)
    return GraphMambaNetwork(node_vocab=[5, 3], edge_vocab=[4], num_classes=3,
                             task_level="graph", dim=8, num_layers=2, walk_length=3,
                             num_walks=2, token_encoder="gine", mpnn="gatedgcn",
                             global_mamba=True, pe_dim=2, d_state=4, dropout=0.0, **kwargs)


def _molecule_batch() -> dict:
    """Three small molecule-like graphs (categorical atoms and bonds, a 2-d encoding that
    takes a gradient)."""
    inputs = _inputs(_molecules(count=3, seed=1))
    return dict(inputs, pe=inputs["pe"].requires_grad_())


def _forward_backward(model, inputs, seed: int = 3):
    torch.manual_seed(seed)  # the same walks and order noise in both models
    out = model(**inputs)
    pe_grad, = torch.autograd.grad(out.square().sum(), inputs["pe"])
    return out.detach(), pe_grad


def _outputs_and_all_grads(model, inputs, mode: str, seed: int = 3):
    """``(out, pe_grad, {name: param.grad})`` of ``model`` in ``mode`` ("train" / "eval") on
    ``inputs``, one forward with the loss ``out.square().sum()``."""
    getattr(model, mode)()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs)
    loss = out.square().sum()
    pe_grad, = torch.autograd.grad(loss, inputs["pe"], retain_graph=True)
    loss.backward()
    return out.detach(), pe_grad, {n: p.grad for n, p in model.named_parameters()}


def test_packed_bimamba_keeps_the_weights_and_state_dict_and_only_moves_float_rounding():
    plain, packed = _peptides_like(), _peptides_like(packed_bimamba=True)
    assert sum(p.numel() for p in plain.parameters()) == \
        sum(p.numel() for p in packed.parameters())
    assert len(list(packed.parameters())) < len(list(plain.parameters()))  # pairs stacked
    state, packed_state = plain.state_dict(), packed.state_dict()
    assert list(state) == list(packed_state)  # the two-module keys, in the same order
    for key, value in state.items():
        assert torch.equal(value, packed_state[key]), key  # same initial weights
    inputs = _molecule_batch()
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(packed, mode)()
        (out, grad), (out_p, grad_p) = (_forward_backward(m, inputs) for m in (plain, packed))
        assert not torch.equal(out, out_p) or not torch.equal(grad, grad_p)  # other kernels
        torch.testing.assert_close(out_p, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_p, grad, rtol=1e-4, atol=1e-6)
    # a checkpoint of either layout loads into the other
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
    packed.load_state_dict(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, packed.state_dict()[key]), key


def test_packed_bimamba_falls_back_to_the_two_calls_on_the_torch_backend():
    plain = _peptides_like(backend="torch")
    packed = _peptides_like(backend="torch", packed_bimamba=True)
    inputs = _molecule_batch()
    (out, grad), (out_p, grad_p) = (_forward_backward(m, inputs) for m in (plain, packed))
    assert torch.equal(out, out_p) and torch.equal(grad, grad_p)  # the same ops, the same bits


def test_packed_recompute_off_keeps_the_scan_inputs_with_the_same_bits():
    recomputed = _peptides_like(packed_bimamba=True)
    kept = _peptides_like(packed_bimamba=True, packed_recompute=False)
    assert all(not m.packed_recompute for m in kept.modules() if hasattr(m, "packed_recompute"))
    inputs = _molecule_batch()
    for mode in ("train", "eval"):
        (out, pe_grad, params), (out_k, pe_grad_k, params_k) = (
            _outputs_and_all_grads(model, inputs, mode) for model in (recomputed, kept))
        assert torch.equal(out, out_k) and torch.equal(pe_grad, pe_grad_k)
        assert params.keys() == params_k.keys()
        for name, grad in params.items():
            assert grad is not None and torch.equal(grad, params_k[name]), name


def test_categorical_encoder_is_the_column_by_column_sum_bit_for_bit():
    torch.manual_seed(0)
    vocab = [119, 5, 12, 2]
    encoder = CategoricalEncoder(vocab, 16)
    x = torch.stack([torch.randint(0, v, (300,)) for v in vocab], 1)
    out = encoder(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    got = [e.weight.grad for e in encoder.embeddings]
    tables = [e.weight.detach().clone().requires_grad_() for e in encoder.embeddings]
    want = F.embedding(x[:, 0], tables[0])
    for j in range(1, len(vocab)):
        want = want + F.embedding(x[:, j], tables[j])
    want.backward(grad)
    assert torch.equal(out, want)
    for g, table in zip(got, tables):
        assert torch.equal(g, table.grad)
    single = CategoricalEncoder([7], 4)
    assert torch.equal(single(x[:, 3:]), single.embeddings[0](x[:, 3]))


@pytest.mark.parametrize("value", [-1, 5])
def test_categorical_encoder_refuses_a_value_outside_its_columns_vocabulary(value):
    x = torch.tensor([[0, 1, 2], [3, value, 0]])
    with pytest.raises(RuntimeError, match=r"column j must lie in \[0, vocab\[j\]\)"):
        CategoricalEncoder([119, 5, 3], 4)(x)  # 5 (-1): the next (previous) column's row


def test_fused_convs_keep_the_state_dict_and_only_move_float_rounding():
    plain, fused = _peptides_like(), _peptides_like(fused_convs=True)
    flagged = [m for m in fused.modules() if type(m).__name__ in ("_MPNN", "_TokenBranch")]
    assert len(flagged) == 4 and all(m.fused for m in flagged)  # two layers, two convs each
    state, fused_state = plain.state_dict(), fused.state_dict()
    assert list(state) == list(fused_state)
    for key, value in state.items():
        assert torch.equal(value, fused_state[key]), key
    inputs = _molecule_batch()
    for mode in ("train", "eval"):
        (out, pe_grad, grads), (out_f, pe_grad_f, grads_f) = (
            _outputs_and_all_grads(model, inputs, mode) for model in (plain, fused))
        assert not torch.equal(out, out_f)  # another summation order
        torch.testing.assert_close(out_f, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pe_grad_f, pe_grad, rtol=1e-4, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grads_f[name], grad, rtol=1e-4, atol=1e-6, msg=name)
