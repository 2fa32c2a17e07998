import math

import numpy as np
import pytest

from geossm.tasks.detection.boxes import iou_3d, iou_bev, nms_bev
from geossm.tasks.detection.evaluation import kitti_eval


def _frames(n, names=("Car",), height=50.0, occluded=0, truncated=0.0):
    """n frames with one object each, 10 m apart so that nothing overlaps across frames."""
    gts = []
    for i in range(n):
        box = np.array([[10.0 + i % 5, 0.0, -1.0, 4.0, 2.0, 1.5, 0.3]])
        gts.append({"name": np.array(names), "boxes": box, "bbox": np.array([[0, 0, 50, height]]),
                    "truncated": np.array([truncated]), "occluded": np.array([occluded])})
    return gts


def _dets(gts, keep, shift=(0.0, 0.0, 0.0), name="Car"):
    out = []
    for i, g in enumerate(gts):
        if i in keep:
            b = g["boxes"].copy()
            b[:, :3] += shift
            out.append({"name": np.array([name]), "boxes": b, "score": np.array([1.0 - i / 1000]),
                        "bbox": g["bbox"].copy()})
        else:
            out.append({"name": np.zeros(0, str), "boxes": np.zeros((0, 7)), "score": np.zeros(0),
                        "bbox": np.zeros((0, 4))})
    return out


def test_rotated_iou_by_hand():
    a = np.array([[0, 0, 0, 4, 2, 2, 0.0]])
    b = np.array([[1, 0, 0, 4, 2, 2, 0.0]])
    assert iou_bev(a, b)[0, 0] == pytest.approx(6 / 10)           # 3x2 overlap of two 4x2
    c = np.array([[1, 0, 0.5, 4, 2, 2, 0.0]])
    assert iou_3d(a, c)[0, 0] == pytest.approx(9 / 23)            # 6 m^2 x 1.5 m / (16+16-9)
    sq = np.array([[0, 0, 0, 2, 2, 1, 0.0]])
    rot = np.array([[0, 0, 0, 2, 2, 1, math.pi / 4]])
    assert iou_bev(sq, rot)[0, 0] == pytest.approx(1 / math.sqrt(2))  # regular octagon
    # heading by pi is the same box; rotation commutes with translation
    assert iou_bev(a, a + [0, 0, 0, 0, 0, 0, math.pi])[0, 0] == pytest.approx(1.0)
    far = np.array([[50, 0, 0, 4, 2, 2, 0.0]])
    assert iou_bev(a, far)[0, 0] == 0.0 and iou_bev(a, np.zeros((0, 7))).shape == (1, 0)


def test_nms_bev():
    boxes = np.array([[0, 0, 0, 4, 2, 2, 0.0], [0.2, 0, 0, 4, 2, 2, 0.0], [10, 0, 0, 4, 2, 2, 0]])
    keep = nms_bev(boxes, [0.5, 0.9, 0.7], 0.1)
    assert keep.tolist() == [1, 2]
    with pytest.raises(ValueError, match="scores: expected 3 scores"):
        nms_bev(boxes, [1.0], 0.1)


def test_identical_boxes_give_100():
    gts = _frames(80)
    res = kitti_eval(gts, _dets(gts, range(80)), classes=("Car",))
    for metric in ("bev", "3d"):
        for d in ("easy", "moderate", "hard"):
            assert res[f"Car/{metric}_{d}_R40"] == pytest.approx(100.0)
            assert res[f"Car/{metric}_{d}_R11"] == pytest.approx(100.0)


def test_missed_objects_known_recall_curve():
    # 80 cars, the first 40 found: recall reaches 0.5 at precision 1, so 20 of the 40 recall
    # positions (1/40 .. 20/40) have precision 1 and R40 = 50; 11-point: 0, .1, .., .5 -> 6/11
    gts = _frames(80)
    res = kitti_eval(gts, _dets(gts, range(40)), classes=("Car",), metrics=("bev",))
    assert res["Car/bev_moderate_R40"] == pytest.approx(50.0)
    assert res["Car/bev_moderate_R11"] == pytest.approx(600 / 11)


def test_one_missed_object_of_forty():
    # 40 cars, 39 found: the 40th recall position (1.0) is never reached -> 39/40 minus the
    # position taken by recall 0 (the devkit books the first threshold at recall 0)
    gts = _frames(40)
    res = kitti_eval(gts, _dets(gts, range(39)), classes=("Car",), metrics=("bev",))
    assert res["Car/bev_moderate_R40"] == pytest.approx(38 / 40 * 100)


