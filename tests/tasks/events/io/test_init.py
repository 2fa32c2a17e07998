import numpy as np
import pytest

from geossm.tasks.events import io

from .. import encoders as enc
from . import write


def test_truncated_fixed_size_records(tmp_path):
    ev = enc.random_events(10, seed=8, width=34, height=34)
    raw = bytearray()
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]):
        raw += bytes([x, y, (int(p) << 7) | (int(t) >> 16 & 0x7F), int(t) >> 8 & 0xFF,
                      int(t) & 0xFF])
    path = write(tmp_path, "d.bin", bytes(raw[:-2]))
    with pytest.raises(io.EventFileError, match=r"d\.bin at byte offset 45: truncated N-MNIST "
                                                r"event: 3 trailing byte"):
        io.read_events(path)
    data = enc.evt2(enc.random_events(20, seed=9))
    path = write(tmp_path, "t.raw", data[:-1])
    with pytest.raises(io.EventFileError, match=r"t\.raw at byte offset \d+: truncated EVT 2\.0"):
        list(io.iter_events(path))
    ev = enc.random_events(5, seed=10, width=304, height=240)
    path = write(tmp_path, "t.dat", enc.dat(ev)[:-3])
    with pytest.raises(io.EventFileError, match=r"t\.dat at byte offset \d+: truncated \.dat"):
        io.read_events(path)


def test_truncated_es_and_aedat3(tmp_path):
    ev = enc.random_events(50, seed=11, width=346, height=260)
    data = enc.es_dvs(ev)
    path = write(tmp_path, "t.es", data[:-2])
    with pytest.raises(io.EventFileError, match=rf"t\.es at byte offset {len(data) - 5}: "
                                                r"truncated Event Stream event \(3 of 5"):
        io.read_events(path)
    path = write(tmp_path, "gen.es", b"Event Stream" + bytes([2, 0, 0, 0]))
    with pytest.raises(io.EventFileError, match="gen.es at byte offset 15: Event Stream type 0"):
        io.read_events(path)
    data = enc.aedat3(enc.random_events(50, seed=12, width=128, height=128), per_packet=20)
    path = write(tmp_path, "t.aedat", data[:-4])
    with pytest.raises(io.EventFileError, match=r"t\.aedat at byte offset \d+: truncated "
                                                r"AEDAT 3\.1 packet: 10 events"):
        io.read_events(path)


def test_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="event file not found: .*nope.raw"):
        io.read_events(tmp_path / "nope.raw")
    path = write(tmp_path, "x.raw", b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="x.raw: a .raw file without an 'evt 2.0'"):
        io.read_events(path)
    assert len(io.read_events(path, format="evt2").events) == 0  # no time base: no events
    with pytest.raises(ValueError, match="format: expected one of nmnist, .* got 'evt4'"):
        io.read_events(path, format="evt4")
    path = write(tmp_path, "x.weird", b"hello")
    with pytest.raises(ValueError, match="cannot tell the event format from extension '.weird'"):
        io.read_events(path)
    np.save(tmp_path / "bad.npy", np.zeros((3, 3)))
    with pytest.raises(io.EventFileError, match=r"bad\.npy: \.npy: expected a structured array"):
        io.read_events(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="chunk_size: expected a positive int, got 0"):
        next(io.iter_events(tmp_path / "bad.npy", chunk_size=0))
