import numpy as np
import pytest
import torch

from geossm.registry import TRANSFORMS
from geossm.tasks.events.io import make_events
from geossm.transforms import Compose, build_transforms, generator, torch_generator

#: Arguments the transforms need beyond their defaults.
REQUIRED = {"GridSample": {"grid_size": 0.2}, "RandomSubsample": {"num_points": 50},
            "SphereCrop": {"max_points": 50},
            "RangeFilter": {"point_cloud_range": [-9, -9, -9, 9, 9, 9]}}


def point_sample(n=120):
    g = np.random.default_rng(0)
    normal = g.normal(size=(n, 3))
    return {"coord": g.uniform(-1, 1, (n, 3)).astype(np.float32),
            "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
            "label": g.integers(0, 4, n), "category": 1}


def lidar_sample():
    g = np.random.default_rng(1)
    boxes = np.array([[3.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3], [-4.0, 4.0, 0.0, 1.0, 1.0, 2.0, 0.0]],
                     dtype=np.float32)
    inside = [np.c_[b[:3] + g.uniform(-0.4, 0.4, (40, 3)), np.ones((40, 1))] for b in boxes]
    points = np.concatenate([g.uniform(-8, 8, (300, 4))] + inside).astype(np.float32)
    return {"points": points, "gt_boxes": boxes, "gt_labels": np.array([1, 2]),
            "gt_names": ["Car", "Pedestrian"]}


class _Frames:
    """What ``GTSampling.attach`` needs of a detection dataset."""

    classes = ("Car", "Pedestrian")

    def __len__(self):
        return 2

    def raw(self, index):
        return lidar_sample()


def event_sample(n=400):
    g = np.random.default_rng(2)
    ev = make_events(g.integers(0, 34, n), g.integers(0, 34, n), np.sort(g.integers(0, 10**5, n)),
                     g.integers(0, 2, n))
    return {"events": ev, "sensor_size": (34, 34, 2), "label": 3}


def sample_for(cls):
    module = cls.__module__
    if ".detection." in module:
        return lidar_sample()
    if ".events." in module:
        return event_sample()
    return point_sample()


def test_every_task_registers_its_transforms():
    names = set(TRANSFORMS.names())
    assert {"RandomRotate", "RandomFlip", "GridSample"} <= names          # segmentation
    assert {"GlobalFlip", "GlobalRotation", "GTSampling", "RangeFilter"} <= names   # detection
    assert {"DropEvent", "RandomAffine"} <= names                          # events


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_every_registered_transform_builds_from_its_spec_and_runs(name):
    compose = build_transforms([{"name": name, **REQUIRED.get(name, {})}])
    assert len(compose) == 1
    transform = compose.transforms[0]
    assert type(transform) is TRANSFORMS.get(name)
    if name == "GTSampling":
        transform.attach(_Frames())
    sample = sample_for(type(transform))
    keys = set(sample)
    out = compose(sample, np.random.default_rng(0))
    assert isinstance(out, dict) and set(out) == keys
    torch.manual_seed(0)
    assert set(transform(sample_for(type(transform)))) == keys    # rng=None: torch's stream


def test_unknown_or_malformed_specs_name_the_config_key():
    with pytest.raises(ValueError, match=r"augment: unknown transform 'RandomRotat' \(did "
                                         r"you mean 'RandomRotate'\?\); known transforms: "
                                         r".*GlobalFlip"):
        build_transforms([{"name": "RandomRotat"}])
    with pytest.raises(ValueError, match="transforms: expected mappings with a 'name' key, got "
                                         "{'axis': 'z'}"):
        build_transforms([{"axis": "z"}], key="transforms")
    with pytest.raises(ValueError, match="augment: expected a list of"):
        build_transforms({"name": "RandomRotate"})
    with pytest.raises(TypeError, match="cannot build transform 'RandomRotate' with"):
        build_transforms([{"name": "RandomRotate", "axes": "z"}])
    assert len(build_transforms(None)) == 0 and not build_transforms([])


def test_rng_convention():
    """An explicit generator is handed to every transform; without one each transform that draws
    seeds its own from torch, and one that draws nothing leaves torch's stream alone."""
    g = np.random.default_rng(5)
    assert generator(g) is g
    torch.manual_seed(1)
    first = torch_generator().random()
    torch.manual_seed(1)
    assert generator(None).random() == first
    seen = []
    compose = Compose([lambda s, rng: seen.append(rng) or s, lambda s, rng: seen.append(rng) or s])
    compose({}, g)
    assert seen == [g, g]
    torch.manual_seed(2)
    before = torch.rand(3)
    torch.manual_seed(2)
    build_transforms([{"name": "CenterShift"}, {"name": "NormalizeCoord"}])(point_sample())
    assert torch.equal(torch.rand(3), before)
