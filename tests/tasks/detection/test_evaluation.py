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


# ---------------------------------------------------------------- camera frame, AOS, 2D box
from geossm.tasks.detection.kitti import (Calibration, camera_box_corners,  # noqa: E402
                                          camera_boxes_to_image_bbox, camera_to_lidar_boxes,
                                          read_label)
from geossm.tasks.detection.evaluation import iou_camera_3d, iou_camera_bev  # noqa: E402
from geossm.tasks.detection.task import (detections_to_anno,  # noqa: E402
                                         write_kitti_submission)

TILT = 0.08  # rad about the camera's x axis (KITTI's rectification tilts by about 0.012)


def _tilted_calib(tilt=TILT):
    # LiDAR x forward, y left, z up -> camera x right, y down, z forward, then pitched by R0
    v2c = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27]])
    c, s = math.cos(tilt), math.sin(tilt)
    r0 = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    p2 = np.array([[721.5, 0.0, 609.6, 44.9], [0.0, 721.5, 172.9, 0.2], [0.0, 0.0, 1.0, 0.003]])
    return Calibration(p2, r0, v2c)


CAR = np.array([[2.0, 1.6, 15.0, 1.5, 1.6, 4.0, 0.0]])   # camera: bottom centre, h w l, ry


def _camera_gt(cam, calib, n):
    anno = {"name": np.array(["Car"]), "location": cam[:, :3], "dimensions": cam[:, 3:6],
            "rotation_y": cam[:, 6], "alpha": np.array([0.3]),
            "boxes": camera_to_lidar_boxes(cam[:, :3], cam[:, 3:6], cam[:, 6], calib),
            "bbox": camera_boxes_to_image_bbox(cam, calib), "truncated": np.zeros(1),
            "occluded": np.zeros(1, dtype=np.int64)}
    return [anno] * n


def test_camera_frame_iou_by_hand():
    # length 4 along camera x: a 0.6 m shift leaves 3.4 of 4.6 m -> BEV IoU 3.4 / 4.6; a 0.5 m
    # drop along camera y leaves 1.0 of the 1.5 m height on top of that
    moved = CAR + [[0.6, 0.5, 0.0, 0, 0, 0, 0]]
    assert iou_camera_bev(CAR, moved)[0, 0] == pytest.approx(3.4 / 4.6)
    inter = 3.4 * 1.6 * 1.0
    assert iou_camera_3d(CAR, moved)[0, 0] == pytest.approx(inter / (2 * 9.6 - inter))
    # the box spans y - h .. y: a box lifted by its full height no longer overlaps
    assert iou_camera_3d(CAR, CAR - [[0, 1.5, 0, 0, 0, 0, 0]])[0, 0] == pytest.approx(0.0)
    # rotation_y turns the length from camera x towards -z: pi/2 puts it along z
    turned = CAR.copy()
    turned[0, 6] = math.pi / 2
    inter = 1.6 * 1.6
    assert iou_camera_bev(CAR, turned)[0, 0] == pytest.approx(inter / (12.8 - inter))
    corners = camera_box_corners(turned)[0]
    np.testing.assert_allclose(np.ptp(corners, 0), [1.6, 1.5, 4.0], atol=1e-12)


