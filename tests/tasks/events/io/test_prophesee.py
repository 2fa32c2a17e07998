import numpy as np
import pytest

from geossm.tasks.events import io

from .. import encoders as enc
from . import canon, write


def test_evt2_real_matches_expelliarmus(samples):
    path = samples / "evt2_sample.raw"
    assert io.detect_format(path) == "evt2"
    rec = io.read_events(path)
    assert len(rec.events) == 539_481
    assert np.all(np.diff(rec.events["t"]) >= 0)
    chunks = list(io.iter_events(path, chunk_size=100_000))
    assert max(len(c) for c in chunks) <= 100_000
    np.testing.assert_array_equal(canon(np.concatenate(chunks)), canon(rec.events))
    expelliarmus = pytest.importorskip("expelliarmus")
    wizard = expelliarmus.Wizard(encoding="evt2")
    wizard.set_file(str(path))
    np.testing.assert_array_equal(canon(rec.events), canon(wizard.read()))


def test_evt2_round_trip_with_wraparound(tmp_path):
    ev = enc.random_events(3000, seed=1, t0=(1 << 34) - 100_000, span=200_000)
    path = write(tmp_path, "wrap.raw", enc.evt2(ev))
    rec = io.read_events(path)
    assert rec.sensor_size == (640, 480, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))
    small = np.concatenate(list(io.iter_events(path, chunk_size=97)))
    np.testing.assert_array_equal(canon(small), canon(ev))


def test_evt3_round_trip_vectors_and_wraparound(tmp_path):
    ev = enc.random_events(4000, seed=2, width=1280, height=720, t0=(1 << 24) - 50_000,
                           span=100_000, bursts=True)
    data = enc.evt3(ev)
    words = np.frombuffer(data[data.index(b"% end\n") + 6:], "<u2") >> 12
    assert (words == 0x4).any() and (words == 0x5).any() and (words == 0x3).any()
    path = write(tmp_path, "v.raw", data)
    assert io.detect_format(path) == "evt3"
    rec = io.read_events(path)
    assert rec.sensor_size == (1280, 720, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))
    for chunk in (5, 64, 1001):  # state (row, time, column base) carried across chunks
        got = np.concatenate(list(io.iter_events(path, chunk_size=chunk)))
        np.testing.assert_array_equal(canon(got), canon(ev))


@pytest.mark.parametrize("version", [1, 2])
def test_dat_round_trip(tmp_path, version):
    w, h = (304, 240)
    ev = enc.random_events(500, seed=3, width=w, height=h)
    path = write(tmp_path, "cd.dat", enc.dat(ev, w, h, version))
    rec = io.read_events(path)
    assert rec.sensor_size == (304, 240, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))


def test_malformed_words_name_the_offset(tmp_path):
    head = b"% evt 2.0\n% end\n"
    words = np.array([(0x8 << 28) | 5, (0x3 << 28) | 7], "<u4").tobytes()
    path = write(tmp_path, "bad.raw", head + words)
    with pytest.raises(io.EventFileError, match=rf"bad\.raw at byte offset {len(head) + 4}: "
                                                r"unknown EVT 2\.0 event type 0x3"):
        io.read_events(path)
    head3 = b"% evt 3.0\n% end\n"
    path = write(tmp_path, "bad3.raw", head3 + np.array([0x8001, 0x9000], "<u2").tobytes())
    with pytest.raises(io.EventFileError, match=rf"at byte offset {len(head3) + 2}: unknown "
                                                r"EVT 3\.0 event type 0x9"):
        io.read_events(path)
