"""Ready-made scenes of prediction files: labels side by side (``side_by_side``) and points with
ground-truth and predicted 3D boxes (``detection_scene``), each with the ``Legend`` that
``render_file`` draws into its PNG (``side_by_side_legend``, ``detection_legend``)."""

from __future__ import annotations

import numpy as np

from .legend import Legend, Swatch, rgb255
from .palette import IGNORE_COLOR, label_colors
from .scene import Scene

#: Detection renders: ground-truth boxes green, predicted boxes red, points grey.
GT_BOX_COLOR = (0.0, 0.75, 0.0)
PRED_BOX_COLOR = (0.9, 0.0, 0.0)
DETECTION_POINT_COLOR = (0.45, 0.45, 0.5)
#: Camera direction for LiDAR scenes: behind and above the sensor, looking along +x.
DETECTION_VIEW = (-1.0, -0.15, 0.9)


def detection_scene(coord: np.ndarray, gt_boxes: np.ndarray | None = None,
                    pred_boxes: np.ndarray | None = None, pred_scores: np.ndarray | None = None,
                    score_threshold: float = 0.3, point_size: float = 2.0,
                    line_width: float = 3.0) -> Scene:
    """Points (grey), ground-truth boxes (``GT_BOX_COLOR``) and predicted boxes with score >=
    ``score_threshold`` (``PRED_BOX_COLOR``; all of them without scores) as line sets.

    Shapes: ``coord (N, 3)``, boxes ``(M, 7)`` (x, y, z, dx, dy, dz, yaw), ``pred_scores (M,)``.
    """
    scene = Scene()
    coord = np.asarray(coord, dtype=np.float64).reshape(-1, 3)
    if len(coord):
        colors = np.tile([DETECTION_POINT_COLOR], (len(coord), 1))
        scene.add_points("points", coord, colors=colors, point_size=point_size)
    if gt_boxes is not None and len(gt_boxes):
        scene.add_boxes("gt_boxes", gt_boxes, color=GT_BOX_COLOR, line_width=line_width)
    if pred_boxes is not None and len(pred_boxes):
        pred = np.asarray(pred_boxes).reshape(-1, 7)
        if pred_scores is not None:
            pred = pred[np.asarray(pred_scores).reshape(-1) >= score_threshold]
        if len(pred):
            scene.add_boxes("pred_boxes", pred, color=PRED_BOX_COLOR, line_width=line_width)
    return scene


def side_by_side(coord: np.ndarray, label: np.ndarray | None = None,
                 pred: np.ndarray | None = None, gap: float = 0.3,
                 point_size: float = 3.0) -> Scene:
    """Ground truth (left) and prediction (right) of one cloud ``coord (N, 3)``, the prediction
    shifted along +x by the cloud's width times ``1 + gap``. With one of them, a single view."""
    coord = np.asarray(coord, dtype=np.float64)
    scene = Scene()
    views = [(n, v) for n, v in (("label", label), ("pred", pred)) if v is not None]
    if not views:
        return scene.add_points("points", coord, point_size=point_size)
    width = float(np.ptp(coord[:, 0])) if len(coord) else 1.0
    shift = np.array([width * (1 + gap) if width > 0 else 1.0, 0.0, 0.0])
    for i, (name, values) in enumerate(views):
        values = np.asarray(values).reshape(-1).astype(np.int64)
        scene.add_points(name, coord + i * shift, labels=values, point_size=point_size)
    return scene


def side_by_side_legend(label: np.ndarray | None = None, pred: np.ndarray | None = None) -> Legend:
    """The legend of ``side_by_side``: "ground truth" above the labels, "prediction" above the
    prediction, and a key "classes:" with the palette colour of each label present in either
    (sorted; negative labels as one "ignored" swatch)."""
    present = [np.asarray(v).reshape(-1).astype(np.int64) for v in (label, pred) if v is not None]
    captions = {name: text for name, text, values in (("label", "ground truth", label),
                                                       ("pred", "prediction", pred))
                if values is not None}
    if not present:
        return Legend(captions)
    classes = np.unique(np.concatenate(present))
    key = [Swatch(str(k), tuple(int(c) for c in label_colors(np.array([k]))[0]))
           for k in classes[classes >= 0]]
    if (classes < 0).any():
        key.append(Swatch("ignored", tuple(int(c) for c in IGNORE_COLOR)))
    return Legend(captions, (Swatch("classes:"), *key))


def detection_legend(coord: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
                     pred_boxes: np.ndarray | None = None, pred_scores: np.ndarray | None = None,
                     score_threshold: float = 0.3) -> Legend:
    """The key of ``detection_scene`` for what is given: "points" (grey), "ground truth"
    (green box edges), "prediction" (red box edges; "prediction (score >= 0.3)" with scores)."""
    key = []
    if coord is not None and len(coord):
        key.append(Swatch("points", rgb255(DETECTION_POINT_COLOR)))
    if gt_boxes is not None:
        key.append(Swatch("ground truth", rgb255(GT_BOX_COLOR), outline=True))
    if pred_boxes is not None:
        text = "prediction" if pred_scores is None else f"prediction (score >= {score_threshold:g})"
        key.append(Swatch(text, rgb255(PRED_BOX_COLOR), outline=True))
    return Legend(key=tuple(key))