@pytest.mark.parametrize("n", [1, 3, 20, 40])
def test_perfect_detections_of_at_most_forty_objects_score_n_minus_one_fortieths(n):
    # the devkit keeps one threshold per true positive while n <= 40 and books the first at
    # recall 0, which R40 leaves out: (n - 1) / 40 (the 3 moderate Cars of the 6 real KITTI
    # frames: 5 %); R11 has sample 0 plus every 4th sample that a threshold reached
    gts = _frames(n)
    res = kitti_eval(gts, _dets(gts, range(n)), classes=("Car",), metrics=("bev",))
    assert res["Car/bev_moderate_R40"] == pytest.approx((n - 1) / 40 * 100)
    assert res["Car/bev_moderate_R11"] == pytest.approx(((n - 1) // 4 + 1) / 11 * 100)


def test_frames_repeated_to_forty_one_objects_give_100():
    # what benchmarks/detection_kitti_overfit.py reports beside the devkit AP: 1 object counted
    # 41 times reaches every sample point (40 times is one short: 97.5)
    gts = _frames(1)
    dts = _dets(gts, [0])
    assert kitti_eval(gts * 40, dts * 40, ("Car",), ("bev",))["Car/bev_moderate_R40"] == \
        pytest.approx(97.5)
    res = kitti_eval(gts * 41, dts * 41, ("Car",), ("bev",))
    assert res["Car/bev_moderate_R40"] == pytest.approx(100.0)
    assert res["Car/bev_moderate_R11"] == pytest.approx(100.0)


def test_shifted_boxes_against_class_thresholds():
    # shifted 1 m along the 4 m side: BEV IoU 0.6 -> a miss for Car (0.7), a hit for Ped (0.5)
    gts = _frames(80)
    shifted = [{**d} for d in _dets(gts, range(80))]
    for d in shifted:
        d["boxes"] = d["boxes"].copy()
    c = np.cos(0.3), np.sin(0.3)
    res = kitti_eval(gts, _dets(gts, range(80), shift=(c[0], c[1], 0.0)), classes=("Car",))
    assert res["Car/bev_moderate_R40"] == 0.0
    peds = _frames(80, names=("Pedestrian",))
    res = kitti_eval(peds, _dets(peds, range(80), shift=(c[0], c[1], 0.0), name="Pedestrian"),
                     classes=("Pedestrian",), metrics=("bev",))
    assert res["Pedestrian/bev_moderate_R40"] == pytest.approx(100.0)


def test_difficulty_rules_and_ignored_objects():
    # 30 px high: moderate/hard, but below easy's 40 px -> easy has no valid object (NaN)
    gts = _frames(80, height=30.0)
    res = kitti_eval(gts, _dets(gts, range(80)), classes=("Car",), metrics=("bev",))
    assert math.isnan(res["Car/bev_easy_R40"]) and res["Car/bev_moderate_R40"] == pytest.approx(100)
    # occluded 2: hard only
    gts = _frames(80, occluded=2)
    res = kitti_eval(gts, _dets(gts, range(80)), classes=("Car",), metrics=("bev",))
    assert math.isnan(res["Car/bev_moderate_R40"]) and res["Car/bev_hard_R40"] == pytest.approx(100)
    # a Car detection on a Van is ignored (neither TP nor FP); on a Truck it is a false positive
    cars = _frames(80)
    dets = _dets(cars, range(80))
    for other, expect in (("Van", 100.0), ("Truck", None)):
        g = [dict(x) for x in cars]
        d = [dict(x) for x in dets]
        for i in range(80):
            g[i] = {k: (np.concatenate([v, v]) if k != "name" else np.array(["Car", other]))
                    for k, v in cars[i].items()}
            g[i]["boxes"] = g[i]["boxes"].copy()
            g[i]["boxes"][1, 1] = 20.0
            d[i] = {k: np.concatenate([v, v]) for k, v in dets[i].items()}
            d[i]["boxes"] = d[i]["boxes"].copy()
            d[i]["boxes"][1, 1] = 20.0
            d[i]["score"] = np.array([0.9, 0.95])  # the wrong one scores higher
        res = kitti_eval(g, d, classes=("Car",), metrics=("bev",))["Car/bev_moderate_R40"]
        if expect is None:
            assert res < 60.0
        else:
            assert res == pytest.approx(expect)


def test_dontcare_handling():
    gts = _frames(80)
    dets = _dets(gts, range(80))
    for g, d in zip(gts, dets):
        g["name"] = np.array(["Car", "DontCare"])
        g["boxes"] = np.concatenate([g["boxes"], np.full((1, 7), np.nan)])
        g["bbox"] = np.array([[0, 0, 50, 50], [100, 0, 200, 50]])
        g["truncated"] = np.array([0.0, -1])
        g["occluded"] = np.array([0, -1])
        # an extra, higher-scoring detection inside the DontCare image region
        d["name"] = np.array(["Car", "Car"])
        d["boxes"] = np.concatenate([d["boxes"], [[30, 5, -1, 4, 2, 1.5, 0]]])
        d["score"] = np.array([0.5, 0.9])
        d["bbox"] = np.array([[0, 0, 50, 50], [120, 0, 180, 50]])
    plain = kitti_eval(gts, dets, classes=("Car",), metrics=("bev",))["Car/bev_moderate_R40"]
    filt = kitti_eval(gts, dets, classes=("Car",), metrics=("bev",),
                      dontcare_filter=True)["Car/bev_moderate_R40"]
    assert filt == pytest.approx(100.0) and plain == pytest.approx(50.0)


def test_bad_arguments():
    gts = _frames(1)
    with pytest.raises(ValueError, match=r"dt_annos: expected one entry per frame \(1\), got 0"):
        kitti_eval(gts, [])
    with pytest.raises(ValueError, match=r"dt_annos\[0\]: missing keys \['score'\]"):
        kitti_eval(gts, [{"name": [], "boxes": [], "bbox": []}])
    with pytest.raises(ValueError, match="metrics: expected 'bev' and/or '3d', got '2d'"):
        kitti_eval(gts, _dets(gts, [0]), metrics=("2d",))
    with pytest.raises(ValueError, match=r"boxes_a: expected shape \(M, 7\)"):
        iou_bev(np.zeros((2, 3)), np.zeros((1, 7)))
