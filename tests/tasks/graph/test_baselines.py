import pytest
import torch

from geossm.registry import MODELS
from geossm.tasks.graph.baselines import EdgeSumConv, GCNPlus, GINPlus, GNNPlus, GNNPlusLayer


def _two_graphs():
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8],
                       [1, 0, 2, 1, 3, 2, 4, 3, 6, 5, 7, 6, 8, 7]])
    return torch.randn(9, 3), ei, torch.tensor([0] * 5 + [1] * 4)


@pytest.mark.parametrize("name, conv", [("GCNPlus", {}), ("GINPlus", {}), ("GatedGCNPlus", {}),
                                        ("SAGEPlus", {}), ("GNNPlus", {"conv": "gcne"})])
def test_registered_baselines_run_node_and_graph_level_and_train(name, conv):
    torch.manual_seed(0)
    x, ei, batch = _two_graphs()
    node = MODELS.build({"name": name, "in_channels": 3, "num_classes": 4, "dim": 8,
                         "num_layers": 2, "mlp_ratio": 2, **conv})
    assert node(x, ei).shape == (9, 4)
    graph = MODELS.build({"name": name, "in_channels": 3, "num_classes": 2, "dim": 8,
                          "task_level": "graph", "pool": "sum", "edge_dim": 2, **conv})
    out = graph(x, ei, edge_attr=torch.randn(14, 2), batch=batch)
    assert out.shape == (2, 2)
    out.sum().backward()
    assert all(p.grad is not None for p in graph.layers[0].conv.parameters())


def test_gcn_edge_term_is_the_normalised_sum_over_incoming_edges():
    torch.manual_seed(0)
    _, ei, _ = _two_graphs()
    layer = GNNPlusLayer("gcn", 3, 4, edge_dim=2)
    assert isinstance(GNNPlusLayer("gcn", 3, 4, edge_dim=4).edge_proj, torch.nn.Identity)
    e = torch.randn(14, 2)
    deg = torch.bincount(ei[1], minlength=9).float() + 1  # with the self-loop
    want = torch.zeros(9, 4)
    for k in range(14):
        u, v = ei[:, k].tolist()
        want[v] += layer.edge_proj(e[k]) / (deg[u] * deg[v]).sqrt()
    torch.testing.assert_close(layer._edge_term(e, ei, 9), want)


def test_first_layer_reads_raw_features_without_pre_linear_and_sparse_matches_edges():
    torch.manual_seed(0)
    x, ei, _ = _two_graphs()
    model = GCNPlus(3, 2, dim=8, num_layers=2, pre_linear=False, norm=None, dropout=0.0)
    assert model.layers[0].conv.in_channels == 3 and not model.layers[0].residual
    sparse = GCNPlus(3, 2, dim=8, num_layers=2, pre_linear=False, norm=None, dropout=0.0,
                     sparse_adjacency=True)
    sparse.load_state_dict(model.state_dict())
    torch.testing.assert_close(sparse(x, ei), model(x, ei), rtol=1e-5, atol=1e-5)


def test_pe_is_normalised_and_concatenated_and_categorical_inputs_embed():
    x, ei, batch = _two_graphs()
    model = GINPlus(3, 2, task_level="graph", dim=8, pe_dim=4)
    assert model.layers[0].conv.nn[0].in_features == 8  # pre_linear of the 3 + 4 columns
    assert model(x, ei, batch=batch, pe=torch.randn(9, 4)).shape == (2, 2)
    with pytest.raises(ValueError, match="pe: expected shape"):
        model(x, ei, batch=batch)
    atoms = GNNPlus(node_vocab=[5, 3], num_classes=2, conv="gatedgcn", task_level="graph",
                    dim=8, edge_vocab=[4], pe_dim=2)
    out = atoms(torch.randint(0, 3, (9, 2)), ei, edge_attr=torch.randint(0, 4, (14, 1)),
                batch=batch, pe=torch.randn(9, 2))
    assert out.shape == (2, 2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="conv: expected one of"):
        GNNPlus(3, 2, conv="gat")
    with pytest.raises(ValueError, match="norm: expected one of"):
        GNNPlus(3, 2, norm="group")
    with pytest.raises(ValueError, match="exactly one of in_channels"):
        GNNPlus(None, 2)
    with pytest.raises(ValueError, match="dropout: expected a probability"):
        GNNPlus(3, 2, dropout=1.0)
    x, ei, batch = _two_graphs()
    with pytest.raises(TypeError, match="keyword-only"):
        GNNPlus(3, 2)(x, ei, batch)
    with pytest.raises(ValueError, match="edge_attr: the gine layer"):
        GINPlus(3, 2, edge_dim=2)(x, ei)


