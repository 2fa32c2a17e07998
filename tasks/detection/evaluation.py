"""KITTI object detection AP: 2D box, BEV, 3D and AOS, easy / moderate / hard, R40 and 11-point.

The rules are those of the official KITTI devkit (``evaluate_object``) and of OpenPCDet's
``kitti_object_eval_python``, re-implemented:

- boxes are compared where the devkit compares them, in the rectified camera frame of the
  labels: ``location`` (bottom centre), ``dimensions`` (h, w, l), ``rotation_y``. BEV is the
  camera x-z plane, and a 3D box spans camera y from ``y - h`` to ``y``. LiDAR detections are
  converted through the frame's calibration (``kitti.lidar_to_camera_boxes``) and their image
  boxes are projected from the camera-frame corners (``kitti.boxes_to_image_bbox``). The
  rectification tilts the camera's vertical by about 0.01 rad from the LiDAR's z, so IoUs of the
  LiDAR-frame boxes differ (by up to ~0.02 on KITTI, moving pairs across 0.5 / 0.7); they are
  used only for annotations without camera boxes (``frame="lidar"``, e.g. the synthetic scenes);
- ``bbox``: the image-box IoU (0.7 Car, 0.5 Pedestrian / Cyclist); ``aos``: the average
  orientation similarity over the ``bbox`` matches, each true positive counting
  ``(1 + cos(alpha_gt - alpha_dt)) / 2`` (``aos_i = similarity_i / (tp_i + fp_i)``, made
  monotone and averaged like the precision);

- difficulty by the ground truth's 2D box height, occlusion and truncation::

      easy:     height >= 40 px,  occluded <= 0 (fully visible),  truncated <= 0.15
      moderate: height >= 25 px,  occluded <= 1 (partly),          truncated <= 0.30
      hard:     height >= 25 px,  occluded <= 2 (largely),         truncated <= 0.50

  a ground truth of the class outside the difficulty, or of the neighbouring class (``Van`` for
  ``Car``, ``Person_sitting`` for ``Pedestrian``), is *ignored*: a detection matched to it is
  neither a true nor a false positive, and missing it is no false negative. Detections lower
  than the difficulty's minimum height are ignored the same way.
- ``DontCare`` objects are never targets. With ``dontcare_filter`` (by default what the devkit
  does: on for ``bbox`` / ``aos``, off for BEV / 3D) unmatched detections whose image box lies in a
  DontCare region (intersection over the detection's area > the IoU threshold) are not false
  positives.
- a detection matches a ground truth when their rotated BEV (or 3D) IoU exceeds 0.7 (Car) or
  0.5 (Pedestrian, Cyclist); each ground truth takes one detection: the highest-scoring one when
  the score thresholds are collected, the one with the largest overlap when counting.
- score thresholds are taken from the true positives' scores so that recall steps by 1/40;
  precision at each threshold is made monotone (``p_i = max_{j >= i} p_j``), then
  ``AP_R40 = mean(p_1 .. p_40)`` and ``AP_11 = mean(p_0, p_4, ..., p_40)`` (in percent).

One difference is kept on purpose: where a class has no valid ground truth at a difficulty the
AP is ``empty_ap`` (default NaN, "not measured"); the official code reports 0 there (pass
``empty_ap=0.0`` to reproduce it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np

from .boxes import iou_3d, iou_bev

__all__ = ["kitti_eval", "clean_frame", "camera_boxes", "iou_camera_bev", "iou_camera_3d",
           "iou_image", "DIFFICULTIES", "IOU_THRESHOLDS", "METRICS"]

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
IOU_THRESHOLDS = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NEIGHBOURS = {"Car": "Van", "Pedestrian": "Person_sitting"}
NUM_SAMPLE_PTS = 41
METRICS = ("bbox", "bev", "3d", "aos")
#: The camera-frame box of an annotation (KITTI label fields).
CAMERA_KEYS = ("location", "dimensions", "rotation_y")


def camera_boxes(anno: Mapping[str, Any]) -> np.ndarray:
    """Camera boxes ``(K, 7)`` = ``(x, y, z) bottom centre, (h, w, l), rotation_y`` of an
    annotation with KITTI ``location (K, 3)``, ``dimensions (K, 3)`` (h, w, l), ``rotation_y``."""
    loc = np.asarray(anno["location"], dtype=np.float64).reshape(-1, 3)
    dims = np.asarray(anno["dimensions"], dtype=np.float64).reshape(-1, 3)
    ry = np.asarray(anno["rotation_y"], dtype=np.float64).reshape(-1, 1)
    return np.concatenate([loc, dims, ry], 1)


def _camera_as_upright(cam: np.ndarray) -> np.ndarray:
    """Camera boxes ``(K, 7)`` as ``[x, y, z, dx, dy, dz, heading]`` boxes of ``boxes.iou_*``:
    BEV axes (camera x, camera z), vertical -(camera y) with the centre at ``h/2 - y``, length
    along ``(cos ry, -sin ry)`` = heading ``-ry``. An isometry of both boxes, so IoUs are those
    of the camera frame."""
    x, y, z, h, w, l, ry = np.nan_to_num(cam).T
    return np.stack([x, z, h / 2 - y, l, w, h, -ry], 1)


def iou_camera_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotated IoU ``(M, K)`` of camera boxes ``(M, 7)`` and ``(K, 7)`` in the camera x-z plane."""
    return iou_bev(_camera_as_upright(a), _camera_as_upright(b))


