import shutil
import warnings

import numpy as np
import pytest

from geossm.tasks.detection.boxes import points_in_boxes
from geossm.tasks.detection.datasets import KittiDataset, SyntheticLidar
from geossm.tasks.detection.kitti import (boxes_to_image_bbox, lidar_to_camera_boxes, read_calib,
                                          read_label)


def test_real_frames_layout_and_convention(kitti_root):
    ds = KittiDataset(kitti_root, "training", point_cloud_range=None, fov_only=False)
    assert ds.frame_ids == [f"{i:06d}" for i in range(6)]
    names = []
    for i in range(len(ds)):
        s = ds[i]
        assert list(s)[0] == "points" and s["points"].dtype == np.float32
        assert s["points"].shape[1] == 4 and 100_000 < len(s["points"]) < 130_000
        assert s["gt_boxes"].shape == (len(s["gt_names"]), 7)
        assert set(s["gt_names"]) <= {"Car", "Pedestrian", "Cyclist"}
        assert list(s["gt_labels"]) == [("Car", "Pedestrian", "Cyclist").index(n) + 1
                                        for n in s["gt_names"]]
        # DontCare and other classes stay in the evaluation annotations only
        assert "DontCare" not in s["gt_names"] and len(s["annos"]["name"]) >= len(s["gt_names"])
        if len(s["gt_boxes"]):
            # the LiDAR returns of a labelled object fall inside its box (z centre, l/w/h, heading)
            counts = points_in_boxes(s["points"], s["gt_boxes"]).sum(0)
            assert (counts >= 5).all(), (s["frame_id"], counts)
        names += s["gt_names"]
    assert (names.count("Car"), names.count("Pedestrian"), names.count("Cyclist")) == (5, 2, 1)


def test_frame0_pedestrian_box_by_hand(kitti_root):
    # label: Pedestrian h w l = 1.89 0.48 1.20 at camera (1.84, 1.47, 8.41), rotation_y 0.01
    s = KittiDataset(kitti_root, "training", point_cloud_range=None)[0]
    box = s["gt_boxes"][0]
    np.testing.assert_allclose(box[3:6], [1.20, 0.48, 1.89], atol=1e-5)
    np.testing.assert_allclose(box[6], -(0.01 + np.pi / 2), atol=1e-6)
    calib = read_calib(kitti_root / "training" / "calib" / "000000.txt")
    back = lidar_to_camera_boxes(box[None].astype(np.float64), calib)[0]
    np.testing.assert_allclose(back, [1.84, 1.47, 8.41, 1.89, 0.48, 1.20, 0.01], atol=1e-4)
    bbox = boxes_to_image_bbox(box[None].astype(np.float64), calib)[0]
    # projected 3D box height vs. the labelled 2D box (712.40 143.00 810.73 307.92)
    assert abs((bbox[3] - bbox[1]) - (307.92 - 143.00)) < 20


def test_classes_and_fov_and_range(kitti_root):
    full = KittiDataset(kitti_root, "training", point_cloud_range=None, fov_only=False)[1]
    fov = KittiDataset(kitti_root, "training", classes=["Cyclist"])[1]
    assert fov["gt_names"] == ["Cyclist"] and list(fov["gt_labels"]) == [1]
    assert len(fov["points"]) < len(full["points"]) / 2
    assert (fov["points"][:, 0] >= 0).all() and (fov["points"][:, 0] < 69.12).all()


def test_image_sets_and_augment(kitti_root, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kitti_root, root)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000001\n000004\n")
    (root / "ImageSets" / "val.txt").write_text("000002\n")
    aug = [{"name": "GTSampling", "sample_groups": {"Car": 4}},
           {"name": "GlobalFlip"}, {"name": "GlobalRotation"}, {"name": "GlobalScaling"},
           {"name": "ObjectNoise"}]
    tr = KittiDataset(root, "train", augment=aug[:1], point_cloud_range=None)
    assert tr.frame_ids == ["000001", "000004"]
    # the database holds frame 4's two cars; frame 1's own car collides with itself
    s = tr[0]
    assert s["gt_names"].count("Car") == 3 and len(s["gt_boxes"]) == len(s["gt_labels"]) == 4
    s = KittiDataset(root, "train", augment=aug)[0]
    assert len(s["gt_boxes"]) == len(s["gt_labels"]) == len(s["gt_names"])
    assert KittiDataset(root, "val", augment=aug).frame_ids == ["000002"]
    # validation frames are never augmented
    v = KittiDataset(root, "val", augment=aug)
    np.testing.assert_array_equal(v[0]["gt_boxes"], KittiDataset(root, "val")[0]["gt_boxes"])