def test_head_layers_zero_is_kipf_and_wellings_gcn():
    x, ei, _ = _two_graphs()
    model = GCNPlus(3, 4, dim=8, num_layers=2, head_layers=0, pre_linear=False, norm=None)
    assert model.layers[1].conv.out_channels == 4 and model.layers[1].final
    assert isinstance(model.head, torch.nn.Identity) and model(x, ei).shape == (9, 4)
    with pytest.raises(ValueError, match="head_layers: 0"):
        GCNPlus(3, 4, task_level="graph", head_layers=0)


def test_linear_residual_adds_the_ego_term_before_the_norm_and_replaces_h():
    torch.manual_seed(0)
    x, ei, _ = _two_graphs()
    layer = GNNPlusLayer("gcn", 3, 4, norm=None, residual="linear").eval()
    assert not layer.residual and layer.ego.in_features == 3  # widths may differ
    want = torch.relu(layer.conv(x, ei) + layer.ego(x))
    torch.testing.assert_close(layer(x, ei), want)
    model = GCNPlus(3, 2, dim=8, num_layers=2, pre_linear=False, residual="linear")
    assert all(layer.ego is not None for layer in model.layers)
    assert model(x, ei).shape == (9, 2)
    assert GNNPlusLayer("gcn", 8, 8).ego is None
    with pytest.raises(ValueError, match="residual: expected True, False or 'linear'"):
        GNNPlusLayer("gcn", 8, 8, residual="identity")


def test_gcne_sums_rectified_messages_without_self_loop_or_normalisation():
    torch.manual_seed(0)
    x, ei, _ = _two_graphs()
    conv = EdgeSumConv(3, 4, edge_dim=2)
    with torch.no_grad():
        conv.bias.normal_()
    e = torch.randn(14, 2)
    want = conv.bias.detach().repeat(9, 1)
    for k in range(14):
        u, v = ei[:, k].tolist()
        want[v] += torch.relu(conv.lin(x[u]) + conv.edge_proj(e[k]))
    torch.testing.assert_close(conv(x, ei, e), want)
    isolated = torch.cat([x, torch.randn(1, 3)])  # node 9: no incoming edge, only the bias
    torch.testing.assert_close(conv(isolated, ei, e)[9], conv.bias)
    assert isinstance(EdgeSumConv(3, 4, edge_dim=4).edge_proj, torch.nn.Identity)
    assert EdgeSumConv(3, 4).edge_proj is None
    assert EdgeSumConv(3, 4)(x, ei, None).shape == (9, 4)


def test_gnnplus_peptides_recipe_gcne_gelu_and_dropout_before_every_head_linear():
    torch.manual_seed(0)
    x, ei, batch = _two_graphs()
    model = GNNPlus(node_vocab=[5, 3], num_classes=2, conv="gcne", task_level="graph", dim=8,
                    edge_vocab=[4], residual=False, act="gelu", head_layers=4,
                    head_input_dropout=True, pe_dim=2)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Dropout"] + ["Linear", "GELU", "Dropout"] * 3 + ["Linear"]
    assert isinstance(model.layers[0].act, torch.nn.GELU) and not model.layers[0].residual
    atoms, bonds = torch.randint(0, 3, (9, 2)), torch.randint(0, 4, (14, 1))
    model.eval()
    out = model(atoms, ei, edge_attr=bonds, batch=batch, pe=torch.randn(9, 2))
    assert out.shape == (2, 2)
    other = model(atoms, ei, edge_attr=(bonds + 1) % 4, batch=batch, pe=torch.randn(9, 2))
    assert not torch.allclose(out, other)  # the bonds reach the messages
    with pytest.raises(ValueError, match="act: expected one of"):
        GNNPlus(3, 2, act="tanh")