def iou_camera_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU ``(M, K)`` of camera boxes (BEV overlap in x-z times the overlap along camera y)."""
    return iou_3d(_camera_as_upright(a), _camera_as_upright(b))


def iou_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(D, K)`` of image boxes ``(D, 4)`` and ``(K, 4)`` (left, top, right, bottom)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    iw, ih = np.clip(hi - lo, 0, None).transpose(2, 0, 1)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def clean_frame(gt: Mapping[str, Any], dt: Mapping[str, Any], cls: str, difficulty: int):
    """Devkit flags of one frame for ``cls`` at ``difficulty`` (0 easy, 1 moderate, 2 hard).

    Returns ``(ignored_gt (K,), ignored_dt (D,), dontcare_bbox (C, 4), num_valid)`` with flags
    0 (counts), 1 (ignored) and -1 (other class)."""
    names = [str(n) for n in gt["name"]]
    bbox = np.asarray(gt["bbox"], dtype=np.float64).reshape(-1, 4)
    height = bbox[:, 3] - bbox[:, 1]
    ignored_gt = np.full(len(names), -1, dtype=np.int64)
    num_valid = 0
    for i, n in enumerate(names):
        if n.lower() == cls.lower():
            valid = 1
        elif NEIGHBOURS.get(cls, "").lower() == n.lower():
            valid = 0
        else:
            valid = -1
        ignore = (int(gt["occluded"][i]) > MAX_OCCLUSION[difficulty]
                  or float(gt["truncated"][i]) > MAX_TRUNCATION[difficulty]
                  or height[i] <= MIN_HEIGHT[difficulty])
        if valid == 1 and not ignore:
            ignored_gt[i] = 0
            num_valid += 1
        elif valid == 0 or (valid == 1 and ignore):
            ignored_gt[i] = 1
    dc = bbox[[n == "DontCare" for n in names]] if len(names) else np.zeros((0, 4))
    dnames = [str(n) for n in dt["name"]]
    dbox = np.asarray(dt["bbox"], dtype=np.float64).reshape(-1, 4)
    dheight = dbox[:, 3] - dbox[:, 1]
    ignored_dt = np.full(len(dnames), -1, dtype=np.int64)
    for i, n in enumerate(dnames):
        if dheight[i] < MIN_HEIGHT[difficulty]:
            ignored_dt[i] = 1
        elif n.lower() == cls.lower():
            ignored_dt[i] = 0
    return ignored_gt, ignored_dt, dc.reshape(-1, 4), num_valid


@numba.njit(cache=True)
def _statistics(overlaps, ignored_gt, ignored_dt, dc_overlaps, scores, gt_alpha, dt_alpha,
                min_overlap, thresh, compute_fp):
    """Devkit counting for one frame. ``overlaps (D, K)``, ``dc_overlaps (D, C)`` (intersection
    over detection area with DontCare boxes, or (D, 0)), ``gt_alpha (K,)``, ``dt_alpha (D,)``.
    Returns ``tp, fp, fn, tp_scores, similarity`` (the sum of ``(1 + cos(delta alpha)) / 2``
    over the true positives)."""
    n_dt, n_gt = overlaps.shape
    assigned = np.zeros(n_dt, dtype=np.bool_)
    below = np.zeros(n_dt, dtype=np.bool_)
    if compute_fp:
        for i in range(n_dt):
            below[i] = scores[i] < thresh
    tp = 0
    fp = 0
    fn = 0
    tp_scores = np.empty(n_gt)
    n_scores = 0
    similarity = 0.0
    no_det = -1e30
    for j in range(n_gt):
        if ignored_gt[j] == -1:
            continue
        det = -1
        best = no_det
        max_overlap = 0.0
        on_ignored = False
        for i in range(n_dt):
            if ignored_dt[i] == -1 or assigned[i] or below[i]:
                continue
            ov = overlaps[i, j]
            if not compute_fp:
                if ov > min_overlap and scores[i] > best:
                    det = i
                    best = scores[i]
            elif ov > min_overlap and (ov > max_overlap or on_ignored) and ignored_dt[i] == 0:
                max_overlap = ov
                det = i
                best = 1.0
                on_ignored = False
            elif ov > min_overlap and best == no_det and ignored_dt[i] == 1:
                det = i
                best = 1.0
                on_ignored = True
        if best == no_det:
            if ignored_gt[j] == 0:
                fn += 1
        elif ignored_gt[j] == 1 or ignored_dt[det] == 1:
            assigned[det] = True
        else:
            tp += 1
            tp_scores[n_scores] = scores[det]
            n_scores += 1
            similarity += (1.0 + np.cos(gt_alpha[j] - dt_alpha[det])) / 2.0
            assigned[det] = True
    if compute_fp:
        for i in range(n_dt):
            if not (assigned[i] or ignored_dt[i] != 0 or below[i]):
                # a detection in a DontCare region is no false positive
                in_dc = False
                for c in range(dc_overlaps.shape[1]):
                    if dc_overlaps[i, c] > min_overlap:
                        in_dc = True
                        break
                if not in_dc:
                    fp += 1
    return tp, fp, fn, tp_scores[:n_scores], similarity


def _thresholds(scores: np.ndarray, num_gt: int) -> np.ndarray:
    """Scores at which recall comes closest to ``0, 1/40, ..., 1`` (devkit's getThresholds)."""
    scores = np.sort(scores)[::-1]
    out = []
    current = 0.0
    for i, s in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if right - current < current - left and i < len(scores) - 1:
            continue
        out.append(s)
        current += 1.0 / (NUM_SAMPLE_PTS - 1)
    return np.asarray(out)


def _box_overlap_over_first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Image-box intersection over the area of ``a``: ``(D, 4), (C, 4) -> (D, C)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    iw, ih = np.clip(hi - lo, 0, None).transpose(2, 0, 1)
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return iw * ih / np.maximum(area[:, None], 1e-12)


def _check_annos(name: str, annos, keys) -> None:
    if not isinstance(annos, Sequence) or isinstance(annos, (str, bytes)):
        raise TypeError(f"{name}: expected a list of per-frame dicts, got {type(annos).__name__}")
    for i, a in enumerate(annos):
        missing = [k for k in keys if k not in a]
        if missing:
            raise ValueError(f"{name}[{i}]: missing keys {missing} (expected {list(keys)})")


def _box_frame(gt_annos, dt_annos, frame: str) -> str:
    """``"camera"`` or ``"lidar"``: ``auto`` is camera when every annotation has camera boxes."""
    if frame not in ("auto", "camera", "lidar"):
        raise ValueError(f"frame: expected 'auto', 'camera' or 'lidar', got {frame!r}")
    if frame != "auto":
        return frame
    has_camera = all(all(k in a for k in CAMERA_KEYS) for a in list(gt_annos) + list(dt_annos))
    return "camera" if has_camera else "lidar"


def _required_keys(metrics, frame: str, detections: bool) -> tuple[str, ...]:
    keys = ["name", "bbox"] + ([] if detections else ["truncated", "occluded"])
    if any(m in ("bev", "3d") for m in metrics):
        keys += list(CAMERA_KEYS) if frame == "camera" else ["boxes"]
    if detections:
        keys.append("score")
    if "aos" in metrics:
        keys.append("alpha")
    return tuple(dict.fromkeys(keys))


def _frame_overlaps(gt: Mapping[str, Any], dt: Mapping[str, Any], metric: str,
                    frame: str) -> np.ndarray:
    """Overlaps ``(D, K)`` of one frame's detections with its ground truth (0 for DontCare)."""
    if metric in ("bbox", "aos"):
        ov = iou_image(dt["bbox"], gt["bbox"])
    elif frame == "camera":
        iou_fn = iou_camera_bev if metric == "bev" else iou_camera_3d
        ov = iou_fn(camera_boxes(dt), camera_boxes(gt))
    else:
        iou_fn = iou_bev if metric == "bev" else iou_3d
        gboxes = np.nan_to_num(np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 7))
        ov = iou_fn(np.asarray(dt["boxes"], dtype=np.float64).reshape(-1, 7), gboxes)
    ov[:, [str(n) == "DontCare" for n in gt["name"]]] = 0.0
    return ov


