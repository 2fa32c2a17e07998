"""``benchmarks/step_profile.py --tiny``: the CPU check of the GPU step profile runs every task's
config, dataset, collate, model, loss and optimizer step and prints one JSON line per case."""

import importlib
import json

import pytest
import torch

from geossm.engine.task import move_to
from tests.benchmarks.conftest import load_benchmark
from tests.shared_data import shared_path



@pytest.fixture(scope="module")
def step_profile():
    return load_benchmark("step_profile")


def _rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


@pytest.mark.parametrize("task, data", [
    ("events", ("events", "nmnist_600train_100test.tar.xz")),
    ("graph", ("graphs", "peptides-functional")),
    ("detection", ("kitti", "kitti_object_6frames.tar.xz")),
    ("segmentation", ("semantickitti", "semantickitti_npy_3scans.tar.xz")),
])
def test_tiny_profile_of_every_task(step_profile, capsys, tmp_path, monkeypatch, task, data):
    shared_path(*data)
    if task == "graph":
        pytest.importorskip("rdkit", reason="the Peptides-func SMILES are converted with RDKit")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rows.jsonl"
    step_profile.main(["--tiny", "--tasks", task, "--out", str(out)])
    rows = _rows(capsys)
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert [json.loads(l) for l in out.read_text().splitlines()] == rows
    for row in rows:
        assert row["task"] == task and row["device"] == "cpu" and row["paths"] == "default"
        assert row["step_ms"] > 0 and row["aten_ops"] > 100 and row["items_per_batch"] > 0
        # No CUDA on the CPU check: no kernels, syncs or GPU fraction to report.
        assert row["kernels"] == 0 and row["syncs"] == 0 and row["gpu_busy_frac"] is None
        assert row["stream_step_ms"] > 0 and row["gpu_busy_frac_stream"] is None
        assert row["stream_repeat_step_ms"] > 0 and row["gpu_busy_frac_stream_repeat"] is None
        # numba on the CPU: no Triton kernel compiles in any phase
        assert row["triton_compiles"] == {"warmup": 0, "synced": 0, "stream": 0, "repeat": 0}
        assert row["gpu_busy_ms_stream"] is None


def test_back_to_back_steps_are_timed_together(step_profile):
    calls = []
    seconds = step_profile._back_to_back_s(calls.append, ["a", "b", "c"], 4, torch.device("cpu"),
                                           first=2)
    assert calls == ["c", "a", "b", "c"] and seconds >= 0


def test_profiled_steps_start_at_the_batch_asked_for(step_profile):
    calls = []
    row = step_profile.profile_steps(calls.append, ["a", "b", "c"], 4, torch.device("cpu"),
                                     first=2)
    assert calls == ["c", "a", "b", "c"] and row["kernels"] == 0


def test_tiny_points_mode_runs_every_set_of_memory_paths(step_profile, capsys):
    shared_path("semantickitti", "semantickitti_npy_3scans.tar.xz")
    step_profile.main(["--tiny", "--points", "900"])
    rows = _rows(capsys)
    assert [r["paths"] for r in rows] == ["default", "all", "off"]
    assert all(r["points"] == 900 and r["step_s"] > 0 for r in rows)


def test_tiny_points_with_neighbours_given_search_once_before_the_steps(step_profile, capsys,
                                                                        monkeypatch):
    """``--points --knn-in-loader``: the neighbours are searched once, before the timed steps
    (as the loader would), and every step reads them instead of searching."""
    import geossm.tasks.segmentation.models as models
    import geossm.tasks.segmentation.neighbours as neighbours

    shared_path("semantickitti", "semantickitti_npy_3scans.tar.xz")
    calls = []
    real = neighbours.knn
    counted = lambda *a, **kw: calls.append(1) or real(*a, **kw)  # noqa: E731
    monkeypatch.setattr(neighbours, "knn", counted)  # the benchmark's search
    monkeypatch.setattr(models, "knn", counted)      # the model's, if it searched
    step_profile.main(["--tiny", "--points", "900", "--knn-in-loader"])
    rows = _rows(capsys)
    assert [r["knn_in_loader"] for r in rows] == [True] * 3 and all(r["step_s"] > 0 for r in rows)
    assert len(calls) == 1


