
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import Serialization, encode
from geossm.serialization import events as ev
from tests.shared_data import unpack

DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
SENSOR = (34, 34, 2)

try:
    import tonic.functional as tonic_functional
    import tonic.slicers as tonic_slicers
    TONIC_ERROR = None
except Exception as err:  # any import failure means: compare without tonic
    tonic_functional = tonic_slicers = None
    TONIC_ERROR = f"tonic is not importable ({type(err).__name__}: {err}); pip install tonic"

needs_tonic = pytest.mark.skipif(tonic_functional is None, reason=TONIC_ERROR or "")


def read_nmnist(path):
    """Official N-MNIST binary: 5 bytes per event; y == 240 marks a timestamp overflow (+2^13)."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = raw[:, 0], raw[:, 1]
    p = raw[:, 2] >> 7
    t = ((raw[:, 2] & 127) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    t = t + (1 << 13) * np.cumsum(y == 240)
    keep = y != 240
    out = np.zeros(int(keep.sum()), dtype=DTYPE)
    out["x"], out["y"], out["t"], out["p"] = x[keep], y[keep], t[keep], p[keep]
    return out


@pytest.fixture(scope="module")
def nmnist(tmp_path_factory):
    root = unpack(tmp_path_factory, "events", "nmnist_600train_100test.tar.xz")
    files = sorted(root.rglob("*.bin"))
    assert len(files) == 700
    return [read_nmnist(f) for f in files], files


def _synthetic(n, seed, sensor=SENSOR, t_max=100_000):
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=DTYPE)
    out["x"] = rng.integers(0, sensor[0], n)
    out["y"] = rng.integers(0, sensor[1], n)
    out["t"] = np.sort(rng.integers(0, t_max, n))
    out["p"] = rng.integers(0, sensor[2], n)
    return out


def _same_slices(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_reader_matches_tonic(nmnist):
    if tonic_functional is None:
        pytest.skip(TONIC_ERROR)
    import tonic.io
    events, files = nmnist
    for i in range(0, 700, 70):
        ref = tonic.io.read_mnist_file(str(files[i]), dtype=DTYPE)
        assert np.array_equal(ref, events[i])


@needs_tonic
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**31 - 1), st.integers(500, 30_000),
       st.floats(0, 0.9), st.booleans())
def test_slice_by_time_and_count_match_tonic(n, seed, window, overlap_frac, incomplete):
    e = _synthetic(n, seed)
    overlap = int(window * overlap_frac)
    _same_slices(ev.slice_by_time(e, window, overlap, incomplete),
                 tonic_slicers.slice_events_by_time(e, window, overlap, incomplete))
    count = max(1, window // 100)
    ov = int(count * overlap_frac)
    _same_slices(ev.slice_by_count(e, count, ov, incomplete),
                 tonic_slicers.slice_events_by_count(e, count, ov, incomplete))


@needs_tonic
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 400), st.integers(0, 2**31 - 1), st.integers(1, 20), st.floats(0, 0.9))
def test_bin_slicers_match_tonic(n, seed, bins, overlap):
    e = _synthetic(n, seed)
    _same_slices(ev.slice_by_time_bins(e, bins, overlap),
                 tonic_slicers.slice_events_by_time_bins(e, bins, overlap))
    _same_slices(ev.slice_by_event_bins(e, bins, overlap),
                 tonic_slicers.slice_events_by_event_bins(e, bins, overlap))


def test_slicers_on_torch_events_match_numpy():
    e = _synthetic(300, 1)
    te = ev.as_tensors(e)
    for fn, args in ((ev.slice_by_time, (10_000, 2_000, True)), (ev.slice_by_count, (40, 10)),
                     (ev.slice_by_time_bins, (7, 0.2)), (ev.slice_by_event_bins, (7, 0.2))):
        a, b = fn(e, *args), fn(te, *args)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.array_equal(x["t"], y["t"].numpy()) and np.array_equal(x["x"], y["x"].numpy())


FRAME_CONFIGS = [
    dict(time_window=10_000),
    dict(time_window=25_000, overlap=5_000, include_incomplete=True),
    dict(event_count=500, overlap=100),
    dict(event_count=1000, include_incomplete=True),
    dict(n_time_bins=10),
    dict(n_time_bins=5, overlap=0.25),
    dict(n_event_bins=8, overlap=0.1),
]


@pytest.mark.parametrize("config", FRAME_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_to_frame_equals_tonic_on_real_nmnist(nmnist, config):
    if tonic_functional is None:
        pytest.skip(TONIC_ERROR)
    events, files = nmnist
    # all 100 test recordings and every 4th training one (250 recordings)
    chosen = [e for i, (e, f) in enumerate(zip(events, files)) if "Test" in f.parts or i % 4 == 0]
    assert len(chosen) >= 250
    for e in chosen:
        ours = ev.to_frame(e, SENSOR, **config)
        ref = tonic_functional.to_frame_numpy(e.copy(), SENSOR, **config)
        assert ours.dtype == ref.dtype == np.int16
        assert np.array_equal(ours, ref)


def test_to_frame_matches_brute_force_without_tonic(nmnist):
    # independent of tonic: count every event of every window by hand
    events, _ = nmnist
    for e in events[::50]:
        frames = ev.to_frame(e, SENSOR, time_window=20_000, overlap=5_000)
        start = e["t"][0]
        for i in range(frames.shape[0]):
            lo, hi = start + i * 15_000, start + i * 15_000 + 20_000
            sel = e[(e["t"] >= lo) & (e["t"] < hi)]
            ref = np.zeros(SENSOR[::-1], dtype=np.int64)
            for x, y, p in zip(sel["x"], sel["y"], sel["p"]):
                ref[p, y, x] += 1
            assert np.array_equal(frames[i], ref)


def test_to_frame_torch_equals_numpy(nmnist):
    events, _ = nmnist
    for e in events[:8]:
        for config in FRAME_CONFIGS:
            a = ev.to_frame(e, SENSOR, **config)
            b = ev.to_frame(ev.as_tensors(e), SENSOR, **config)
            assert b.dtype == torch.int16 and np.array_equal(a, b.numpy())


def test_to_frame_empty_input():
    empty = np.zeros(0, dtype=DTYPE)
    assert ev.to_frame(empty, SENSOR, time_window=1000).shape == (1, 2, 34, 34)
    assert ev.to_frame(empty, SENSOR, event_count=10).shape == (1, 2, 34, 34)
    assert ev.to_frame(empty, SENSOR, n_time_bins=4).shape == (4, 2, 34, 34)
    assert ev.to_frame(empty, SENSOR, n_event_bins=3).sum() == 0
    te = ev.as_tensors(empty)
    assert ev.to_frame(te, SENSOR, n_time_bins=4).shape == (4, 2, 34, 34)


def test_to_frame_single_polarity_and_negative_polarity():
    e = _synthetic(200, 3)
    e["p"] = 1
    one = ev.to_frame(e, (34, 34, 1), n_time_bins=3)
    assert one.shape == (3, 1, 34, 34) and one.sum() == ev.to_frame(e, SENSOR, n_time_bins=3).sum()
    e2 = _synthetic(200, 3)
    signed = e2.copy()
    signed["p"] = np.where(e2["p"] > 0, 1, -1)
    assert np.array_equal(ev.to_frame(signed, SENSOR, event_count=50),
                          ev.to_frame(e2, SENSOR, event_count=50))


@pytest.mark.parametrize("call, exc, match", [
    (lambda e: ev.to_frame(e, SENSOR), ValueError,
     r"time_window/event_count/n_time_bins/n_event_bins: expected exactly one to be set, got none"),
    (lambda e: ev.to_frame(e, SENSOR, time_window=1, event_count=2), ValueError,
     r"expected exactly one to be set, got \['time_window', 'event_count'\]"),
    (lambda e: ev.to_frame(e, (34, 34), time_window=10), ValueError,
     r"sensor_size: expected \(W, H, P\) positive ints, got \(34, 34\)"),
    (lambda e: ev.to_frame(e, (10, 34, 2), time_window=10), ValueError,
     r"events\['x'\]: expected values in \[0, 10\), got \[0, 33\]"),
    (lambda e: ev.to_frame(e, (34, 34, 1), time_window=10), ValueError,
     r"events\['p'\]: expected a single polarity for sensor_size P = 1, got values in \[0, 1\]"),
    (lambda e: ev.slice_by_time(e, 0), ValueError, r"time_window: expected a positive number, got 0"),
    (lambda e: ev.slice_by_time(e, 10, overlap=10), ValueError,
     r"overlap: expected less than time_window = 10, got 10"),
    (lambda e: ev.slice_by_count(e, 5, overlap=6), ValueError,
     r"overlap: expected less than event_count = 5, got 6"),
    (lambda e: ev.slice_by_count(e, 2.5), ValueError, r"event_count: expected a positive int, got 2.5"),
    (lambda e: ev.slice_by_time_bins(e, 4, overlap=1.0), ValueError,
     r"overlap: expected a fraction of a bin in \[0, 1\), got 1.0"),
    (lambda e: ev.slice_by_event_bins(e, 0), ValueError, r"bin_count: expected a positive int, got 0"),
    (lambda e: ev.to_frame(e[["x", "t", "p"]], SENSOR, time_window=10), ValueError,
     r"events: expected a structured array with fields .* \(missing \['y'\]\)"),
    (lambda e: ev.to_frame({"x": torch.zeros(2)}, SENSOR, time_window=10), ValueError,
     r"events: expected a dict with keys .* \(missing \['y', 't', 'p'\]\)"),
    (lambda e: ev.to_frame([1, 2], SENSOR, time_window=10), TypeError,
     r"events: expected a numpy structured array .* got list"),
    (lambda e: ev.to_frame(e[::-1], SENSOR, time_window=10), ValueError,
     r"events\['t'\]: expected timestamps sorted ascending"),
    (lambda e: ev.to_voxel_grid(e, SENSOR, 0), ValueError, r"n_time_bins: expected a positive int, got 0"),
    (lambda e: ev.to_time_surface(e, SENSOR, 1000, 0), ValueError, r"tau: expected a positive number, got 0"),
    (lambda e: ev.serialize_events(e, SENSOR, -1.0), ValueError, r"time_scale: expected a positive number, got -1.0"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_synthetic(100, 0))


def _voxel_reference(e, sensor, bins):
    w, h, _ = sensor
    out = np.zeros((bins, 1, h, w))
    t = e["t"].astype(np.float64)
    span = t[-1] - t[0]
    for x, y, ti, p in zip(e["x"], e["y"], t, e["p"]):
        ts = (bins - 1) * (ti - t[0]) / span if span > 0 else 0.0
        pol = 1.0 if p > 0 else -1.0
        for b in range(bins):
            out[b, 0, y, x] += pol * max(0.0, 1.0 - abs(b - ts))
    return out


def test_to_voxel_grid_matches_formula():
    e = _synthetic(150, 5, sensor=(8, 6, 2))
    for bins in (1, 2, 5):
        ours = ev.to_voxel_grid(e, (8, 6, 2), bins)
        assert ours.shape == (bins, 1, 6, 8)
        assert np.allclose(ours, _voxel_reference(e, (8, 6, 2), bins))
        tt = ev.to_voxel_grid(ev.as_tensors(e), (8, 6, 2), bins)
        assert tt.dtype == torch.float32 and np.allclose(tt.numpy(), ours, atol=1e-5)
    # every event contributes its polarity once in total
    assert np.isclose(ev.to_voxel_grid(e, (8, 6, 2), 4).sum(), np.where(e["p"] > 0, 1, -1).sum())
    single = e[:1]
    assert np.isclose(ev.to_voxel_grid(single, (8, 6, 2), 3)[0].sum(), 1 if single["p"][0] else -1)
    assert ev.to_voxel_grid(e[:0], (8, 6, 2), 3).sum() == 0


def test_to_voxel_grid_relates_to_tonic(nmnist):
    if tonic_functional is None:
        pytest.skip(TONIC_ERROR)
    events, _ = nmnist
    # tonic scales time by B (not B - 1) and drops what falls in bin B: ours with B + 1 bins, cut.
    for e in events[::35]:
        ref = tonic_functional.to_voxel_grid_numpy(e.copy(), SENSOR, 6)
        assert np.allclose(ev.to_voxel_grid(e, SENSOR, 7)[:6], ref)


def test_to_time_surface_equals_tonic(nmnist):
    if tonic_functional is None:
        pytest.skip(TONIC_ERROR)
    events, _ = nmnist
    for e in events[::70]:
        for dt, tau, overlap, inc in ((20_000, 5_000.0, 0, False), (30_000, 10_000.0, 10_000, True)):
            ours = ev.to_time_surface(e, SENSOR, dt, tau, overlap, inc)
            ref = tonic_functional.to_timesurface_numpy(e.copy(), SENSOR, dt, tau, overlap, inc)
            assert ours.shape == ref.shape
            assert np.allclose(ours, ref, rtol=1e-12, atol=0)
            tt = ev.to_time_surface(ev.as_tensors(e), SENSOR, dt, tau, overlap, inc)
            assert np.allclose(tt.numpy(), ours, atol=1e-6)


def test_to_time_surface_brute_force():
    e = _synthetic(80, 9, sensor=(5, 4, 2), t_max=1000)
    dt, tau = 200, 150.0
    ours = ev.to_time_surface(e, (5, 4, 2), dt, tau)
    t0 = e["t"][0]
    for i in range(ours.shape[0]):
        end = t0 + i * dt + dt
        sel = e[e["t"] < end]
        mem = np.full((2, 4, 5), -np.inf)
        for x, y, t, p in zip(sel["x"], sel["y"], sel["t"], sel["p"]):
            mem[p, y, x] = t
        assert np.allclose(ours[i], np.exp(-(end - mem) / tau))


def test_serialize_events():
    e = _synthetic(500, 2)
    s = ev.serialize_events(e, SENSOR, time_scale=1e-3, order="hilbert")
    s = Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)
    grid = s.extras["grid_coord"]
    assert torch.equal(grid[:, 0], torch.from_numpy(e["x"]))
    assert torch.equal(grid[:, 2], torch.from_numpy((e["t"] - e["t"].min()) // 1000))
    code = s.extras["code"]
    assert torch.equal(code, encode(grid, "hilbert", depth=int(s.extras["depth"])))
    assert bool((code[s.order][1:] >= code[s.order][:-1]).all())
    assert torch.equal(s.extras["p"], torch.from_numpy(e["p"]))
    two = ev.as_tensors(np.concatenate([e, e]))
    batch = torch.arange(2).repeat_interleave(500)
    sb = ev.serialize_events(two, SENSOR, 1e-3, "z", batch=batch)
    assert sb.cu_seqlens.tolist() == [0, 500, 1000]


def test_per_sample_serialization_orders_each_recording_as_alone():
    """``per_sample=True``: a short recording batched with a long, later one keeps the order
    (and local codes) it gets alone; the batch-wide default anchors time and the depth at the
    whole batch, which changes the short recording's Hilbert order."""
    short, long = _synthetic(300, 1), _synthetic(400, 2)
    long["t"] = long["t"] * 40 + 7_000_000  # a later recording, 40x as long: more depth bits
    alone = ev.serialize_events(short, SENSOR, 1e-3, "hilbert")
    both = ev.as_tensors(np.concatenate([short, long]))
    batch = torch.arange(2).repeat_interleave(torch.tensor([300, 400]))
    for per_sample, same in ((True, True), (False, False)):
        packed = ev.serialize_events(both, SENSOR, 1e-3, "hilbert", batch=batch,
                                     per_sample=per_sample)
        assert packed.cu_seqlens.tolist() == [0, 300, 700]
        assert torch.equal(packed.order[:300], alone.order) is same
    tail = ev.serialize_events(long, SENSOR, 1e-3, "hilbert")
    packed = ev.serialize_events(both, SENSOR, 1e-3, "hilbert", batch=batch, per_sample=True)
    assert torch.equal(packed.order[300:] - 300, tail.order)
    with pytest.raises(ValueError, match=r"per_sample=True gives every recording its own depth"):
        ev.serialize_events(both, SENSOR, 1e-3, batch=batch, depth=12, per_sample=True)