def _overlaps(gt_annos, dt_annos, metric: str, frame: str, use_dc: bool) -> tuple[list, list]:
    """Per frame, the overlaps ``(D, K)`` of ``metric`` and the detections' overlaps with the
    DontCare boxes ``(D, C)`` (``(D, 0)`` without ``use_dc``)."""
    overlaps, dc_overlaps = [], []
    for gt, dt in zip(gt_annos, dt_annos):
        overlaps.append(_frame_overlaps(gt, dt, metric, frame))
        dcb = np.asarray(gt["bbox"], dtype=np.float64).reshape(-1, 4)[
            [str(n) == "DontCare" for n in gt["name"]]]
        dbox = np.asarray(dt["bbox"], dtype=np.float64).reshape(-1, 4)
        dc_overlaps.append(_box_overlap_over_first(dbox, dcb) if use_dc
                           else np.zeros((len(dbox), 0)))
    return overlaps, dc_overlaps


def kitti_eval(gt_annos: Sequence[Mapping[str, Any]], dt_annos: Sequence[Mapping[str, Any]],
               classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
               metrics: Sequence[str] = ("bev", "3d"),
               iou_thresholds: Mapping[str, float] | None = None,
               dontcare_filter: bool | None = None, frame: str = "auto",
               empty_ap: float = float("nan")) -> dict[str, float]:
    """KITTI AP of detections against ground truth, per class, metric and difficulty.

    Args:
        gt_annos: per frame ``{"name" (K,), "bbox" (K, 4) image boxes, "truncated" (K,),
            "occluded" (K,)}`` and, for BEV / 3D, the camera boxes ``"location" (K, 3)``
            (bottom centre), ``"dimensions" (K, 3)`` (h, w, l), ``"rotation_y" (K,)`` (the
            label's fields) or LiDAR boxes ``"boxes" (K, 7)`` (NaN for DontCare); ``"alpha"
            (K,)`` for AOS.
        dt_annos: per frame (same order) ``{"name" (D,), "score" (D,), "bbox" (D, 4)}`` and
            the same box and angle fields.
        classes: classes evaluated (default Car, Pedestrian, Cyclist).
        metrics: any of ``"bbox"`` (2D), ``"bev"``, ``"3d"``, ``"aos"``; default BEV and 3D.
        iou_thresholds: per class (default 0.7 / 0.5 / 0.5).
        dontcare_filter: drop false positives in DontCare image regions; default None: as the
            devkit, for ``bbox`` / ``aos`` only.
        frame: where BEV / 3D boxes are compared: ``"camera"`` (the official evaluation),
            ``"lidar"`` (the ``boxes`` field: upright along LiDAR z, close to but not the
            official numbers) or ``"auto"`` (default: camera when every annotation has
            ``location``, ``dimensions`` and ``rotation_y``, else LiDAR).
        empty_ap: AP where a class has no valid ground truth at a difficulty (default NaN; the
            official code reports 0).

    Returns:
        ``{"<cls>/<metric>_<difficulty>_R40": AP, "..._R11": AP}`` in percent.
    """
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"metrics: expected 'bev' and/or '3d', got {m!r} (also known: "
                             f"'bbox', 'aos')")
    box_frame = _box_frame(gt_annos, dt_annos, frame)
    _check_annos("gt_annos", gt_annos, _required_keys(metrics, box_frame, detections=False))
    _check_annos("dt_annos", dt_annos, _required_keys(metrics, box_frame, detections=True))
    if len(gt_annos) != len(dt_annos):
        raise ValueError(f"dt_annos: expected one entry per frame ({len(gt_annos)}), "
                         f"got {len(dt_annos)}")
    thr = dict(IOU_THRESHOLDS, **(iou_thresholds or {}))
    out: dict[str, float] = {}
    frame_overlaps: dict[tuple[str, bool], tuple[list, list]] = {}  # bbox and aos share theirs
    cleaned: dict[tuple[str, int], tuple[list, int]] = {}
    for metric in metrics:
        image_metric = metric in ("bbox", "aos")
        use_dc = image_metric if dontcare_filter is None else bool(dontcare_filter)
        key = ("bbox" if image_metric else metric, use_dc)
        if key not in frame_overlaps:
            frame_overlaps[key] = _overlaps(gt_annos, dt_annos, metric, box_frame, use_dc)
        overlaps, dc_overlaps = frame_overlaps[key]
        for cls in classes:
            min_overlap = float(thr.get(cls, 0.5))
            for d, dname in enumerate(DIFFICULTIES):
                if (cls, d) not in cleaned:  # the flags do not depend on the metric
                    cleaned[cls, d] = _clean_frames(gt_annos, dt_annos, cls, d)
                ap40, ap11 = _class_ap(gt_annos, dt_annos, overlaps, dc_overlaps, cleaned[cls, d],
                                       min_overlap, orientation=metric == "aos")
                if ap40 is None:
                    ap40 = ap11 = float(empty_ap)
                out[f"{cls}/{metric}_{dname}_R40"] = ap40
                out[f"{cls}/{metric}_{dname}_R11"] = ap11
    return out


