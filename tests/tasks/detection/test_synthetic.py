import numpy as np
import pytest

from geossm.tasks.detection.boxes import points_in_boxes
from geossm.tasks.detection.datasets import SyntheticLidar
from geossm.tasks.detection.synthetic import generate_scene, raycast


def test_raycast_by_hand():
    box = np.array([[10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], [20.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [np.sqrt(0.5), 0.0, -np.sqrt(0.5)]])
    t, hit = raycast(dirs, box, ground_z=-1.73, max_range=80.0)
    assert t[0] == pytest.approx(9.0) and hit[0] == 0          # front face of the nearer box
    assert np.isinf(t[1]) and hit[1] == -1                      # nothing to the side
    assert t[2] == pytest.approx(1.73 * np.sqrt(2)) and hit[2] == -1   # the ground at 45 deg


def test_scene_is_deterministic_and_labelled():
    a = generate_scene(np.random.default_rng(3))
    b = generate_scene(np.random.default_rng(3))
    c = generate_scene(np.random.default_rng(4))
    np.testing.assert_array_equal(a["points"], b["points"])
    assert a["points"].shape != c["points"].shape or not np.array_equal(a["points"], c["points"])
    assert a["points"].dtype == np.float32 and a["points"].shape[1] == 4
    assert 10_000 < len(a["points"]) < 40_000
    # every labelled object is seen by the sensor; boxes stand on the ground (z at the centre)
    grown = a["gt_boxes"] + np.array([0, 0, 0, 0.2, 0.2, 0.2, 0])   # range noise: 2 cm std
    counts = points_in_boxes(a["points"], grown).sum(0)
    assert (counts >= 3).all()
    np.testing.assert_allclose(a["gt_boxes"][:, 2] - a["gt_boxes"][:, 5] / 2, -1.73, atol=1e-5)
    cars = a["gt_boxes"][np.array(a["gt_names"]) == "Car"]
    assert ((cars[:, 3] > 3.0) & (cars[:, 3] < 5.0)).all()
    assert set(a["annos"]["occluded"].tolist()) <= {0, 1, 2, 3}
    h = a["annos"]["bbox"][:, 3] - a["annos"]["bbox"][:, 1]
    assert (h > 0).all()


def test_dataset_splits_and_classes():
    tr = SyntheticLidar(split="train", num_samples=2, classes=["Car"])
    va = SyntheticLidar(split="val", num_val_samples=2, classes=["Car"])
    assert len(tr) == 2 and tr.frame_ids[0] == "train_000000"
    assert not np.array_equal(tr[0]["points"][:5], va[0]["points"][:5])
    s = va[0]
    assert set(s["gt_names"]) <= {"Car"} and (s["gt_labels"] == 1).all()
    # the evaluation keeps every object (other classes are ignored or neighbours there)
    assert len(s["annos"]["name"]) >= len(s["gt_names"])
    np.testing.assert_array_equal(va[0]["points"], s["points"])   # val: no augmentation
    with pytest.raises(ValueError, match="split: expected 'train', 'val' or 'test'"):
        SyntheticLidar(split="training")


def test_objects_lie_inside_the_point_cloud_range():
    # the evaluation counts every annotated object, so none may lie outside the detector's grid
    ds = SyntheticLidar(split="val", num_val_samples=3, point_cloud_range=(0, -10, -3, 40, 10, 1))
    for i in range(3):
        boxes = ds[i]["annos"]["boxes"]
        assert (np.abs(boxes[:, 1]) <= 9.5).all() and (boxes[:, 0] < 40).all()
    wide = generate_scene(np.random.default_rng(0), y_range=(-2.0, 2.0))
    assert (np.abs(wide["annos"]["boxes"][:, 1]) <= 2.0).all()