def test_malformed_files_name_the_file(kitti_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(kitti_root, root)
    velo = root / "training" / "velodyne" / "000000.bin"
    velo.write_bytes(velo.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"000000\.bin.*multiple of 16 bytes"):
        KittiDataset(root, "training")[0]
    lab = root / "training" / "label_2" / "000001.txt"
    lab.write_text("Car 0.0 0 1.0 1 2 3\n")
    with pytest.raises(ValueError, match=r"000001\.txt: line 1: expected 15 fields"):
        read_label(lab)
    with pytest.raises(ValueError, match=r"000001\.txt"):
        KittiDataset(root, "training")[1]
    cal = root / "training" / "calib" / "000002.txt"
    cal.write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match=r"000002\.txt: 'P2' expected 12 values"):
        KittiDataset(root, "training")[2]
    (root / "training" / "calib" / "000003.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"calib.000003\.txt"):
        KittiDataset(root, "training")[3]


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="velodyne"):
        KittiDataset(tmp_path, "training")
    with pytest.raises(ValueError, match="split: expected one of"):
        KittiDataset(tmp_path, "everything")
    with pytest.raises(ValueError, match="classes: expected a non-empty list"):
        SyntheticLidar(classes="Car")
    with pytest.raises(ValueError, match="augment: unknown transform 'Jitter'"):
        SyntheticLidar(augment=[{"name": "Jitter"}])


def test_gt_database_built_once_into_a_cached_file_and_loaded(kitti_root, monkeypatch):
    aug = [{"name": "GTSampling", "sample_groups": {"Car": 6, "Pedestrian": 4}, "min_points": 1}]
    first = KittiDataset(kitti_root, "train", augment=aug, point_cloud_range=None)
    path = first.gt_database_path()
    assert not path.exists()
    first[0]
    assert path.is_file()
    built = first.augment.transforms[0].db
    # a fresh copy of the dataset (what each DataLoader worker of each epoch holds) reads the
    # file and never the frames
    second = KittiDataset(kitti_root, "train", augment=aug, point_cloud_range=None)
    assert second.gt_database_path() == path

    def no_frames(index):
        raise AssertionError("the database was rebuilt from the frames")

    monkeypatch.setattr(second, "raw", no_frames)
    loaded = second.augment.transforms[0]._database()
    assert {k: len(v) for k, v in loaded.items()} == {k: len(v) for k, v in built.items()}
    assert sum(len(v) for v in loaded.values()) >= 5
    for cls in built:
        for (b0, p0), (b1, p1) in zip(built[cls], loaded[cls]):
            np.testing.assert_allclose(b0, b1, rtol=1e-6)
            np.testing.assert_allclose(p0, p1, rtol=1e-6)
    # other classes or frames: another database
    other = KittiDataset(kitti_root, "train", classes=["Car"], augment=aug)
    assert other.gt_database_path() != path


def test_train_and_val_without_image_sets_warn_that_they_are_the_same_frames(kitti_root):
    """The official download has no ImageSets: train and val both read every training frame,
    so validation would score the frames the model trained on; the reader says so."""
    for split in ("train", "val"):
        with pytest.warns(UserWarning, match=rf"KITTI: no .*ImageSets/{split}\.txt: split "
                                             rf"'{split}' reads every frame of .*training "
                                             r"\(train and val are then the same frames\)"):
            KittiDataset(kitti_root, split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole folder is what these splits mean
        KittiDataset(kitti_root, "training")
        KittiDataset(kitti_root, "trainval")


def test_an_edited_frame_makes_a_new_gt_database(kitti_root, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kitti_root, root)
    path = KittiDataset(root, "training").gt_database_path()
    assert KittiDataset(root, "training").gt_database_path() == path
    label = root / "training" / "label_2" / "000001.txt"
    label.write_text(label.read_text() + "DontCare -1 -1 -10 0 0 1 1 -1 -1 -1 -1000 -1000 -1000 -10\n")
    assert KittiDataset(root, "training").gt_database_path() != path
