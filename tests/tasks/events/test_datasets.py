import csv

import numpy as np
import pytest

from geossm.tasks.events import DVSGesture, NMNIST

from . import encoders as enc


def test_nmnist_official_layout(nmnist_root):
    train = NMNIST(nmnist_root, "train")
    test = NMNIST(nmnist_root, "test")
    assert len(train) == 600 and len(test) == 100
    assert sorted(set(test.labels)) == list(range(10))
    s = test[0]
    assert s["frames"].shape == (6, 34, 34) and s["frames"].dtype == np.float32
    assert s["label"] == 0
    small = NMNIST(nmnist_root, "train", limit=20, representation="events", max_events=256)
    assert len(small) == 20 and sorted(set(small.labels)) == list(range(10))
    ev = small[3]["events"]
    assert ev.shape == (256, 4) and ev[0, 2] == 0 and np.all(np.diff(ev[:, 2]) >= 0)
    vox = NMNIST(nmnist_root, "test", limit=10, representation="voxel", n_time_bins=4)[0]
    assert vox["frames"].shape == (4, 34, 34) and np.abs(vox["frames"]).max() == 1.0


def test_nmnist_augment_keeps_events_on_the_sensor(nmnist_root):
    ds = NMNIST(nmnist_root, "train", limit=10, representation="events", max_events=10_000,
                augment=[{"name": "DropEvent", "max_rate": 0.3},
                         {"name": "RandomAffine", "max_shift": 3}])
    a, b = ds[0]["events"], ds[0]["events"]
    assert not np.array_equal(a, b)  # a fresh draw per call
    assert a[:, 0].max() < 34 and a[:, 1].max() < 34 and a[:, :2].min() >= 0
    assert len(a) < len(ds.recordings[0])


def test_nmnist_augments_only_the_training_split(nmnist_root):
    """One config serves every split: augment=True must not perturb test samples."""
    kw = dict(limit=10, representation="events", max_events=10_000,
              augment=[{"name": "DropEvent", "max_rate": 0.3},
                       {"name": "RandomAffine", "max_shift": 3, "max_rotation": 20.0}])
    test = NMNIST(nmnist_root, "test", **kw)
    assert not test.augment and NMNIST(nmnist_root, "train", **kw).augment
    a, b = test[0]["events"], test[0]["events"]
    assert np.array_equal(a, b) and len(a) == len(test.recordings[0])


def test_nmnist_errors(tmp_path, nmnist_root):
    with pytest.raises(FileNotFoundError, match="NMNIST: data.root not found"):
        NMNIST(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"NMNIST: expected the folder .*Train"):
        NMNIST(tmp_path)
    with pytest.raises(ValueError, match="NMNIST: split must be one of .* got 'dev'"):
        NMNIST(nmnist_root, "dev")
    with pytest.raises(ValueError, match="representation: expected one of .* got 'graph'"):
        NMNIST(nmnist_root, representation="graph")
    with pytest.raises(ValueError, match="data.root is not set"):
        NMNIST(None)


def test_dvs_gesture_official_layout(tmp_path):
    """DVS128 Gesture layout written here (the real recordings are not available offline)."""
    ev = enc.random_events(3000, seed=1, width=128, height=128, span=3_000_000)
    for user in ("user01_fluorescent", "user24_led"):
        (tmp_path / f"{user}.aedat").write_bytes(enc.aedat3(ev, per_packet=500))
        with open(tmp_path / f"{user}_labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "startTime_usec", "endTime_usec"])
            w.writerow([1, 100_000, 1_000_000])
            w.writerow([11, 1_500_000, 2_900_000])
    (tmp_path / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n")
    (tmp_path / "trials_to_test.txt").write_text("user24_led.aedat\n")
    ds = DVSGesture(tmp_path, "train", representation="frames", n_time_bins=2)
    assert len(ds) == 2 and ds.labels == [0, 10]
    t = ds.recordings[1]["t"]
    assert t.min() >= 1_500_000 and t.max() < 2_900_000
    assert ds[0]["frames"].shape == (4, 128, 128)
    with pytest.raises(ValueError, match="split must be one of"):
        DVSGesture(tmp_path, "dev")


def _write_tonic_gesture(root, ev_by_user):
    """tonic's preprocessed layout: <split folder>/<user>/<label>.npy, (N, 4) x, y, p, t [ms]."""
    for (folder, user), per_label in ev_by_user.items():
        out = root / folder / user
        out.mkdir(parents=True)
        for label, ev in per_label.items():
            arr = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] / 1000.0], 1).astype(np.float64)
            np.save(out / f"{label}.npy", arr)


