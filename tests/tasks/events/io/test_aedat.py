import numpy as np
import pytest

from geossm.tasks.events import io

from .. import encoders as enc
from . import canon, write


def test_aedat4_real(samples):
    path = samples / "sample.aedat4"
    rec = io.read_events(path)
    assert rec.sensor_size == (320, 240, 2)
    assert len(rec.events) == 111_954
    assert np.all(np.diff(rec.events["t"]) >= 0)
    assert rec.events["x"].max() < 320 and rec.events["y"].max() < 240
    span = rec.events["t"][-1] - rec.events["t"][0]
    assert 0.55e6 < span < 0.65e6  # the README's 0.59 s
    chunks = list(io.iter_events(path, chunk_size=10_000))
    assert sum(map(len, chunks)) == 111_954 and max(map(len, chunks)) <= 10_000
    aedat = pytest.importorskip("aedat")
    ref = np.concatenate([p["events"] for p in aedat.Decoder(str(path)) if "events" in p])
    got = io.read_events(path).events
    np.testing.assert_array_equal(got["t"], ref["t"].astype(np.int64))
    np.testing.assert_array_equal(got["x"], ref["x"])
    np.testing.assert_array_equal(got["p"], ref["on"])


def test_aedat4_truncated(samples, tmp_path):
    data = (samples / "sample.aedat4").read_bytes()
    cut = write(tmp_path, "cut.aedat4", data[:5000])
    with pytest.raises(io.EventFileError, match=r"cut\.aedat4 at byte offset \d+: truncated "
                                                r"AEDAT 4\.0 packet"):
        io.read_events(cut)
    head = write(tmp_path, "head.aedat4", data[:100])
    with pytest.raises(io.EventFileError, match="head.aedat4 at byte offset 100: truncated "
                                                "AEDAT 4.0 IOHeader"):
        io.read_events(head)


def test_aedat4_corrupt_packet(samples, tmp_path):
    data = bytearray((samples / "sample.aedat4").read_bytes())
    data[2350:2354] = b"\x00" * 4  # the first packet's LZ4 frame magic (packet at 2342)
    bad = write(tmp_path, "bad.aedat4", bytes(data))
    with pytest.raises(io.EventFileError, match=r"bad\.aedat4 at byte offset 2342: cannot "
                                                r"decompress AEDAT 4\.0 packet"):
        io.read_events(bad)


def test_aedat3_round_trip(tmp_path):
    ev = enc.random_events(1000, seed=6, width=128, height=128)
    path = write(tmp_path, "user01_lab.aedat", enc.aedat3(ev, per_packet=128))
    rec = io.read_events(path)
    assert rec.sensor_size == (128, 128, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))


def test_aedat3_polarity_event_size_too_small(tmp_path):
    """A polarity packet declaring events of fewer than 8 bytes is malformed, not a numpy error
    (found by the reader fuzz test)."""
    ev = enc.random_events(10, seed=7, width=128, height=128)
    data = bytearray(enc.aedat3(ev, per_packet=10))
    head = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    data[head + 4:head + 8] = (5).to_bytes(4, "little")  # event size 8 -> 5
    bad = write(tmp_path, "small.aedat", bytes(data))
    with pytest.raises(io.EventFileError, match=r"small\.aedat at byte offset \d+: malformed "
                                                r"AEDAT 3\.1 polarity packet: event size 5"):
        io.read_events(bad)


def test_aedat4_malformed_sensor_size(samples, tmp_path):
    """A damaged sizeX in the header XML is a file error, not a bare int() ValueError (found by
    the reader fuzz test)."""
    data = (samples / "sample.aedat4").read_bytes()
    key = b'key="sizeX" type="int">320<'
    assert data.count(key) == 1
    bad = write(tmp_path, "size.aedat4", data.replace(key, b'key="sizeX" type="int">!40<'))
    with pytest.raises(io.EventFileError, match=r"size\.aedat4 at byte offset \d+: malformed "
                                                r"AEDAT 4\.0 header: sensor size sizeX='!40'"):
        io.read_events(bad)
