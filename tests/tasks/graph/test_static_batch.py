from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch_geometric.data import Batch, Data

from geossm.config import load_config
from geossm.engine.task import move_to
from geossm.tasks.graph.baselines import GNNPlus
from geossm.tasks.graph.static_batch import StaticBatch, is_static_batch, masked_batch_norm
from geossm.tasks.graph.task import GraphClassificationTask, MultiLabelGraphTask
from tests.cuda_graph_standin import RerunGraphedStep
from tests.shared_data import shared_path

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "graph"


def _molecule(n: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    chain = torch.arange(n - 1)
    edge_index = torch.cat([torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], 1)
    y = torch.randint(0, 2, (1, 3), generator=g).float()
    y[0, 2] = float("nan") if seed == 1 else y[0, 2]  # one unlabelled entry
    return Data(x=torch.randint(0, 4, (n, 2), generator=g), edge_index=edge_index,
                edge_attr=torch.randint(0, 3, (edge_index.shape[1], 1), generator=g),
                pe=torch.randn(n, 4, generator=g), y=y, num_nodes=n)


def _batch() -> Batch:
    return Batch.from_data_list([_molecule(5, 0), _molecule(7, 1), _molecule(4, 2)])


def test_pad_fills_nodes_edges_and_graphs_with_inert_padding():
    b = _batch()
    out = StaticBatch(nodes=24, edges=40, graphs=4).pad(b)
    assert is_static_batch(out) and out["num_graphs"] == 4 and out["graphs"] == 3
    assert out["x"].shape == (24, 2) and out["pe"].shape == (24, 4)
    assert out["edge_index"].shape == (2, 40) and out["edge_attr"].shape == (40, 1)
    assert torch.equal(out["x"][:16], b.x) and not out["x"][16:].any()
    assert torch.equal(out["node_mask"], (torch.arange(24) < 16).float())
    assert torch.equal(out["batch"][:16], b.batch) and (out["batch"][16:] == 4).all()
    pad_edges = out["edge_index"][:, b.edge_index.shape[1]:]
    # self-loops of the padding nodes 16..23, round-robin: no row takes every padding edge
    # (one row serialised every scatter-add: 10 ms of GPU per Peptides step instead of 2)
    assert torch.equal(pad_edges[0], pad_edges[1]) and (pad_edges[0] >= 16).all()
    assert torch.bincount(pad_edges[0]).max() == -(-pad_edges.shape[1] // 8)
    assert torch.equal(out["y"][:3].isnan(), b.y.isnan()) and out["y"][3].isnan().all()


def test_batches_that_do_not_fit_stay_unpadded_with_one_warning():
    static = StaticBatch(nodes=16, edges=40, graphs=4)  # 16 real nodes leave no padding node
    with pytest.warns(UserWarning, match="run unpadded"):
        assert isinstance(static.pad(_batch()), Batch)
        assert isinstance(StaticBatch(nodes=24, edges=10, graphs=4).pad(_batch()), Batch)
    assert isinstance(static.pad(_batch()), Batch)  # no second warning from one instance
    assert static.oversized == 2
    with pytest.raises(ValueError, match="expected {nodes: N, edges: E}"):
        StaticBatch.from_config({"nodes": 8}, 4)
    with pytest.raises(ValueError, match="nodes: expected an int >= 1"):
        StaticBatch(0, 8, 4)
    assert StaticBatch.from_config(None, 4) is None


def _sampler_maximum(nodes, edges, graphs: int, seed: int, epochs: range) -> tuple[int, int]:
    """The largest node and edge sums of a batch that the trainer's sampler yields."""
    from torch.utils.data import DistributedSampler
    sampler = DistributedSampler(range(len(nodes)), num_replicas=1, rank=0, shuffle=True,
                                 seed=seed)
    most = [0, 0]
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for batch in torch.tensor(list(sampler)).split(graphs):
            most = [max(most[0], int(nodes[batch].sum())), max(most[1], int(edges[batch].sum()))]
    return most[0], most[1]


@pytest.mark.parametrize("num_graphs", [41, 44])  # a last, smaller batch / none
def test_auto_layout_is_the_largest_batch_of_the_samplers_epochs(monkeypatch, num_graphs):
    """``fitted`` replays the trainer's sampler (``DistributedSampler``, one replica, seeded
    with seed + epoch for epochs 1..E): with rounding off, its layout is exactly one node more
    than the largest batch that sampler yields in those epochs, and its edge count the
    largest edge sum (per seed, one epoch; then five epochs)."""
    from geossm.tasks.graph import static_batch
    monkeypatch.setattr(static_batch, "ROUND", 1)
    g = torch.Generator().manual_seed(num_graphs)
    nodes = torch.randint(1, 60, (num_graphs,), generator=g)
    edges = 2 * nodes + torch.randint(0, 9, (num_graphs,), generator=g)
    for seed, epochs in [(0, 1), (1, 1), (2, 1), (3, 1), (3, 5)]:
        fitted = StaticBatch.fitted(nodes.tolist(), edges.tolist(), 4, seed, epochs)
        most = _sampler_maximum(nodes, edges, 4, seed, range(1, epochs + 1))
        assert (fitted.nodes - 1, fitted.edges, fitted.graphs) == (*most, 4), (seed, epochs)
    monkeypatch.setattr(static_batch, "ROUND", 64)
    rounded = StaticBatch.fitted(nodes.tolist(), edges.tolist(), 4, 3, 5)
    assert rounded.nodes % 64 == 0 and fitted.nodes <= rounded.nodes < fitted.nodes + 64
    with pytest.raises(ValueError, match="counts of every training graph"):
        StaticBatch.fitted([], [], graphs=4, seed=0, epochs=1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batch_norm_is_batch_norm_of_the_real_rows(momentum):
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    mask = torch.tensor([1.0] * 7 + [0.0] * 3)
    ref, bn = torch.nn.BatchNorm1d(3, momentum=momentum), torch.nn.BatchNorm1d(3, momentum=momentum)
    for m in (ref, bn):
        with torch.no_grad():
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-1.0, 1.0)
        bn.load_state_dict(ref.state_dict())
    for _ in range(2):  # two updates: the cumulative average's count matters with momentum None
        want = ref(x[:7])
        got = masked_batch_norm(x * 1.0, bn, mask)
    torch.testing.assert_close(got[:7], want)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    bn.eval()
    torch.testing.assert_close(masked_batch_norm(x, bn, mask), bn(x))  # evaluation: as is


def test_padded_gnnplus_step_gives_the_unpadded_outputs_loss_and_gradients():
    torch.manual_seed(0)
    kwargs = dict(node_vocab=[4, 4], edge_vocab=[3], num_classes=3, task_level="graph",
                  conv="gcne", dim=8, num_layers=2, residual=False, act="gelu", dropout=0.0,
                  head_layers=3, head_input_dropout=True, pe_dim=4, mlp_ratio=1.0)
    model, twin = GNNPlus(**kwargs), GNNPlus(**kwargs)
    twin.load_state_dict(model.state_dict())
    task = MultiLabelGraphTask(OmegaConf.create({"model": {}, "data": {}, "train": {}}))
    b = _batch()
    padded = StaticBatch(nodes=24, edges=40, graphs=4).pad(b)
    _check_same_step(task, model, b, twin, padded)
    assert task.num_samples(padded) == 3 == task.num_samples(b)


def _check_same_step(task, model, batch, twin, padded, **tolerance) -> None:
    """``twin`` on the ``padded`` batch gives ``model``'s outputs (first rows), loss, gradients
    and BatchNorm statistics on the unpadded ``batch`` of 3 graphs (padded to 4)."""
    out, out_padded = task.forward(model, batch), task.forward(twin, padded)
    assert out_padded.shape == (4, 3)
    torch.testing.assert_close(out_padded[:3], out)
    loss, loss_padded = task.loss(out, batch), task.loss(out_padded, padded)
    torch.testing.assert_close(loss_padded, loss)
    loss.backward()
    loss_padded.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name, **tolerance)
    for (name, r), s in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(s, r, msg=name)


def _task(cls, model: dict, static: dict | None):
    cfg = load_config(CONFIGS / "peptides_func_gcnplus.yaml")
    OmegaConf.set_struct(cfg, False)
    cfg.model, cfg.train.batch_size, cfg.train.static_batch = model, 4, static
    # molecules of the tests' own (3 labels): no dataset class to read widths or metric from
    cfg.data.name, cfg.eval.metric = None, "ap"
    task = cls(cfg)
    task.build_model()
    return task


def test_task_pads_training_batches_only_and_checks_what_it_can_pad():
    model = {"name": "GNNPlus", "node_vocab": [4, 4], "edge_vocab": [3], "num_classes": 3,
             "task_level": "graph", "conv": "gcne", "dim": 8, "pe_dim": 4}
    task = _task(MultiLabelGraphTask, model, {"nodes": 24, "edges": 40})
    samples = [_molecule(5, 0), _molecule(7, 1)]
    assert is_static_batch(task.collate(samples))

    class ValSamples(list):
        split = "val"

    assert isinstance(task.collate(ValSamples(samples)), Batch)  # evaluation: unpadded
    assert _task(MultiLabelGraphTask, model, None).static_batch is None
    with pytest.raises(ValueError, match="GraphClassificationTask does not take padded"):
        _task(GraphClassificationTask, model | {"num_classes": 2}, {"nodes": 24, "edges": 40})
    gmn = {"name": "GraphMambaNetwork", "node_vocab": [4, 4], "num_classes": 3,
           "task_level": "graph", "dim": 8, "num_layers": 1, "tokens": True,
           "global_mamba": True, "d_state": 4}
    with pytest.raises(ValueError, match="plans tokens or sparse adjacencies"):
        _task(MultiLabelGraphTask, gmn, {"nodes": 24, "edges": 40})
    with pytest.raises(ValueError, match="GIN's inner BatchNorm"):
        GNNPlus(3, 2, conv="gine", task_level="graph")(
            torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]]), batch=torch.zeros(4).long(),
            node_mask=torch.ones(4), num_graphs=1)