def test_dvs_gesture_tonic_layout(tmp_path):
    """tonic's .npy layout written here (the real recordings are not available offline)."""
    a = enc.random_events(500, seed=2, width=128, height=128, span=2_000_000)
    b = enc.random_events(300, seed=3, width=128, height=128, span=1_000_000)
    _write_tonic_gesture(tmp_path, {("ibmGestureTrain", "user01_led"): {0: a, 10: b},
                                    ("ibmGestureTest", "user24_led"): {4: b}})
    train = DVSGesture(tmp_path, "train", n_time_bins=2)
    assert train.layout == "tonic" and train.labels == [0, 10]
    got = train.recordings[0]
    assert np.array_equal(got["x"], a["x"]) and np.array_equal(got["p"], a["p"])
    # milliseconds (as tonic stores them) back to integer microseconds
    assert np.abs(got["t"] - a["t"]).max() <= 1
    assert train[1]["frames"].shape == (4, 128, 128)
    test = DVSGesture(tmp_path, "test", layout="tonic", representation="events")
    assert len(test) == 1 and test.labels == [4] and test[0]["events"].shape == (300, 4)


def test_dvs_gesture_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="trials_to_train.txt .*tonic's layout"):
        DVSGesture(tmp_path, "train")
    with pytest.raises(ValueError, match="layout must be one of .* got 'h5'"):
        DVSGesture(tmp_path, "train", layout="h5")
    with pytest.raises(FileNotFoundError, match="expected the folder .*ibmGestureTest"):
        DVSGesture(tmp_path, "test", layout="tonic")
    bad = tmp_path / "ibmGestureTrain" / "user01_led"
    bad.mkdir(parents=True)
    np.save(bad / "11.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="label in 0..10"):
        DVSGesture(tmp_path, "train")
    (bad / "11.npy").unlink()
    np.save(bad / "3.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"expected an \(N, 4\) array"):
        DVSGesture(tmp_path, "train")
    np.save(bad / "3.npy", np.array([[200.0, 0, 1, 0.5]]))
    with pytest.raises(ValueError, match="outside the 128 x 128 sensor"):
        DVSGesture(tmp_path, "train")[0]  # lazy: the events are checked when read


def test_augment_rotation_and_scale_move_events(nmnist_root):
    """Rotation / scaling about the centre: events move, stay on the sensor, and with all
    augmentations off the recording is unchanged."""
    ds = NMNIST(nmnist_root, "train", limit=10, representation="events", max_events=10_000,
                augment=[{"name": "RandomAffine", "max_shift": 0, "max_rotation": 30.0,
                          "max_scale": 0.2}])
    ev = ds[0]["events"]
    assert ev[:, :2].min() >= 0 and ev[:, :2].max() < 34
    ref = ds.recordings[0]
    assert len(ev) <= len(ref)
    moved = len(ev) != len(ref) or not np.array_equal(ev[:, 0], ref["x"])
    assert moved
    still = NMNIST(nmnist_root, "train", limit=10, representation="events", max_events=10_000,
                   augment=[{"name": "DropEvent", "max_rate": 0.0},
                            {"name": "RandomAffine", "max_shift": 0}])[0]["events"]
    assert np.array_equal(still[:, 0], ref["x"]) and np.array_equal(still[:, 1], ref["y"])
    with pytest.raises(ValueError, match="max_scale: expected a number in"):
        NMNIST(nmnist_root, "train", limit=10, augment=[{"name": "RandomAffine", "max_scale": 1.5}])


# ------------------------------------------------------------------ lazy loading (tonic-style)

def _holds_arrays(value) -> bool:
    """Whether ``value`` (an attribute of a dataset, walked into containers) holds an array."""
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, dict):
        return any(_holds_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    return False


def _count_reads(monkeypatch):
    """Wrap the datasets' ``read_events``: the returned list collects the files read."""
    import geossm.tasks.events.datasets as module

    calls, real = [], module.read_events
    monkeypatch.setattr(module, "read_events",
                        lambda path, fmt=None: calls.append(path) or real(path, fmt))
    return calls


def test_nmnist_reads_each_recording_in_getitem(nmnist_root, monkeypatch):
    """Construction lists the files only; ``ds[i]`` reads file i and equals the preprocessing of
    the recording read here (the eager dataset's sample)."""
    from geossm.tasks.events.io import read_events

    calls = _count_reads(monkeypatch)
    ds = NMNIST(nmnist_root, "test", limit=10, representation="events", max_events=256)
    assert calls == [] and len(ds) == 10
    assert not any(_holds_arrays(v) for v in vars(ds).values())
    for i in (7, 2):
        ref = read_events(ds.files[i], "nmnist").events
        got = ds[i]
        assert calls[-1] == ds.files[i]
        want = ds.preprocess({"events": ref, "sensor_size": ds.sensor_size, "label": ds.labels[i]})
        assert got.keys() == want.keys() and np.array_equal(got["events"], want["events"])
        assert got["label"] == ds.labels[i] == int(ds.files[i].parent.name)
    assert len(calls) == 2
    ds[7]
    assert len(calls) == 3  # no cache by default: read again


def test_cache_recordings_reads_each_file_once(nmnist_root, monkeypatch):
    calls = _count_reads(monkeypatch)
    cached = NMNIST(nmnist_root, "test", limit=5, cache_recordings=True)
    plain = NMNIST(nmnist_root, "test", limit=5)
    first, again = cached[3], cached[3]
    assert len(calls) == 1
    assert np.array_equal(first["frames"], again["frames"])
    assert np.array_equal(first["frames"], plain[3]["frames"])
    with pytest.raises(TypeError, match="cache_recordings: expected True or False, got 'yes'"):
        NMNIST(nmnist_root, "test", cache_recordings="yes")


def test_dvs_gesture_official_layout_reads_trials_lazily(tmp_path, monkeypatch):
    """Construction reads the label files only; a gesture is the slice ``start <= t < end`` of
    its trial, read when the sample is (consecutive gestures of a trial: one read)."""
    trials = {"user01_fluorescent": enc.random_events(4000, seed=4, width=128, height=128,
                                                      span=3_000_000),
              "user02_led": enc.random_events(2500, seed=5, width=128, height=128,
                                              span=3_000_000)}
    rows = [(3, 0, 900_000), (7, 1_000_000, 2_000_000), (11, 2_100_000, 3_000_000)]
    for user, ev in trials.items():
        (tmp_path / f"{user}.aedat").write_bytes(enc.aedat3(ev, per_packet=300))
        with open(tmp_path / f"{user}_labels.csv", "w", newline="") as f:
            csv.writer(f).writerows([["class", "startTime_usec", "endTime_usec"], *rows])
    (tmp_path / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser02_led.aedat\n")
    calls = _count_reads(monkeypatch)
    ds = DVSGesture(tmp_path, "train", representation="events", max_events=100_000)
    assert calls == [] and len(ds) == 6 and ds.labels == [2, 6, 10] * 2
    assert not any(_holds_arrays(v) for v in vars(ds).values())
    for i in range(len(ds)):
        ev = trials[list(trials)[i // 3]]
        _, start, end = rows[i % 3]
        want = ev[(ev["t"] >= start) & (ev["t"] < end)]
        got = ds.recordings[i]
        for field in ("x", "y", "t", "p"):
            assert np.array_equal(got[field], want[field]), (i, field)
        sample = ds[i]["events"]
        assert np.array_equal(sample[:, 2], want["t"] - want["t"][0])
    assert len(calls) == 2  # each trial once: its three gestures are consecutive
    ds[0]
    assert len(calls) == 3


def test_dvs_gesture_tonic_layout_reads_lazily(tmp_path, monkeypatch):
    a = enc.random_events(400, seed=6, width=128, height=128, span=2_000_000)
    _write_tonic_gesture(tmp_path, {("ibmGestureTrain", "user01_led"): {5: a}})
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *args, **kw: loads.append(kw.get("mmap_mode"))
                        or real_load(*args, **kw))
    ds = DVSGesture(tmp_path, "train")
    assert loads == ["r"]  # the header only (a memory map, its shape checked)
    assert not any(_holds_arrays(v) for v in vars(ds).values())
    got = ds.recordings[0]
    assert loads == ["r", None]
    assert np.array_equal(got["x"], a["x"]) and np.abs(got["t"] - a["t"]).max() <= 1


def test_lazy_training_sample_keeps_the_augmentation_stream(nmnist_root):
    """An augmented sample is the eager one: the recording read here, augmented and reduced with
    the generator the dataset makes from (seed, index, call count, one torch draw)."""
    import torch

    from geossm.tasks.events.io import read_events

    ds = NMNIST(nmnist_root, "train", limit=10, seed=7, representation="events", max_events=300,
                augment=[{"name": "DropEvent", "max_rate": 0.3},
                         {"name": "RandomAffine", "max_rotation": 10.0, "max_shift": 2}])
    torch.manual_seed(3)
    got = [ds[4], ds[4]]
    torch.manual_seed(3)
    for calls, sample in enumerate(got, start=1):
        rng = np.random.default_rng([7, 4, calls, int(torch.randint(0, 2**31 - 1, ()).item())])
        raw = {"events": read_events(ds.files[4], "nmnist").events,
               "sensor_size": ds.sensor_size, "label": ds.labels[4]}
        want = ds.preprocess(ds.augment(raw, rng), rng)
        assert np.array_equal(sample["events"], want["events"]) and sample["label"] == 4
    assert not np.array_equal(got[0]["events"], got[1]["events"])  # a fresh stream per call


@pytest.mark.parametrize("cls, layout", [(NMNIST, r"Train/<digit>/\*\.bin"),
                                         (DVSGesture, r"trials_to_train\.txt")])
def test_missing_root_says_what_to_set(tmp_path, cls, layout):
    with pytest.raises(FileNotFoundError, match=rf"set data\.root=PATH to the folder holding "
                                                rf"{layout}"):
        cls(tmp_path / "missing")
