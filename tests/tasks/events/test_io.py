import numpy as np
import pytest

from geossm.tasks.events import io

from . import encoders as enc


def canon(ev):
    """Events in a canonical order (t, y, x, p), as plain int64 columns."""
    cols = [np.asarray(ev[k]).astype(np.int64) for k in ("x", "y", "t", "p")]
    order = np.lexsort((cols[3], cols[0], cols[1], cols[2]))
    return np.stack([c[order] for c in cols], 1)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ real files

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


# ------------------------------------------------------------------- round trips (encoders)

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


def test_aedat3_round_trip(tmp_path):
    ev = enc.random_events(1000, seed=6, width=128, height=128)
    path = write(tmp_path, "user01_lab.aedat", enc.aedat3(ev, per_packet=128))
    rec = io.read_events(path)
    assert rec.sensor_size == (128, 128, 2)
    np.testing.assert_array_equal(canon(rec.events), canon(ev))


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


# ------------------------------------------------------------------------- malformed input

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