#: A Graph Mamba on GCN+ blocks (as peptides_func_gmnplus.yaml) in the deterministic index
#: order: its padded plan orders the real graphs as the unpadded one does.
GMN = {"name": "GraphMambaNetwork", "node_vocab": [4, 4], "edge_vocab": [3], "num_classes": 3,
       "task_level": "graph", "dim": 8, "num_layers": 2, "tokens": False, "global_mamba": True,
       "global_order": "index", "mpnn": "gcne", "mpnn_plus": True, "mpnn_norm": "batch",
       "mpnn_act": "gelu", "residual": False, "gate": True, "pre_norm": False, "pe_dim": 4,
       "pe_norm": True, "dropout": 0.0, "mlp_ratio": 0, "head_layers": 3,
       "head_input_dropout": True, "d_state": 4, "expand": 1, "packed_bimamba": True}


def _gmn_tasks(static: dict) -> tuple:
    """Twin Graph Mamba tasks, unpadded and padded, with the same weights and open gates (the
    config's zero gates would hide the Mamba branch)."""
    torch.manual_seed(0)
    pair = []
    for spec in (None, static):
        task = _task(MultiLabelGraphTask, GMN, spec)
        task.model = task.build_model()  # the planner is the last built model's
        pair.append(task)
    with torch.no_grad():
        for layer in pair[0].model.layers:
            layer.gate.uniform_(0.5, 1.5)
    pair[1].model.load_state_dict(pair[0].model.state_dict())
    return tuple(pair)