def test_tilted_calibration_ap_follows_the_camera_frame():
    # a detection moved 0.7 m along camera x and 1.2 m down camera y: in the camera frame its
    # BEV IoU is 3.3 / 4.7 = 0.702 > 0.7 (a hit); the same boxes upright along LiDAR z (what
    # geossm compared before) are 0.08 rad apart from the camera's vertical, so the drop moves
    # the detection ~0.1 m sideways in the LiDAR's ground plane and the IoU falls below 0.7
    calib = _tilted_calib()
    n = 41  # enough objects for every R40 sample point
    gts = _camera_gt(CAR, calib, n)
    moved = CAR + [[0.7, 1.2, 0.0, 0, 0, 0, 0]]
    lidar = camera_to_lidar_boxes(moved[:, :3], moved[:, 3:6], moved[:, 6], calib)
    cal = {k: getattr(calib, k) for k in ("P2", "R0", "V2C")}
    det = detections_to_anno({"boxes": lidar, "scores": np.array([0.9]),
                              "labels": np.array([1])}, cal, ("Car",))
    np.testing.assert_allclose(det["location"], moved[:, :3], atol=1e-9)
    np.testing.assert_allclose(det["rotation_y"], moved[:, 6], atol=1e-9)
    camera_iou = iou_camera_bev(CAR, moved)[0, 0]
    lidar_iou = iou_bev(lidar, gts[0]["boxes"])[0, 0]
    assert camera_iou == pytest.approx(3.3 / 4.7) and camera_iou > 0.7 > lidar_iou
    # the image box comes from the camera-frame corners (the LiDAR corners would differ)
    np.testing.assert_allclose(det["bbox"], camera_boxes_to_image_bbox(moved, calib))
    from geossm.viz import box_corners
    uv, _ = calib.rect_to_image(calib.lidar_to_rect(box_corners(lidar).reshape(-1, 3)))
    lidar_corner_bbox = np.concatenate([uv.min(0), uv.max(0)])
    assert np.abs(lidar_corner_bbox - det["bbox"][0]).max() > 2.0  # pixels
    dts = [det] * n
    camera = kitti_eval(gts, dts, ("Car",), ("bev",))
    assert camera["Car/bev_moderate_R40"] == pytest.approx(100.0)
    assert kitti_eval(gts, dts, ("Car",), ("bev",), frame="lidar")["Car/bev_moderate_R40"] == 0.0
    assert camera == kitti_eval(gts, dts, ("Car",), ("bev",), frame="camera")


def _image_frames(n, dt_alpha, gt_alpha=0.3):
    gts, dts = [], []
    for _ in range(n):
        bbox = np.array([[100.0, 100.0, 200.0, 160.0]])
        gts.append({"name": np.array(["Car"]), "bbox": bbox, "alpha": np.array([gt_alpha]),
                    "truncated": np.zeros(1), "occluded": np.zeros(1, dtype=np.int64)})
        dts.append({"name": np.array(["Car"]), "bbox": bbox + 2.0, "alpha": np.array([dt_alpha]),
                    "score": np.array([0.8])})
    return gts, dts


@pytest.mark.parametrize("delta, expect", [(0.0, 100.0), (math.pi, 0.0), (math.pi / 2, 50.0)])
def test_aos_by_hand(delta, expect):
    # every detection a hit in 2D (IoU 0.89 > 0.7); orientation similarity (1 + cos d) / 2: a
    # flip by pi is similarity 0, a quarter turn 0.5
    gts, dts = _image_frames(41, 0.3 + delta)
    res = kitti_eval(gts, dts, ("Car",), ("bbox", "aos"))
    assert res["Car/bbox_moderate_R40"] == pytest.approx(100.0)
    assert res["Car/aos_moderate_R40"] == pytest.approx(expect, abs=1e-9)
    assert res["Car/aos_easy_R11"] == pytest.approx(expect, abs=1e-9)


def test_aos_one_flipped_detection_of_two():
    # per frame, a correct and a flipped detection of two cars: similarity (1 + 0) / 2 over 2
    gts, dts = _image_frames(41, 0.3)
    for g, d in zip(gts, dts):
        for k in ("name", "truncated", "occluded"):
            g[k] = np.concatenate([g[k], g[k]])
        g["bbox"] = np.array([[100.0, 100.0, 200.0, 160.0], [400.0, 100.0, 500.0, 160.0]])
        g["alpha"] = np.array([0.3, 0.3])
        d["name"] = np.array(["Car", "Car"])
        d["bbox"] = g["bbox"] + 1.0
        d["alpha"] = np.array([0.3, 0.3 + math.pi])
        d["score"] = np.array([0.8, 0.8])
    res = kitti_eval(gts, dts, ("Car",), ("bbox", "aos"))
    assert res["Car/bbox_moderate_R40"] == pytest.approx(100.0)
    assert res["Car/aos_moderate_R40"] == pytest.approx(50.0)


