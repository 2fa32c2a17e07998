import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.serialization import events as E
from geossm.tasks.events import NMNIST
from geossm.tasks.events import transforms as T
from geossm.tasks.events.io import make_events
from geossm.tasks.events.task import EventClassificationTask
from geossm.tasks.events.transforms import DropEvent, EventPreprocess, RandomAffine


def sample(n=2000, size=(34, 34, 2)):
    g = np.random.default_rng(0)
    ev = make_events(g.integers(0, size[0], n), g.integers(0, size[1], n),
                     np.sort(g.integers(0, 300_000, n)), g.integers(0, 2, n))
    return {"events": ev, "sensor_size": size}


def test_drop_event_keeps_at_least_one_minus_max_rate():
    s = sample()
    out = DropEvent(0.2)(dict(s), np.random.default_rng(1))["events"]
    assert 0.7 * len(s["events"]) < len(out) <= len(s["events"])
    assert set(out.tolist()) <= set(s["events"].tolist())
    assert DropEvent(0.0)(dict(s))["events"] is s["events"]
    with pytest.raises(ValueError, match=r"max_rate: expected a number in \[0, 1\), got 1.0"):
        DropEvent(1.0)


def test_random_affine_stays_on_the_sensor_and_is_the_identity_when_off():
    s = sample()
    out = RandomAffine(max_rotation=30, max_scale=0.2, max_shift=3)(dict(s),
                                                                    np.random.default_rng(2))
    ev = out["events"]
    assert len(ev) <= len(s["events"]) and ev["x"].min() >= 0 and ev["x"].max() < 34
    assert ev["y"].min() >= 0 and ev["y"].max() < 34
    torch.manual_seed(0)
    before = torch.rand(2)
    torch.manual_seed(0)
    assert RandomAffine(max_shift=0)(dict(s))["events"] is s["events"]   # no draw at all
    assert torch.equal(torch.rand(2), before)
    with pytest.raises(ValueError, match="max_scale: expected a number in"):
        RandomAffine(max_scale=1.5)
    with pytest.raises(ValueError, match="max_shift: expected an int >= 0, got -1"):
        RandomAffine(max_shift=-1)


def test_event_preprocess_representations():
    s = {**sample(), "label": 4}
    frames = EventPreprocess((34, 34, 2), "frames", n_time_bins=3)(s)
    assert frames["frames"].shape == (6, 34, 34) and frames["label"] == 4
    assert "sensor_size" not in frames
    vox = EventPreprocess((34, 34, 2), "voxel", n_time_bins=4)(s)["frames"]
    assert vox.shape == (4, 34, 34) and np.abs(vox).max() == 1.0
    pre = EventPreprocess((34, 34, 2), "events", max_events=100)
    even = pre(s)["events"]
    assert even.shape == (100, 4) and even[0, 2] == 0
    np.testing.assert_array_equal(even, pre(s)["events"])       # an even stride: deterministic
    rand = pre(s, np.random.default_rng(0))["events"]
    assert rand.shape == (100, 4) and not np.array_equal(rand, even)
    with pytest.raises(ValueError, match="representation: expected one of .* got 'graph'"):
        EventPreprocess((34, 34, 2), "graph")


@pytest.mark.parametrize("config", ["events/nmnist_mamba", "events/nmnist_serialized"])
def test_predict_prepares_inputs_as_the_dataset(nmnist_root, config):
    """``load_input`` / ``preprocess`` and the test split give the same arrays for one file."""
    cfg = load_config(config, [f"data.root={nmnist_root}"])
    task = EventClassificationTask(cfg)
    test = NMNIST(nmnist_root, "test", limit=10, representation=cfg.data.representation,
                  n_time_bins=cfg.data.n_time_bins, max_events=cfg.data.max_events,
                  augment=[dict(spec) for spec in cfg.data.augment])
    assert not test.augment                     # the test split never augments
    for index in (0, 7):
        from_file = task.load_input(test.files[index])
        from_dataset = test[index]
        assert from_dataset.pop("label") == test.labels[index]
        assert from_file.keys() == from_dataset.keys()
        for key in from_file:
            np.testing.assert_array_equal(from_file[key], from_dataset[key])


# ------------------------------------------ tonic's classes around the serialization functions

def _recordings(nmnist_root, count=6):
    from geossm.tasks.events.io import read_events

    files = sorted(nmnist_root.rglob("*.bin"))[::100][:count]
    assert len(files) == count
    return [read_events(f, "nmnist").events for f in files]


def _tonic(module):
    try:
        return __import__(f"tonic.{module}", fromlist=[module])
    except Exception as err:  # any import failure: the comparison with tonic cannot run
        pytest.skip(f"tonic is not importable ({type(err).__name__}: {err}); pip install tonic")