def test_padded_graph_mamba_step_matches_the_unpadded_one():
    """The Graph Mamba's padded batch carries the plan of the padded graph (the padding graph
    one more sequence); outputs, loss, gradients and BatchNorm statistics are the unpadded
    step's (float rounding aside), and the mapping is graphable (tensors and plain values)."""
    from geossm.engine.cuda_graph import batch_signature
    plain, padded = _gmn_tasks({"nodes": 24, "edges": 40})
    samples = [_molecule(5, 0), _molecule(7, 1), _molecule(4, 2)]
    b, p = plain.collate(samples), padded.collate(samples)
    assert is_static_batch(p) and batch_signature(p) is not None
    # cu_seqlens: 3 molecules, the batch's missing 4th graph (empty), the padding graph
    assert p["order"][2].tolist() == [0, 5, 12, 16, 16, 24]
    # one task runs both batches (its forward dispatches on the batch's kind)
    _check_same_step(padded, plain.model, b, padded.model, p, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="plan of the padded graph"):
        padded.model(p["x"], p["edge_index"], edge_attr=p["edge_attr"], batch=p["batch"],
                     pe=p["pe"], node_mask=p["node_mask"], num_graphs=4)


def _peptides_trainer(tmp_path, name: str, config: str, *overrides: str):
    from geossm.engine import Trainer
    root = shared_path("graphs", "peptides-functional")
    pytest.importorskip("rdkit", reason="the Peptides-func SMILES are converted with RDKit")
    cfg = load_config(CONFIGS / config, [
        f"output_dir={tmp_path / name}", f"data.root={root}", "+data.max_graphs=60",
        f"data.cache={tmp_path / 'peptides_60.npz'}", "model.dim=16", "model.dropout=0.0",
        "train.epochs=2", "train.batch_size=8", "train.num_workers=0", "train.warmup_epochs=0",
        "train.progress=false", "device=cpu", "train.optimizer.name=SGD", *overrides])
    return Trainer(cfg)


