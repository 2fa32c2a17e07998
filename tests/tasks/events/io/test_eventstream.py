import numpy as np

from geossm.tasks.events import io

from .. import encoders as enc
from . import canon, write


def test_es_round_trip_dvs_and_atis(tmp_path):
    ev = enc.random_events(2000, seed=4, width=346, height=260, span=2_000_000)
    path = write(tmp_path, "d.es", enc.es_dvs(ev))
    rec = io.read_events(path)
    assert rec.sensor_size == (346, 260, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))
    got = np.concatenate(list(io.iter_events(path, chunk_size=7)))  # events cut by chunks
    np.testing.assert_array_equal(canon(got), canon(ev))
    ev2 = enc.random_events(800, seed=5, width=304, height=240, span=500_000)
    atis = write(tmp_path, "a.es", enc.es_atis(ev2))
    np.testing.assert_array_equal(canon(io.read_events(atis).events), canon(ev2))
