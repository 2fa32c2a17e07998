import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.tasks.events import NMNIST
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
