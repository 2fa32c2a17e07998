import pickle

import numpy as np
import pytest

from geossm.tasks.detection.evaluation import kitti_eval
from geossm.tasks.detection.interop import (boxes_with_labels, from_openpcdet_annos,
                                            split_boxes_and_labels, to_openpcdet_annos)
from geossm.tasks.detection.kitti import Calibration, camera_to_lidar_boxes
from geossm.tasks.detection.task import detections_to_anno

CALIB = Calibration(np.array([[721.5, 0, 609.6, 44.9], [0, 721.5, 172.9, 0.2], [0, 0, 1, 0.003]]),
                    np.eye(3), np.array([[0.0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27]]))
CAM = np.array([[2.0, 1.6, 15.0, 1.5, 1.6, 4.0, 0.25], [-4.0, 1.7, 22.0, 1.8, 0.6, 0.8, -1.0]])


def _detections():
    lidar = camera_to_lidar_boxes(CAM[:, :3], CAM[:, 3:6], CAM[:, 6], CALIB)
    cal = {k: getattr(CALIB, k) for k in ("P2", "R0", "V2C")}
    det = detections_to_anno({"boxes": lidar, "scores": np.array([0.9, 0.4]),
                              "labels": np.array([1, 2])}, cal, ("Car", "Pedestrian"))
    return dict(det, frame_id="000003")


def test_gt_boxes_with_labels_both_ways():
    boxes = np.arange(14, dtype=np.float64).reshape(2, 7)
    eight = boxes_with_labels(boxes, np.array([3, 1]))
    assert eight.shape == (2, 8) and eight[:, 7].tolist() == [3.0, 1.0]
    back, labels = split_boxes_and_labels(eight)
    np.testing.assert_array_equal(back, boxes)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"gt_boxes: expected shape \(M, 8\)"):
        split_boxes_and_labels(boxes)
    with pytest.raises(ValueError, match="gt_labels: expected 2 labels"):
        boxes_with_labels(boxes, [1])


def test_openpcdet_dimensions_are_lhw_and_round_trip_through_pickle():
    det = _detections()
    ours = pickle.loads(pickle.dumps(to_openpcdet_annos([det])))[0]
    # the car: h 1.5, w 1.6, l 4.0 in the label -> (l, h, w) = (4.0, 1.5, 1.6) in OpenPCDet
    np.testing.assert_allclose(ours["dimensions"][0], [4.0, 1.5, 1.6], atol=1e-9)
    np.testing.assert_allclose(ours["boxes_lidar"], det["boxes"])
    assert ours["frame_id"] == "000003" and list(ours["name"]) == ["Car", "Pedestrian"]
    back = from_openpcdet_annos([ours])[0]
    for key in ("location", "dimensions", "rotation_y", "alpha", "bbox", "score", "boxes"):
        np.testing.assert_allclose(back[key], det[key], atol=1e-12)
    assert back["frame_id"] == "000003"


def test_openpcdet_annos_evaluate_like_ours():
    det = _detections()
    gt = {k: det[k] for k in ("name", "bbox", "location", "dimensions", "rotation_y", "alpha",
                              "boxes")}
    gt.update(truncated=np.zeros(2), occluded=np.zeros(2, dtype=np.int64))
    gts, dts = [gt] * 41, [det] * 41
    converted_gt = from_openpcdet_annos(to_openpcdet_annos(gts))
    converted_dt = from_openpcdet_annos(to_openpcdet_annos(dts))
    metrics = ("bbox", "bev", "3d", "aos")
    assert kitti_eval(converted_gt, converted_dt, metrics=metrics) == \
        pytest.approx(kitti_eval(gts, dts, metrics=metrics), nan_ok=True)


def test_infos_gt_boxes_skip_dontcare():
    info = {"name": np.array(["Car", "DontCare"]), "bbox": np.zeros((2, 4)),
            "location": np.zeros((2, 3)), "dimensions": np.ones((2, 3)),
            "rotation_y": np.zeros(2), "gt_boxes_lidar": np.ones((1, 7))}
    boxes = from_openpcdet_annos([info])[0]["boxes"]
    assert np.isnan(boxes[1]).all() and (boxes[0] == 1).all()
    with pytest.raises(ValueError, match=r"annos\[0\]: missing keys \['location'"):
        to_openpcdet_annos([{"name": [], "bbox": []}])
