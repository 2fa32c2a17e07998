import numpy as np
import pytest

from geossm.tasks.events import io

from . import canon


def test_nmnist_real_matches_tonic(samples):
    tonic_io = pytest.importorskip("tonic.io")
    path = samples / "sample_nmnist.bin"
    rec = io.read_events(path)
    assert rec.sensor_size is None and rec.events.dtype == io.EVENT_DTYPE
    ref = tonic_io.read_mnist_file(str(path), dtype=np.dtype(
        [("x", int), ("y", int), ("t", int), ("p", int)]))
    np.testing.assert_array_equal(canon(rec.events), canon(ref))
    assert len(rec.events) == 4325 and np.all(np.diff(rec.events["t"]) >= 0)


def test_nmnist_dataset_files(nmnist_root):
    files = sorted(nmnist_root.rglob("*.bin"))
    assert len(files) == 700
    for f in files[::50]:
        ev = io.read_events(f).events
        assert 1000 < len(ev) < 10000
        assert ev["x"].max() < 34 and ev["y"].max() < 34 and ev["t"].max() < 400_000