def test_busy_union_merges_overlapping_intervals(step_profile):
    assert step_profile._busy_union_us([(0, 4), (2, 6), (10, 11), (10.5, 10.7)]) == 7
    assert step_profile._busy_union_us([]) == 0


def test_memory_paths_switch_every_module(step_profile):
    from geossm.nn import MLP, Mamba, RMSNorm
    from geossm.tasks.segmentation.models import KNNEmbedding, PointCloudMambaSeg

    model = PointCloudMambaSeg(in_channels=3, num_classes=4, dims=(8, 16), depths=(1, 1),
                               strides=(2,), d_state=4)
    kinds = (Mamba, KNNEmbedding, RMSNorm, MLP)
    for paths, switches in step_profile.PATHS.items():
        step_profile.set_memory_paths(model, paths)
        for kind, on in zip(kinds, switches):
            mods = [m for m in model.modules() if isinstance(m, kind)]
            assert mods and all((m.recompute if kind is KNNEmbedding else m.fused) is on
                                for m in mods), (paths, kind)


def test_count_ops_finds_host_syncs_and_their_lines(step_profile):
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def step(t):
        y = t * 2  # plain op
        kept = y[y > 2]  # boolean mask: size read by the host
        n = int(kept.sum())  # .item()
        return torch.repeat_interleave(t.long(), torch.ones(4, dtype=torch.long)), \
            torch.repeat_interleave(t.long(), torch.ones(4, dtype=torch.long), output_size=4), n

    res = step_profile.count_ops(step, x)
    names = {k.split(" @ ")[0] for k in res["data_dependent"]}
    assert names == {"index", "_local_scalar_dense", "repeat_interleave"}
    # One of the two: with output_size no sync. The step is defined here, outside the
    # project's folders: no frame to name.
    assert res["data_dependent"][f"repeat_interleave @ {step_profile.NO_FRAME}"] == 1
    assert res["ops"] >= 6 and res["top_ops"]["mul"] == 1


def test_op_sources_row_on_cpu(step_profile, capsys, tmp_path, monkeypatch):
    shared_path("events", "nmnist_600train_100test.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    step_profile.main(["--tiny", "--tasks", "events", "--batch-sizes", "2", "--op-sources"])
    rows = _rows(capsys)
    assert [r["bench"] for r in rows] == ["step_profile", "step_ops"]
    assert rows[0]["cuda_graph"] is False and rows[0]["compile"] is None
    ops = rows[1]
    assert ops["ops"] > 100 and ops["top_sources"]
    # The windowed model's patch serializations are cached: no cu_seqlens check per step.
    assert not any("_validated_int32" in k for k in ops["data_dependent"])


def test_host_breakdown_names_operators_modules_and_backward_nodes(step_profile, capsys,
                                                                   tmp_path, monkeypatch):
    shared_path("kitti", "kitti_object_6frames.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    step_profile.main(["--tiny", "--tasks", "detection", "--batch-sizes", "1",
                       "--host-top", "60"])
    host = _rows(capsys)[0]["host"]
    assert 10 < len(host["ops"]) <= 60 and sum(host["ops"].values()) <= host["ops_self_ms"]
    assert all(v > 0 for part in ("ops", "modules", "backward") for v in host[part].values())
    # the LION block's forward holds its group layers'; the layers' packed BiMamba backward
    assert host["modules"]["blocks.0"] >= host["modules"]["blocks.0.full.0"] > 0
    assert "_PackedBiMambaBackward" in host["backward"]
    assert not any(k.startswith(("module::", "autograd::")) for k in host["ops"])