def test_bbox_metric_iou_threshold_and_dontcare_by_default():
    gts, dts = _image_frames(41, 0.3)
    for d in dts:  # shifted by 30 of 100 px: IoU 70 / 130 = 0.54 -> a miss for Car, not for Ped
        d["bbox"] = np.array([[130.0, 100.0, 230.0, 160.0]])
    assert kitti_eval(gts, dts, ("Car",), ("bbox",))["Car/bbox_moderate_R40"] == 0.0
    # an extra detection inside a DontCare region: no false positive for the 2D metric
    gts, dts = _image_frames(41, 0.3)
    for g, d in zip(gts, dts):
        g["name"] = np.array(["Car", "DontCare"])
        g["bbox"] = np.array([[100.0, 100.0, 200.0, 160.0], [600.0, 100.0, 800.0, 200.0]])
        g["truncated"], g["occluded"] = np.array([0.0, -1]), np.array([0, -1])
        d["name"] = np.array(["Car", "Car"])
        d["bbox"] = np.array([[100.0, 100.0, 200.0, 160.0], [650.0, 120.0, 750.0, 190.0]])
        d["score"] = np.array([0.5, 0.9])
    assert kitti_eval(gts, dts, ("Car",), ("bbox",))["Car/bbox_moderate_R40"] == \
        pytest.approx(100.0)
    assert kitti_eval(gts, dts, ("Car",), ("bbox",),
                      dontcare_filter=False)["Car/bbox_moderate_R40"] == pytest.approx(50.0)


def test_empty_ap_official_zero():
    gts = _frames(80, height=30.0)   # no easy object
    res = kitti_eval(gts, _dets(gts, range(80)), ("Car",), ("bev",), empty_ap=0.0)
    assert res["Car/bev_easy_R40"] == 0.0 and res["Car/bev_moderate_R40"] == pytest.approx(100)


def test_camera_frame_and_metric_arguments_refused():
    gts = _frames(1)
    with pytest.raises(ValueError, match=r"gt_annos\[0\]: missing keys \['location', "
                                         r"'dimensions', 'rotation_y'\]"):
        kitti_eval(gts, _dets(gts, [0]), frame="camera")
    with pytest.raises(ValueError, match="frame: expected 'auto', 'camera' or 'lidar', got 'cam'"):
        kitti_eval(gts, _dets(gts, [0]), frame="cam")
    with pytest.raises(ValueError, match=r"dt_annos\[0\]: missing keys \['alpha'\]"):
        g = [dict(gts[0], alpha=np.zeros(1))]
        kitti_eval(g, _dets(gts, [0]), metrics=("aos",))


def test_submission_files_round_trip_through_the_label_reader(tmp_path):
    calib = _tilted_calib()
    cam = np.array([[2.0, 1.6, 15.0, 1.5, 1.6, 4.0, 0.25], [-4.0, 1.7, 22.0, 1.8, 0.6, 0.8, -1.0]])
    lidar = camera_to_lidar_boxes(cam[:, :3], cam[:, 3:6], cam[:, 6], calib)
    cal = {k: getattr(calib, k) for k in ("P2", "R0", "V2C")}
    det = detections_to_anno({"boxes": lidar, "scores": np.array([0.91, 0.42]),
                              "labels": np.array([1, 2])}, cal, ("Car", "Pedestrian"))
    empty = detections_to_anno({"boxes": np.zeros((0, 7)), "scores": np.zeros(0),
                                "labels": np.zeros(0, int)}, cal, ("Car", "Pedestrian"))
    paths = write_kitti_submission(tmp_path / "sub", [dict(det, frame_id="000007"),
                                                      dict(empty, frame_id="000008")])
    assert [p.name for p in paths] == ["000007.txt", "000008.txt"]
    lines = paths[0].read_text().splitlines()
    assert len(lines) == 2 and len(lines[0].split()) == 16 and lines[0].startswith("Car -1.00 -1 ")
    back = read_label(paths[0])
    assert list(back["name"]) == ["Car", "Pedestrian"]
    for key in ("location", "dimensions", "rotation_y", "alpha", "bbox", "score"):
        np.testing.assert_allclose(back[key], det[key], atol=6e-5)
    np.testing.assert_allclose(back["location"], cam[:, :3], atol=6e-5)
    assert paths[1].read_text() == "" and len(read_label(paths[1])["name"]) == 0
    with pytest.raises(ValueError, match=r"dt_annos\[0\]: expected a frame_id"):
        write_kitti_submission(tmp_path / "x", [det])