SENSOR = (34, 34, 2)
CLASS_CASES = [  # (class instance, the function call it wraps)
    (T.ToFrame(SENSOR, time_window=20_000, overlap=5_000, include_incomplete=True),
     lambda e: E.to_frame(e, SENSOR, time_window=20_000, overlap=5_000, include_incomplete=True)),
    (T.ToFrame(SENSOR, event_count=500, overlap=100),
     lambda e: E.to_frame(e, SENSOR, event_count=500, overlap=100)),
    (T.ToFrame(SENSOR, n_time_bins=3), lambda e: E.to_frame(e, SENSOR, n_time_bins=3)),
    (T.ToFrame(SENSOR, n_event_bins=4, overlap=0.5),
     lambda e: E.to_frame(e, SENSOR, n_event_bins=4, overlap=0.5)),
    (T.ToVoxelGrid(SENSOR, 5), lambda e: E.to_voxel_grid(e, SENSOR, 5)),
    (T.ToTimesurface(SENSOR, 30_000, 10_000.0, 10_000, True),
     lambda e: E.to_time_surface(e, SENSOR, 30_000, 10_000.0, 10_000, True)),
    (T.SliceByTime(20_000, 5_000, True), lambda e: E.slice_by_time(e, 20_000, 5_000, True)),
    (T.SliceByEventCount(700, 200), lambda e: E.slice_by_count(e, 700, 200)),
    (T.SliceByTimeBins(4, 0.25), lambda e: E.slice_by_time_bins(e, 4, 0.25)),
    (T.SliceByEventBins(3, 0.5), lambda e: E.slice_by_event_bins(e, 3, 0.5)),
]


@pytest.mark.parametrize("case", range(len(CLASS_CASES)),
                         ids=[f"{type(c).__name__}{i}" for i, (c, _) in enumerate(CLASS_CASES)])
def test_transform_class_equals_its_function(nmnist_root, case):
    transform, function = CLASS_CASES[case]
    for events in _recordings(nmnist_root):
        got, want = transform(events), function(events)
        if isinstance(want, list):
            assert len(got) == len(want) >= 1
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want)
    # torch input goes through the same function
    tensors = E.as_tensors(_recordings(nmnist_root, 1)[0])
    got, want = transform(tensors), function(tensors)
    if isinstance(want, list):
        assert all(torch.equal(a["t"], b["t"]) for a, b in zip(got, want))
    else:
        assert torch.equal(got, want)


def test_transform_classes_equal_tonics(nmnist_root):
    """Same names and arguments as tonic's classes, same results (voxel grids: see
    ``to_voxel_grid`` for the deliberate B - 1 scaling, compared in tests/serialization)."""
    tonic_transforms, tonic_slicers = _tonic("transforms"), _tonic("slicers")
    pairs = [
        (T.ToFrame(SENSOR, time_window=10_000),
         tonic_transforms.ToFrame(SENSOR, time_window=10_000)),
        (T.ToFrame(SENSOR, n_event_bins=3, overlap=0.2),
         tonic_transforms.ToFrame(SENSOR, n_event_bins=3, overlap=0.2)),
        (T.ToTimesurface(SENSOR, 20_000, 5_000.0), tonic_transforms.ToTimesurface(SENSOR, 20_000,
                                                                                 5_000.0)),
    ]
    slicers = [
        (T.SliceByTime(20_000, 5_000, True), tonic_slicers.SliceByTime(20_000, 5_000, True)),
        (T.SliceByEventCount(700, 200), tonic_slicers.SliceByEventCount(700, 200)),
        (T.SliceByTimeBins(4, 0.25), tonic_slicers.SliceByTimeBins(4, 0.25)),
        (T.SliceByEventBins(3, 0.5), tonic_slicers.SliceByEventBins(3, 0.5)),
    ]
    for events in _recordings(nmnist_root):
        for ours, theirs in pairs:
            want = theirs(events.copy())
            assert np.allclose(ours(events), want, rtol=1e-12, atol=0)
        for ours, theirs in slicers:
            want = theirs.slice(events.copy(), None)[0]
            got = ours(events)
            assert len(got) == len(want) >= 1
            assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_transform_classes_are_not_sample_transforms():
    """They map events to an array, not a sample to a sample: kept out of ``TRANSFORMS``."""
    from geossm.registry import TRANSFORMS

    for name in ("ToFrame", "ToVoxelGrid", "ToTimesurface", "SliceByTime", "SliceByEventCount",
                 "SliceByTimeBins", "SliceByEventBins"):
        assert hasattr(T, name) and name not in TRANSFORMS