def test_override_reaches_the_config(step_profile, capsys, tmp_path, monkeypatch):
    """``--override`` passes config overrides: LION's packed group layers on (the default)
    and off (``model.packed_scan=false``: the two Mamba calls of geossm.nn)."""
    shared_path("kitti", "kitti_object_6frames.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    sources = []
    for override in ([], ["--override", "model.packed_scan=false"]):
        step_profile.main(["--tiny", "--tasks", "detection", "--batch-sizes", "1",
                           "--op-sources", *override])
        rows = _rows(capsys)
        assert [r["bench"] for r in rows] == ["step_profile", "step_ops"]
        sources.append(" ".join(rows[1]["top_sources"]))
    packed, unpacked = sources
    assert "packed_mixer.py" in packed and "fused.py" not in packed
    assert "packed_mixer.py" not in unpacked and "fused.py" in unpacked


def test_layer_graphs_row_counts_sizes_and_calls(step_profile, capsys, tmp_path, monkeypatch):
    """``model.graph_layers=padded`` (the CPU's form of LION's graphed group layers): the row
    says how many padded sizes the steps met and how the layer calls ran."""
    shared_path("kitti", "kitti_object_6frames.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    step_profile.main(["--tiny", "--tasks", "detection", "--batch-sizes", "1",
                       "--override", "model.graph_layers=padded"])
    row = _rows(capsys)[0]
    graphs = row["layer_graphs"]
    assert graphs["sizes"] >= 1 and graphs["padded_eager"] > 0
    assert graphs["replayed"] == graphs["captured"] == 0 and graphs["eager"] == 0


def test_paired_check_on_cpu_same_and_different_settings(step_profile, capsys, tmp_path,
                                                         monkeypatch):
    """``--graph-check``: two runs from the same weights on the same batches; the same settings
    give the same losses and weights, a changed learning rate does not."""
    shared_path("events", "nmnist_600train_100test.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    base = ["--tiny", "--tasks", "events", "--batch-sizes", "2", "--graph-check", "3",
            "--check-a", "train.lr=1e-3"]
    step_profile.main(base + ["--check-b", "train.lr=1e-3"])
    step_profile.main(base + ["--check-b", "train.lr=1e-2"])
    same, changed = _rows(capsys)
    assert same["bench"] == "step_profile_graph_check" and same["task"] == "events"
    assert same["steps"] == 3 and same["b"] == ["train.lr=1e-3"]
    assert same["graph_steps_a"] is None and same["device"] == "cpu"
    assert same["max_loss_diff"] == 0.0 and same["max_param_diff"] == 0.0
    assert changed["loss_first"] == same["loss_first"]   # the first step's loss: same weights
    assert changed["max_param_diff"] > 0.0
    assert changed["step_ms_a"] > 0 and changed["step_ms_b"] > 0


def test_loop_row_times_the_trainers_epoch_loop(step_profile, capsys, tmp_path, monkeypatch):
    """``--loop N``: the trainer's own epoch loop over N batches (loader, copy, step, meters)."""
    shared_path("events", "nmnist_600train_100test.tar.xz")
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "cache"))
    step_profile.main(["--tiny", "--tasks", "events", "--batch-sizes", "2", "--loop", "3",
                       "--override", "train.num_workers=1"])
    row = _rows(capsys)[0]
    assert row["loop_steps"] == 3 and row["loop_workers"] == 1
    assert 0 <= row["loop_data_wait_ms"] < row["loop_step_ms"]
    parts = ("loop_data_wait_ms", "loop_copy_host_ms", "loop_step_host_ms")
    assert row["loop_copy_host_ms"] > 0 and row["loop_step_host_ms"] > 0
    assert abs(sum(row[k] for k in parts) + row["loop_other_host_ms"] - row["loop_step_ms"]) \
        < 0.01
    assert row["loop_first_batch_ms"] > 0
    trainer_module = importlib.import_module("geossm.engine.trainer")
    assert trainer_module.move_to is move_to   # the timers are gone
    assert "loop_gpu_busy_frac" not in row   # CPU: no GPU-busy time
