import numpy as np
import pytest

from geossm.tasks.events import io

from .. import encoders as enc
from . import canon


def test_numpy_and_hdf5_round_trips(tmp_path):
    ev = enc.random_events(300, seed=7)
    np.save(tmp_path / "s.npy", ev)
    np.save(tmp_path / "c.npy", np.stack([ev[k].astype(np.int64) for k in "xytp"], 1))
    np.savez(tmp_path / "e.npz", events=ev, sensor_size=np.array([640, 480]))
    np.savez(tmp_path / "k.npz", **{k: ev[k] for k in "xytp"})
    for name in ("s.npy", "c.npy", "e.npz", "k.npz"):
        np.testing.assert_array_equal(canon(io.read_events(tmp_path / name).events), canon(ev))
    assert io.read_events(tmp_path / "e.npz").sensor_size == (640, 480, 2)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        g = f.create_group("events")
        for k in "xytp":
            g.create_dataset(k, data=ev[k])
        f.attrs["width"], f.attrs["height"] = 640, 480
    rec = io.read_events(tmp_path / "e.h5")
    assert rec.sensor_size == (640, 480, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))
    assert [len(c) for c in io.iter_events(tmp_path / "e.h5", chunk_size=128)] == [128, 128, 44]
