import pickle

import pytest
import torch
from torch_geometric.data import Batch, Data

from geossm.tasks.graph.models import GraphMamba, GraphMambaNetwork
from geossm.tasks.graph.plan import GraphPlan, GraphPlanner
from tests.benchmarks.conftest import load_benchmark

#: The Peptides-func GMN's branches, tiny: GINE tokens, degree-order BiMamba, GatedGCN, PE.
PEPTIDES_LIKE = {"node_vocab": [5, 3], "edge_vocab": [4], "num_classes": 3,
                 "task_level": "graph", "dim": 8, "num_layers": 2, "walk_length": 3,
                 "num_walks": 2, "token_encoder": "gine", "mpnn": "gatedgcn",
                 "global_mamba": True, "pe_dim": 2, "d_state": 4, "dropout": 0.0}
#: The Tolokers GMN's branches: hop tokens and a sparse GCN+ branch (no random draws).
HOPS_LIKE = {"in_channels": 3, "num_classes": 2, "dim": 8, "num_layers": 1, "walk_length": 2,
             "token_source": "hops", "hop_adjacency": "mean", "mpnn": "gcn",
             "mpnn_plus": True, "sparse_adjacency": True, "d_state": 4, "dropout": 0.0}


def _molecules(count: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(count):
        n = 5 + i
        a = torch.arange(n - 1)
        chords = torch.randint(0, n, (2, 2), generator=g)
        ei = torch.cat([torch.stack([a, a + 1]), chords], 1)
        ei = torch.cat([ei, ei.flip(0)], 1)
        graphs.append(Data(x=torch.stack([torch.randint(0, 5, (n,), generator=g),
                                          torch.randint(0, 3, (n,), generator=g)], 1),
                           edge_index=ei, edge_attr=torch.randint(0, 4, (ei.shape[1], 1),
                                                                  generator=g),
                           pe=torch.randn(n, 2, generator=g), num_nodes=n))
    return Batch.from_data_list(graphs)


def _inputs(b: Batch) -> dict:
    return {"x": b.x, "edge_index": b.edge_index, "edge_attr": b.edge_attr, "batch": b.batch,
            "pe": b.pe}


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cls", [GraphMambaNetwork, GraphMamba])
def test_planned_forward_is_bitwise_the_in_model_one_given_the_same_random_numbers(cls, packed):
    torch.manual_seed(0)
    model = cls(**PEPTIDES_LIKE, packed_bimamba=packed)
    b = _molecules()
    torch.manual_seed(7)
    inside = model(**_inputs(b))  # draws the walks and the order inside
    inside.square().sum().backward()
    grads_inside = _grads(model)
    model.zero_grad()
    torch.manual_seed(7)  # the loader draws the same numbers ahead of the step
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs, training=True)
    # the packed BiMamba path's gathers come with the plan
    assert (plan.draws[0].order_indices is not None) == packed
    assert (plan.draws[0].token_indices is not None) == (packed and cls is GraphMambaNetwork)
    planned = model(**_inputs(b), plan=pickle.loads(pickle.dumps(plan)))  # via a worker queue
    planned.square().sum().backward()
    assert torch.equal(inside, planned)
    for a, c in zip(grads_inside, _grads(model), strict=True):
        assert torch.equal(a, c)


def test_evaluation_plan_holds_the_eval_seed_draws_and_averages_them():
    torch.manual_seed(0)
    model = GraphMambaNetwork(**{**PEPTIDES_LIKE, "eval_samples": 3}).eval()
    b = _molecules()
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs, training=False)
    assert len(plan.draws) == 3
    assert not torch.equal(plan.draws[0].tokens.index, plan.draws[1].tokens.index)
    torch.manual_seed(1)  # the global RNG plays no part at evaluation
    assert torch.equal(model(**_inputs(b)), model(**_inputs(b), plan=plan))
    # A training plan handed to a model in eval mode gets the evaluation draws instead.
    train_plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    assert torch.equal(model(**_inputs(b)), model(**_inputs(b), plan=train_plan))