def _alphas(anno: Mapping[str, Any], n: int, orientation: bool) -> np.ndarray:
    if not orientation:
        return np.zeros(n)
    return np.asarray(anno["alpha"], dtype=np.float64).reshape(n)


def _clean_frames(gt_annos, dt_annos, cls: str, d: int) -> tuple[list, int]:
    """Per frame ``(ignored_gt, ignored_dt, scores)`` of ``cls`` at difficulty ``d``
    (``clean_frame``), and the number of valid ground truths."""
    flags, num_valid = [], 0
    for gt, dt in zip(gt_annos, dt_annos):
        ig, idt, _, nv = clean_frame(gt, dt, cls, d)
        flags.append((ig, idt, np.asarray(dt["score"], dtype=np.float64).reshape(-1)))
        num_valid += nv
    return flags, num_valid


def _class_ap(gt_annos, dt_annos, overlaps, dc_overlaps, cleaned, min_overlap,
              orientation: bool = False):
    """``(AP_R40, AP_11)`` in percent of the class and difficulty that ``cleaned``
    (``_clean_frames``) flags, ``(None, None)`` without valid ground truth. ``orientation``: the
    AOS instead of the precision."""
    flags, num_valid = cleaned
    if num_valid == 0:
        return None, None
    scores_all = []
    frames = [(ig, idt, sc, _alphas(gt, len(ig), orientation), _alphas(dt, len(idt), orientation))
              for (ig, idt, sc), gt, dt in zip(flags, gt_annos, dt_annos)]
    for (ig, idt, sc, ga, da), ov, dco in zip(frames, overlaps, dc_overlaps):
        s = _statistics(ov, ig, idt, dco, sc, ga, da, min_overlap, 0.0, False)[3]
        scores_all.append(s)
    thresholds = _thresholds(np.concatenate(scores_all) if scores_all else np.zeros(0), num_valid)
    curve = np.zeros(NUM_SAMPLE_PTS)
    for t, th in enumerate(thresholds):
        tp = fp = 0
        similarity = 0.0
        for (ig, idt, sc, ga, da), ov, dco in zip(frames, overlaps, dc_overlaps):
            a, b, _, _, sim = _statistics(ov, ig, idt, dco, sc, ga, da, min_overlap, th, True)
            tp, fp, similarity = tp + a, fp + b, similarity + sim
        curve[t] = (similarity if orientation else tp) / max(tp + fp, 1)
    for t in range(len(thresholds)):
        curve[t] = curve[t:].max()
    return (float(curve[1:].sum() / (NUM_SAMPLE_PTS - 1) * 100),
            float(curve[::4].sum() / 11 * 100))
