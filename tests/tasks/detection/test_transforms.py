import numpy as np
import pytest

from geossm.tasks.detection.datasets import SyntheticLidar
from geossm.tasks.detection.transforms import DetectionPreprocess, GlobalFlip, GTSampling


def test_global_flip_mirrors_y_and_heading():
    s = {"points": np.array([[1.0, 2.0, 0.0, 0.5]]),
         "gt_boxes": np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.0, 0.3]])}
    out = GlobalFlip(p=1.0)({k: v.copy() for k, v in s.items()}, np.random.default_rng(0))
    np.testing.assert_array_equal(out["points"][:, 1], -s["points"][:, 1])
    np.testing.assert_array_equal(out["gt_boxes"][:, [1, 6]], -s["gt_boxes"][:, [1, 6]])


def test_preprocess_filters_the_range_and_sets_dtypes():
    def frame():
        return {"points": np.array([[1.0, 0, 0, 1], [30.0, 0, 0, 1]]),
                "gt_boxes": np.array([[1.0, 0, 0, 1, 1, 1, 0], [40.0, 0, 0, 1, 1, 1, 0]]),
                "gt_labels": np.array([1, 2]), "gt_names": ["Car", "Cyclist"]}

    out = DetectionPreprocess([0, -5, -3, 20, 5, 1])(frame())
    assert out["points"].dtype == np.float32 and len(out["points"]) == 1
    assert out["gt_boxes"].shape == (1, 7) and out["gt_boxes"].dtype == np.float32
    assert out["gt_labels"].dtype == np.int64 and out["gt_names"] == ["Car"]
    assert len(DetectionPreprocess(None)(frame())["points"]) == 2


def test_validation_frames_are_the_preprocessed_raw_frames():
    val = SyntheticLidar(split="val", num_val_samples=2)
    for index in range(2):
        expected = val.preprocess(val.raw(index))
        got = val[index]
        for key in ("points", "gt_boxes", "gt_labels"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_gt_sampling_needs_a_dataset():
    with pytest.raises(ValueError, match="GTSampling: no database"):
        GTSampling({"Car": 3})({"points": np.zeros((0, 4)), "gt_boxes": np.zeros((0, 7)),
                                "gt_names": [], "gt_labels": np.zeros(0)})
    train = SyntheticLidar(num_samples=2, augment=[{"name": "GTSampling"}])
    sampler = train.augment.transforms[0]
    assert sampler.dataset is train and sampler.classes == train.classes