def test_auto_static_batch_pads_every_training_batch_of_a_run(tmp_path, monkeypatch):
    """``train.static_batch: auto`` on real molecules, for a run whose step is a CUDA graph
    (as on a GPU: the task is told so): the layout is fitted to the run's own epochs, so no
    training batch is left unpadded."""
    from geossm.tasks.graph import task as graph_task
    monkeypatch.setattr(graph_task, "cuda_graph_wanted", lambda *args: True)
    trainer = _peptides_trainer(tmp_path, "auto", "peptides_func_gcnplus.yaml",
                                "train.static_batch=auto")
    static = trainer.task.static_batch
    assert isinstance(static, StaticBatch) and static.graphs == 8 and static.nodes % 64 == 0
    assert trainer.graphed_step is None  # the trainer itself builds no graph on this CPU
    trainer.fit()
    assert static.oversized == 0


@pytest.mark.parametrize("overrides, why", [
    ((), "not replayed as a CUDA graph"),  # this CPU: train.cuda_graph auto is off
    (("ddp",), "not replayed as a CUDA graph"),  # auto on a GPU, but under torchrun
    (("train.cuda_graph=true", "model.tokens=true"), "plans tokens or sparse adjacencies")])
def test_auto_static_batch_pads_only_for_a_cuda_graph_of_a_flat_plan(tmp_path, monkeypatch,
                                                                    overrides, why):
    """``auto`` is off (logged, nothing padded) where no CUDA graph replays the step or the
    model's plan does not fit a padded batch; an explicit layout is not (it is checked)."""
    from geossm.tasks.graph import task as graph_task
    if "train.cuda_graph=true" in overrides:  # the task's view of a GPU run
        monkeypatch.setattr(graph_task, "cuda_graph_wanted", lambda *args: True)
    if "ddp" in overrides:  # a GPU (as the task sees it) in one of two torchrun processes
        monkeypatch.setattr(graph_task.dist, "resolve_device", lambda spec: torch.device("cuda"))
        monkeypatch.setenv("WORLD_SIZE", "2")
    overrides = tuple(o for o in overrides if o not in ("train.cuda_graph=true", "ddp"))
    # the width named: model.num_classes=auto would read it from the dataset's files
    cfg = load_config(CONFIGS / "peptides_func_gmnplus.yaml",
                      ["train.static_batch=auto", "device=cpu", "model.num_classes=10",
                       *overrides])
    import logging

    from geossm.engine.logging import get_logger
    records, handler, logger = [], logging.Handler(), get_logger()
    handler.emit = records.append
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        task = MultiLabelGraphTask(cfg)
        task.build_model()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert task.static_batch is None
    logged = [r.getMessage() for r in records]
    assert any("train.static_batch: auto -> off" in m and why in m for m in logged), logged