def test_deterministic_plan_carries_the_adjacencies_and_gives_the_same_node_logits():
    torch.manual_seed(0)
    model = GraphMambaNetwork(**HOPS_LIKE)
    x = torch.randn(7, 3)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 0, 6], [1, 0, 2, 1, 3, 2, 4, 3, 6, 5, 6, 0]])
    plan = model.planner()(ei, 7)
    assert plan.draws == () and plan.adjacency is not None and plan.hop_adjacency is not None
    for mode in (True, False):
        model.train(mode)
        assert torch.equal(model(x, ei), model(x, ei, plan=plan))


def test_a_plan_of_another_model_or_batch_is_refused():
    model = GraphMambaNetwork(**PEPTIDES_LIKE)
    b = _molecules()
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    other = GraphMambaNetwork(**{**PEPTIDES_LIKE, "walk_length": 2})
    with pytest.raises(ValueError, match="plan: built for GraphPlanner"):
        other(**_inputs(b), plan=plan)
    smaller = _molecules(count=4)
    with pytest.raises(ValueError, match="plan: built for 35 nodes"):
        model(**_inputs(smaller), plan=plan)
    with pytest.raises(TypeError, match="plan: expected a GraphPlan"):
        model(**_inputs(b), plan={"tokens": None})


def test_plan_moves_and_pins_every_tensor_and_rides_on_a_pyg_batch():
    model = GraphMambaNetwork(**PEPTIDES_LIKE)
    b = _molecules()
    b.plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    moved = b.to("cpu", non_blocking=True)
    assert isinstance(moved.plan, GraphPlan) and moved.plan.num_graphs == 5
    doubled = b.plan.apply(lambda t: t * 2)
    assert torch.equal(doubled.draws[0].tokens.index, b.plan.draws[0].tokens.index * 2)
    assert torch.equal(doubled.draws[0].order[0], b.plan.draws[0].order[0] * 2)
    torch.manual_seed(3)
    planned = model(b)  # a Batch brings its plan
    assert planned.shape == (5, 3)


def _step_syncs(model, b: Batch, plan) -> dict:
    step_ops = load_benchmark("step_ops")
    counter = step_ops.OpCounter()
    with counter:
        model(**_inputs(b), plan=plan).float().square().mean().backward()
    return dict(counter.syncs)


@pytest.mark.parametrize("packed", [False, True])
def test_planned_training_step_has_no_host_sync(packed):
    torch.manual_seed(0)
    model = GraphMambaNetwork(**{**PEPTIDES_LIKE, "lap_dim": 1}, packed_bimamba=packed)
    b = _molecules()
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    assert _step_syncs(model, b, plan) == {}
    # the in-model path (the user's call without a plan) still reads sizes on the host
    assert sum(_step_syncs(model, b, None).values()) >= 10


def test_planner_is_picklable_and_compared_by_value():
    planner = GraphMambaNetwork(**PEPTIDES_LIKE).planner()
    assert pickle.loads(pickle.dumps(planner)) == planner
    assert isinstance(planner, GraphPlanner) and planner.token_edges and planner.degree_order
    hops = GraphMambaNetwork(**HOPS_LIKE).planner()
    assert not hops.random and hops.hop_adjacency == "mean" and hops.sparse_adjacency


@pytest.mark.parametrize("kwargs", [
    {"conv": "gatedgcn", "node_vocab": [5, 3], "edge_vocab": [4], "task_level": "graph",
     "pe_dim": 2},
    {"conv": "gcn", "in_channels": 2, "task_level": "node", "sparse_adjacency": True}])
def test_gnn_plus_baseline_takes_the_graph_count_and_adjacency_from_its_plan(kwargs):
    from geossm.tasks.graph.baselines import GNNPlus
    torch.manual_seed(0)
    model = GNNPlus(num_classes=3, dim=8, num_layers=2, dropout=0.0, **kwargs)
    b = _molecules()
    inputs = _inputs(b) if "node_vocab" in kwargs else \
        {"x": torch.randn(b.num_nodes, 2), "edge_index": b.edge_index}
    plan = model.planner()(b.edge_index, b.num_nodes, b.batch, b.num_graphs)
    assert (plan.adjacency is not None) == bool(kwargs.get("sparse_adjacency"))
    planned = model(**inputs, plan=plan)
    assert torch.equal(model(**inputs), planned)
    planned.square().sum().backward()
    if "node_vocab" in kwargs:  # the graph readout no longer reads the graph count
        assert _step_syncs(model, b, plan) == {}
