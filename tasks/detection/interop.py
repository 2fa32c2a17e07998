"""Conversions to and from OpenPCDet's data structures.

Two differences a user of OpenPCDet meets here:

- **Ground truth in a batch.** geossm samples carry ``gt_boxes (M, 7)`` ``[x, y, z, dx, dy, dz,
  heading]`` and ``gt_labels (M,)`` (1-based index into ``data.classes``); OpenPCDet carries one
  ``gt_boxes (M, 8)`` whose last column is that index. ``boxes_with_labels`` /
  ``split_boxes_and_labels`` go from one to the other.
- **Annotations** (the entries of OpenPCDet's ``result.pkl`` and of its ``kitti_infos_*.pkl``
  ``annos``): per frame a dict with ``name``, ``truncated``, ``occluded``, ``alpha``,
  ``bbox (N, 4)``, ``dimensions (N, 3)``, ``location (N, 3)``, ``rotation_y``, ``score``,
  ``boxes_lidar (N, 7)``, ``frame_id``. OpenPCDet's ``dimensions`` are ordered **(l, h, w)**,
  the KITTI label files' and geossm's **(h, w, l)**; geossm keeps the LiDAR boxes as ``boxes``.
  ``to_openpcdet_annos`` / ``from_openpcdet_annos`` convert lists of such dicts (the evaluation
  entries of ``task.detections_to_anno`` and of the datasets' ``annos``), so detections can be
  scored by OpenPCDet's ``kitti_eval.get_official_eval_result`` and its ``result.pkl`` by
  ``evaluation.kitti_eval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["boxes_with_labels", "split_boxes_and_labels", "to_openpcdet_annos",
           "from_openpcdet_annos"]

#: geossm / KITTI label (h, w, l) -> OpenPCDet (l, h, w), and back.
_TO_LHW = [2, 0, 1]
_TO_HWL = [1, 2, 0]


def boxes_with_labels(gt_boxes, gt_labels) -> np.ndarray:
    """OpenPCDet's ``gt_boxes (M, 8)``: ``gt_boxes (M, 7)`` with ``gt_labels (M,)`` (1-based)
    as the last column."""
    boxes = np.asarray(gt_boxes, dtype=np.float64)
    labels = np.asarray(gt_labels).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise ValueError(f"gt_boxes: expected shape (M, 7), got {boxes.shape}")
    if len(labels) != len(boxes):
        raise ValueError(f"gt_labels: expected {len(boxes)} labels (one per box), got {len(labels)}")
    return np.concatenate([boxes, labels[:, None].astype(np.float64)], 1)


def split_boxes_and_labels(gt_boxes) -> tuple[np.ndarray, np.ndarray]:
    """OpenPCDet's ``gt_boxes (M, 8)`` -> ``gt_boxes (M, 7)``, ``gt_labels (M,)`` int64."""
    boxes = np.asarray(gt_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 8:
        raise ValueError(f"gt_boxes: expected shape (M, 8) (7 box values and the class index), "
                         f"got {boxes.shape}")
    return boxes[:, :7].copy(), np.rint(boxes[:, 7]).astype(np.int64)


def _field(anno: Mapping[str, Any], key: str, n: int, default: float,
           width: int | None = None) -> np.ndarray:
    shape = (n,) if width is None else (n, width)
    if key in anno:
        return np.asarray(anno[key], dtype=np.float64).reshape(shape)
    return np.full(shape, default)


def _require_camera_fields(anno: Mapping[str, Any], index: int, hint: str) -> None:
    """``ValueError`` naming entry ``index`` and the camera-frame keys it lacks."""
    missing = [k for k in ("name", "bbox", "location", "dimensions", "rotation_y")
               if k not in anno]
    if missing:
        raise ValueError(f"annos[{index}]: missing keys {missing} ({hint})")


def to_openpcdet_annos(annos: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """geossm evaluation entries (per frame ``name``, ``bbox``, ``location``, ``dimensions``
    (h, w, l), ``rotation_y``, optional ``alpha``, ``score``, ``truncated``, ``occluded``,
    ``boxes``, ``frame_id``) -> OpenPCDet ``result.pkl`` entries (``dimensions`` (l, h, w),
    ``boxes_lidar``). Missing optional fields get OpenPCDet's prediction defaults (0; ``alpha``
    -10, 'not given'). Raises ``ValueError`` naming an entry without camera boxes."""
    out = []
    for i, a in enumerate(annos):
        _require_camera_fields(a, i, "camera-frame fields; detections need their frame's "
                                     "calibration")
        n = len(a["name"])
        entry = {"name": np.asarray(a["name"], dtype=str).reshape(n),
                 "truncated": _field(a, "truncated", n, 0.0),
                 "occluded": _field(a, "occluded", n, 0.0),
                 "alpha": _field(a, "alpha", n, -10.0),
                 "bbox": _field(a, "bbox", n, 0.0, 4),
                 "dimensions": _field(a, "dimensions", n, 0.0, 3)[:, _TO_LHW],
                 "location": _field(a, "location", n, 0.0, 3),
                 "rotation_y": _field(a, "rotation_y", n, 0.0),
                 "score": _field(a, "score", n, 0.0),
                 "boxes_lidar": _field(a, "boxes", n, 0.0, 7)}
        if "frame_id" in a:
            entry["frame_id"] = a["frame_id"]
        out.append(entry)
    return out


def from_openpcdet_annos(annos: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenPCDet ``result.pkl`` entries (or the ``annos`` of its ``kitti_infos_*.pkl``) ->
    geossm evaluation entries, ``dimensions`` back to (h, w, l). ``boxes`` come from
    ``boxes_lidar`` (or the infos' ``gt_boxes_lidar``, which skip DontCare: those rows get NaN,
    as in geossm's annotations); ``score`` and ``frame_id`` are kept when present."""
    out = []
    for i, a in enumerate(annos):
        _require_camera_fields(a, i, "expected OpenPCDet's result.pkl fields")
        names = np.asarray(a["name"], dtype=str).reshape(-1)
        n = len(names)
        entry = {"name": names, "truncated": _field(a, "truncated", n, 0.0),
                 "occluded": _field(a, "occluded", n, 0.0).astype(np.int64),
                 "alpha": _field(a, "alpha", n, -10.0), "bbox": _field(a, "bbox", n, 0.0, 4),
                 "dimensions": _field(a, "dimensions", n, 0.0, 3)[:, _TO_HWL],
                 "location": _field(a, "location", n, 0.0, 3),
                 "rotation_y": _field(a, "rotation_y", n, 0.0)}
        lidar = a.get("boxes_lidar", a.get("gt_boxes_lidar"))
        if lidar is not None:
            lidar = np.asarray(lidar, dtype=np.float64).reshape(-1, 7)
            boxes = np.full((n, 7), np.nan)
            cared = names != "DontCare"
            if len(lidar) == n:
                boxes = lidar.copy()
            elif len(lidar) == int(cared.sum()):
                boxes[cared] = lidar
            else:
                raise ValueError(f"annos[{i}]: expected {n} LiDAR boxes (or {int(cared.sum())} "
                                 f"without DontCare), got {len(lidar)}")
            entry["boxes"] = boxes
        for key in ("score", "frame_id"):
            if key in a:
                entry[key] = (np.asarray(a[key], dtype=np.float64).reshape(n) if key == "score"
                              else a[key])
        out.append(entry)
    return out
