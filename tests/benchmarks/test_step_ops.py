"""``benchmarks/step_ops.py``: the operator / host-sync counter and its tiny CPU run."""

import json

import pytest
import torch

from tests.benchmarks.conftest import load_benchmark
from tests.shared_data import shared_path


@pytest.fixture(scope="module")
def step_ops():
    return load_benchmark("step_ops")


def test_counter_sees_each_kind_of_host_sync(step_ops):
    x = torch.arange(6.0)
    counts = torch.tensor([1, 2, 3])
    optimizer_step = torch.tensor(4.0)
    counter = step_ops.OpCounter(host_tensors=[optimizer_step])
    with counter:
        y = x * 2 + 1                                     # two operators, no sync
        torch.nonzero(y > 3)
        y[y > 3]                                          # boolean index
        torch.unique(y)
        torch.repeat_interleave(torch.arange(3), counts)  # its size is read on the host
        torch.repeat_interleave(torch.arange(3), counts, output_size=6)   # given: no sync
        float(y.sum())                                    # .item()
        y.tolist()
        host = y.cpu()
        int(host[0])                                      # a host copy: no further sync
        float(optimizer_step)                             # lives on the host: no sync
        torch.tensor([1, 2], device="cpu")                # a copy to the device
        torch.bincount(counts)
    assert dict(counter.syncs) == {"nonzero": 1, "bool_index": 1, "unique": 1,
                                   "repeat_interleave": 1, "scalar": 1, "tolist": 1,
                                   "cpu": 1, "to_device": 1, "bincount": 1}
    assert counter.ops["mul"] == 1 and counter.ops["add"] == 1
    assert torch.Tensor.cpu is not None and torch.tensor([1]).tolist() == [1]   # restored


def test_sync_stacks_name_the_project_callers(step_ops):
    # a sync inside a shared helper (window_partition) is told apart by its callers
    from geossm.serialization import window_partition

    sample = torch.tensor([0, 0, 1])
    counter = step_ops.OpCounter(stack_depth=3)
    with counter:
        window_partition(sample, 2, 4)
    ((stack, count),) = counter.sync_stacks.items()
    assert count == 1 and stack.startswith("cpu windows.py:")
    assert dict(counter.sync_sites) == {stack.split(" < ")[0]: 1}
    plain = step_ops.OpCounter()
    with plain:
        window_partition(sample, 2, 4)
    assert not plain.sync_stacks and dict(plain.sync_sites) == dict(counter.sync_sites)


def test_tiny_run_prints_counts_per_batch_size(step_ops, capsys, tmp_path):
    shared_path("kitti", "kitti_object_6frames.tar.xz")
    out = tmp_path / "ops.jsonl"
    step_ops.main(["--tiny", "--tasks", "detection", "--out", str(out), "--sync-stacks"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    for row in rows:
        assert row["step_ms"] > 0 and row["aten_ops"] > row["dispatched_ops"] > 100
        assert row["collate_ms"] > 0
        assert row["syncs"] == sum(row["syncs_by_kind"].values())
        stacks = row["sync_stacks"]
        assert sum(stacks.values()) <= row["syncs"]
        assert {key.split()[0] for key in stacks} <= set(row["syncs_by_kind"])


STATIC = "train.static_batch={nodes: 2304, edges: 4608}"


@pytest.mark.parametrize("config, override", [
    (None, None), ("graph/peptides_func_gcnplus.yaml", None),
    ("graph/peptides_func_gmnplus.yaml", None), ("graph/peptides_func_gcnplus.yaml", STATIC),
    ("graph/peptides_func_gmnplus.yaml", STATIC)])
def test_graph_training_step_has_no_host_sync(step_ops, capsys, config, override):
    # The Peptides-func steps (tiny widths): tokens, token edges and the degree order come
    # with the batch (its plan, built in collate), so the step never reads sizes on the host
    # (34 syncs per step before the plan); the GCN+ yardstick and the Graph Mamba on its
    # blocks too (--config), also on padded batches (a CUDA graph's condition).
    shared_path("graphs", "peptides-functional", "splits_random_stratified_peptide.pickle")
    pytest.importorskip("rdkit", reason="the Peptides-func SMILES are converted with RDKit")
    step_ops.main(["--tiny", "--tasks", "graph", "--batch-sizes", "8"]
                  + (["--config", config] if config else [])
                  + (["--override", override] if override else []))
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["dispatched_ops"] > 100
    assert rows[0]["config"] == (config or "graph/peptides_func_gmn.yaml")
    assert rows[0]["syncs"] == 0, rows[0]["top_sync_sites"]
    assert (rows[0]["items_per_batch"] == 2304) == (override is not None)  # padded nodes


def test_split_counts_the_model_and_the_optimizer_of_a_step(step_ops, capsys):
    shared_path("graphs", "peptides-functional", "splits_random_stratified_peptide.pickle")
    pytest.importorskip("rdkit", reason="the Peptides-func SMILES are converted with RDKit")
    step_ops.main(["--tiny", "--tasks", "graph", "--batch-sizes", "8", "--split"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    row, = rows
    assert row["model_dispatched_ops"] > 100 and row["optimizer_dispatched_ops"] > 0
    # the same calls as the counted step, in two parts
    assert row["model_dispatched_ops"] + row["optimizer_dispatched_ops"] == row["dispatched_ops"]
    assert row["model_aten_ops"] > row["model_dispatched_ops"]
    assert row["optimizer_aten_ops"] > 0