def test_a_padded_cuda_graph_run_is_evaluated_and_used_without_its_training_data(tmp_path,
                                                                                monkeypatch):
    """A Graph Mamba trained on padded batches (``train.static_batch: auto``, which reads the
    training set) and, as on a GPU, ``train.cuda_graph``: ``Predictor`` on this CPU with the
    data folder gone builds no layout, pads nothing and plans as evaluation does (the same
    logits as an evaluation batch of the molecule, on every call)."""
    from geossm.engine.predictor import Predictor
    from geossm.engine.task import SplitSamples
    from geossm.tasks.graph import task as graph_task
    monkeypatch.setattr(graph_task, "cuda_graph_wanted", lambda *args: True)  # as on a GPU
    trainer = _peptides_trainer(tmp_path, "run", "peptides_func_gmnplus.yaml",
                                "train.static_batch=auto", "train.epochs=1")
    assert trainer.task.static_batch is not None
    trainer.fit()
    molecule = trainer.task.build_dataset("test")[0]
    predictor = Predictor.from_checkpoint(
        tmp_path / "run" / "best.pt", device="cpu",
        overrides=[f"data.root={tmp_path / 'gone'}", f"data.cache={tmp_path / 'gone.npz'}",
                   "train.cuda_graph=true"])
    assert predictor.task.static_batch is None
    fields = {k: molecule[k].numpy() for k in ("x", "edge_index", "edge_attr")}
    first, again = predictor(fields)["logits"], predictor(fields)["logits"]
    with torch.no_grad():
        evaluated = predictor.task.predict_step(
            predictor.model, predictor.task.collate(SplitSamples([molecule], "test")))
    assert first.shape == (1, 10)
    torch.testing.assert_close(torch.from_numpy(first), evaluated.float(), rtol=1e-5, atol=1e-5)
    assert (first == again).all()
    # the batch is collated as a prediction (evaluation plans), not as a training batch
    splits, collate = [], predictor.task.collate
    predictor.task.collate = lambda samples: splits.append(getattr(samples, "split", "train")) \
        or collate(samples)
    predictor(fields)
    assert splits == ["predict"]
    # geossm export too: its example batch is a prediction's, nothing padded or fitted
    from geossm.engine.export import example_batch, model_from_checkpoint
    _, cfg, task = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert task.static_batch is None and not is_static_batch(example_batch(task, cfg))


@pytest.mark.parametrize("config, overrides", [
    ("peptides_func_gcnplus.yaml", ()),
    # the index order: padded and unpadded plans order the real atoms alike
    ("peptides_func_gmnplus.yaml", ("model.global_order=index",))])
