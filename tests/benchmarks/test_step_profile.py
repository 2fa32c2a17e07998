"""``benchmarks/step_profile.py --tiny``: the CPU check of the GPU step profile runs every task's
config, dataset, collate, model, loss and optimizer step and prints one JSON line per case."""

import json

import pytest

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


def test_tiny_points_mode_runs_every_set_of_memory_paths(step_profile, capsys):
    shared_path("semantickitti", "semantickitti_npy_3scans.tar.xz")
    step_profile.main(["--tiny", "--points", "900"])
    rows = _rows(capsys)
    assert [r["paths"] for r in rows] == ["default", "all", "off"]
    assert all(r["points"] == 900 and r["step_s"] > 0 for r in rows)


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
