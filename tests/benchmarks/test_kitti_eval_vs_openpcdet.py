"""benchmarks/kitti_eval_vs_openpcdet.py: the jittered KITTI case it builds, geossm's half on
it, and (with an OpenPCDet checkout named by ``GEOSSM_OPENPCDET``) the ``--tiny`` comparison."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.benchmarks.conftest import BENCHMARKS, load_benchmark
from tests.shared_data import unpack

SCRIPT = BENCHMARKS / "kitti_eval_vs_openpcdet.py"


def _benchmark():
    return load_benchmark("kitti_eval_vs_openpcdet")


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    return unpack(tmp_path_factory, "kitti", "kitti_object_6frames.tar.xz") / "training"


def test_case_files_hold_the_labels_and_jittered_detections(training, tmp_path):
    from geossm.tasks.detection.kitti import read_label
    bench = _benchmark()
    ids = bench.write_case(training, tmp_path, repeats=2, seed=0)
    frames = sorted(p.stem for p in (training / "label_2").glob("*.txt"))
    assert ids == list(range(2 * len(frames)))
    for i in ids:
        source = training / "label_2" / f"{frames[i % len(frames)]}.txt"
        assert (tmp_path / "gt" / f"{i:06d}.txt").read_text() == source.read_text()
        det = read_label(tmp_path / "dt" / f"{i:06d}.txt")
        assert set(det["name"]) <= set(bench.CLASSES) and len(det["name"]) >= 2  # + false positives
        assert ((det["score"] > 0) & (det["score"] <= 1)).all()
    # the two repeats of a frame are jittered differently (fixed seed: the same files again)
    first, second = (read_label(tmp_path / "dt" / f"{i:06d}.txt") for i in (0, len(frames)))
    assert not (len(first["name"]) == len(second["name"])
                and np.allclose(first["location"], second["location"]))
    again = tmp_path / "again"
    bench.write_case(training, again, repeats=2, seed=0)
    assert (again / "dt" / "000003.txt").read_text() == (tmp_path / "dt" / "000003.txt").read_text()


def test_geossm_half_gives_every_key_of_both_settings(training, tmp_path):
    bench = _benchmark()
    ids = bench.write_case(training, tmp_path, repeats=1, seed=0)
    aps = bench.geossm_aps(tmp_path, ids)
    assert len(aps) == 2 * 3 * 4 * 3 * 2
    assert all(0.0 <= v <= 100.0 for v in aps.values())  # empty_ap=0.0: no NaN, as official
    # the looser BEV thresholds of the second setting never lower the AP
    for (setting, cls, metric, diff, rule), value in aps.items():
        if setting == 0 and metric in ("bev", "3d"):
            assert aps[1, cls, metric, diff, rule] >= value - 1e-9


def test_tiny_run_matches_openpcdet(training):
    root = os.environ.get("GEOSSM_OPENPCDET")
    if not root:
        pytest.skip("GEOSSM_OPENPCDET does not name an OpenPCDet checkout (not vendored here)")
    # a process of its own: numba's CUDA simulator is chosen before numba is first imported
    run = subprocess.run([sys.executable, str(SCRIPT), "--openpcdet", root, "--data",
                          str(training.parent), "--tiny"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-1]["summary"] == "max_abs_diff" and lines[-1]["values"] == 144
    assert lines[-1]["max_abs_diff"] < 1e-6