def test_padded_training_on_real_molecules_matches_unpadded_and_graphed_replays(
        tmp_path, config, overrides):
    """Two epochs on Peptides-func molecules: padded batches train the weights the unpadded
    ones do (float rounding aside: SGD, as Adam would turn the rounding noise of the
    gradients that BatchNorm cancels, the convolutions' biases, into whole steps), and a
    graphed step replaying the padded layout (the CPU stand-in of the engine's tests) trains
    exactly the eager padded step's weights."""
    static = "train.static_batch={nodes: 2048, edges: 4096}"
    plain = _peptides_trainer(tmp_path, "plain", config, *overrides)
    plain.fit()
    padded = _peptides_trainer(tmp_path, "padded", config, static, *overrides)
    padded.fit()
    graphed = _peptides_trainer(tmp_path, "graphed", config, static, *overrides)
    graphed.graphed_step = RerunGraphedStep(
        [p for p in graphed.model.parameters() if p.requires_grad])
    graphed.fit()
    assert graphed.graphed_step.stats["replayed"] > 0
    for (name, a), b in zip(plain.model.state_dict().items(),
                            padded.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    # Parameters only: the stand-in runs the step at its capture too (a CUDA capture only
    # records it), which moves the BatchNorm running statistics once more.
    for (name, b), c in zip(padded.model.named_parameters(), graphed.model.parameters()):
        assert torch.equal(c, b), name


def _molecules(i: int) -> list[Data]:
    """Batch ``i`` of the replay tests: four molecules of 4-8 atoms, other sizes every batch."""
    return [_molecule(4 + (i + k) % 5, i * 4 + k) for k in range(4)]


def _check_replays(task, model, twin, batches, atol: float) -> None:
    """``twin``'s step through a real ``GraphedStep`` (2 eager warm-up steps, a capture, 4
    replays) gives ``model``'s eager loss and gradients on every one of the 6 ``batches``."""
    from geossm.engine.cuda_graph import GraphedStep

    def step(module):
        def run(batch):
            module.zero_grad(set_to_none=True)
            loss = task.loss(task.forward(module, batch), batch)
            loss.backward()
            return loss.detach(), {}, None
        return run

    graphed = GraphedStep([p for p in twin.parameters()], warmup=2)
    for batch in batches:
        loss, _, _ = graphed(batch, step(twin))
        want, _, _ = step(model)(batch)
        torch.testing.assert_close(loss, want)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=atol, msg=name)
    assert dict(graphed.stats) == {"eager": 2, "captured": 1, "replayed": 4}


CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (a real CUDA graph of the padded step)")


@CUDA
def test_padded_gnnplus_step_replays_as_a_cuda_graph():
    """On a GPU: the padded GCN+ step (forward, loss, backward) is captured once (no host
    sync, static shapes) and its replays give the eager step's loss and gradients on batches
    of other molecules (dropout 0; float rounding aside)."""
    torch.manual_seed(0)
    kwargs = dict(node_vocab=[4, 4], edge_vocab=[3], num_classes=3, task_level="graph",
                  conv="gcne", dim=16, num_layers=3, residual=False, act="gelu", dropout=0.0,
                  head_layers=4, head_input_dropout=True, pe_dim=4)
    model, twin = GNNPlus(**kwargs).cuda(), GNNPlus(**kwargs).cuda()
    twin.load_state_dict(model.state_dict())
    task = MultiLabelGraphTask(OmegaConf.create({"model": {}, "data": {}, "train": {}}))
    static = StaticBatch(nodes=64, edges=128, graphs=4)
    batches = (move_to(static.pad(Batch.from_data_list(_molecules(i))), torch.device("cuda"))
               for i in range(6))
    _check_replays(task, model, twin, batches, atol=1e-6)


@CUDA
def test_padded_graph_mamba_step_replays_as_a_cuda_graph():
    """On a GPU: the padded Graph Mamba step (its plan, the Triton scan over the packed
    sequences, the padding graph one long sequence) is captured once and its replays give the
    eager step's loss and gradients on batches of other molecules and sequence lengths."""
    plain, padded = _gmn_tasks({"nodes": 64, "edges": 128})
    batches = (move_to(padded.collate(_molecules(i)), torch.device("cuda")) for i in range(6))
    _check_replays(padded, plain.model.cuda(), padded.model.cuda(), batches, atol=1e-5)
