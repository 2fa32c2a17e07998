"""3D object detection task (``task: DetectionTask``).

Batches are packed by ``pack_collate``: ``points (N, 4)``, ``cu_seqlens (B+1,)``, ``batch (N,)``,
``gt_boxes (M, 7)``, ``gt_labels (M,)``, ``gt_boxes_cu_seqlens (B+1,)``, and per-sample lists
``gt_names``, ``frame_id``, ``calib``, ``annos``. Config keys read here besides the standard ones::

    model.num_classes             heatmap classes (= len(data.classes))
    model.point_cloud_range, model.voxel_size, model.stem_stride, model.score_threshold,
    model.nms_threshold, model.max_detections, model.pre_nms
                                  the BEV grid and box decoder (models.BoxDecoder.from_config;
                                  the model class's defaults where unset)
    data.classes                  class names, default [Car, Pedestrian, Cyclist]
    loss: {reg_weight: 2.0, min_radius: 2, min_overlap: 0.1, reg_neighbours: 0}
    eval_metrics: [bev, 3d]       KITTI AP metrics reported by evaluation

The best checkpoint is chosen by Car BEV AP R40 at moderate difficulty.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.engine.distributed import all_gather_lists
from geossm.engine.metrics import Metric
from geossm.engine.task import Task
from geossm.packed import cu_seqlens_from_lengths, pack_collate
from geossm.registry import TASKS

from .datasets import KITTI_RANGE
from .evaluation import kitti_eval
from .kitti import (Calibration, boxes_to_image_bbox, in_image_fov, read_calib, read_label,
                    read_velodyne, camera_to_lidar_boxes)
from .losses import centerpoint_loss, centerpoint_targets
from .models import BoxDecoder

__all__ = ["DetectionTask", "KittiAPMetric"]

LOSS_KEYS = ("reg_weight", "min_radius", "min_overlap", "reg_neighbours")   # of cfg.loss


class KittiAPMetric(Metric):
    """KITTI AP over an evaluation: keeps every frame's detections and annotations (they do not
    add up across batches), gathers them from all ranks in ``reduce``, evaluates in ``compute``.

    Args:
        decode: ``outputs -> [ {"boxes", "scores", "labels"} per sample ]``.
        classes: class names (label ``i`` is ``classes[i - 1]``).
        metrics: ``("bev", "3d")`` by default.
    """

    def __init__(self, decode, classes: Sequence[str], metrics: Sequence[str] = ("bev", "3d")):
        super().__init__()
        self.decode, self.classes, self.metrics = decode, tuple(classes), tuple(metrics)
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        for det, anno, calib in zip(self.decode(outputs), batch["annos"], batch["calib"]):
            self.gt.append(anno)
            self.dt.append(detections_to_anno(det, calib, self.classes))

    def reset(self) -> None:
        self.gt, self.dt = [], []

    def reduce(self) -> None:
        self.gt, self.dt = all_gather_lists(self.gt, self.dt)

    def to(self, device) -> "KittiAPMetric":
        return self

    def compute(self) -> dict[str, float]:
        if not self.gt:
            return {}
        return kitti_eval(self.gt, self.dt, self.classes, self.metrics)


def detections_to_anno(det: Mapping[str, np.ndarray], calib: Mapping[str, Any] | None,
                       classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Decoded boxes of one frame as a KITTI evaluation entry (image boxes through ``P2``)."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 7)
    if calib is not None:
        cal = Calibration(*(np.asarray(calib[k], dtype=np.float64) for k in ("P2", "R0", "V2C")))
        bbox = boxes_to_image_bbox(boxes, cal)
    else:
        bbox = np.tile([0.0, 0.0, 100.0, 100.0], (len(boxes), 1))
    names = np.array([classes[int(i) - 1] for i in det["labels"]], dtype=str).reshape(-1)
    return {"name": names, "boxes": boxes, "score": np.asarray(det["scores"], dtype=np.float64),
            "bbox": bbox}


@TASKS.register
class DetectionTask(Task):
    """LiDAR 3D object detection (see the module docstring)."""

    input_keys = ("points", "cu_seqlens")
    best_metric, best_mode = "Car/bev_moderate_R40", "max"

    def classes(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.get("classes") or ("Car", "Pedestrian", "Cyclist"))

    def build_model(self) -> torch.nn.Module:
        n = int(self.cfg.model.get("num_classes", 3))
        if n != len(self.classes()):
            raise ValueError(f"model.num_classes: expected len(data.classes) = "
                             f"{len(self.classes())}, got {n}")
        return super().build_model()

    @functools.cached_property
    def decoder(self) -> BoxDecoder:
        """Head outputs -> boxes, on the BEV grid of the configured model (from ``model.*``;
        no model is built): the targets of ``loss``, the metric's and ``postprocess``'s boxes."""
        return BoxDecoder.from_config(self.cfg.model)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = pack_collate(samples, length_key="points")
        # pack_collate omits the box boundaries when they happen to equal the point ones
        boxes = [len(s["gt_boxes"]) for s in samples]
        batch["gt_boxes_cu_seqlens"] = cu_seqlens_from_lengths(boxes, "gt_boxes")
        return batch

    def loss(self, outputs: dict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        cfg = dict(self.cfg.get("loss") or {})
        unknown = set(cfg) - set(LOSS_KEYS)
        if unknown:
            raise ValueError(f"loss: unknown keys {sorted(unknown)} "
                             f"(known: {', '.join(LOSS_KEYS)})")
        hm = outputs["heatmap"]
        targets = centerpoint_targets(batch["gt_boxes"], batch["gt_labels"],
                                      batch["gt_boxes_cu_seqlens"], self.decoder.grid, hm.shape[1],
                                      hm.shape[0], int(cfg.get("min_radius", 2)),
                                      float(cfg.get("min_overlap", 0.1)),
                                      int(cfg.get("reg_neighbours", 0)))
        return centerpoint_loss(outputs, targets, float(cfg.get("reg_weight", 2.0)))

    def build_metrics(self) -> Metric:
        metrics = tuple(self.cfg.get("eval_metrics") or ("bev", "3d"))
        return KittiAPMetric(self.decoder, self.classes(), metrics)

    # ---------------------------------------------------------------- predict
    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """A KITTI ``velodyne/<id>.bin`` (with ``calib/<id>.txt`` and, when present,
        ``label_2/<id>.txt`` beside its folder, as in the official layout: points are then
        restricted to the camera's view and ground truth is attached), or an ``.npz`` with
        ``points`` (and optional ``gt_boxes``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        pcr = self.cfg.data.get("point_cloud_range") or KITTI_RANGE
        if path.suffix == ".bin":
            points = read_velodyne(path)
            calib_path = path.parent.parent / "calib" / f"{path.stem}.txt"
            calib = read_calib(calib_path) if calib_path.is_file() else None
            gt = np.zeros((0, 7), dtype=np.float32)
            if calib is not None:
                points = points[in_image_fov(points, calib)]
                label = path.parent.parent / "label_2" / f"{path.stem}.txt"
                if label.is_file():
                    lab = read_label(label)
                    keep = np.isin(lab["name"], self.classes())
                    gt = camera_to_lidar_boxes(lab["location"][keep], lab["dimensions"][keep],
                                               lab["rotation_y"][keep], calib).astype(np.float32)
        elif path.suffix == ".npz":
            with np.load(path) as z:
                if "points" not in z:
                    raise ValueError(f"input file {path}: expected a 'points' array, got "
                                     f"{sorted(z.files)}")
                points = z["points"].astype(np.float32)
                gt = z["gt_boxes"].astype(np.float32) if "gt_boxes" in z else np.zeros((0, 7),
                                                                                       np.float32)
        else:
            raise ValueError(f"input file {path}: expected a KITTI .bin or an .npz, got "
                             f"'{path.suffix}'")
        lo, hi = np.asarray(pcr[:3]), np.asarray(pcr[3:])
        points = points[np.all((points[:, :3] >= lo) & (points[:, :3] < hi), 1)]
        return {"points": points, "gt_boxes": gt,
                "gt_labels": np.zeros(len(gt), dtype=np.int64)}

    def postprocess(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        det = self.decoder(outputs)[0]
        names = np.array([self.classes()[int(i) - 1] for i in det["labels"]], dtype=str)
        return {"pred_boxes": det["boxes"], "pred_scores": det["scores"],
                "pred_labels": det["labels"], "pred_names": names}

    def write_prediction(self, sample: Mapping[str, Any], result: Mapping[str, np.ndarray],
                         path: str | os.PathLike) -> list[Path]:
        """``.npz`` with ``coord (N, 3)``, ``gt_boxes`` and the ``pred_*`` arrays, and a ``.ply``
        of the points beside it (``render_detections`` draws both box sets)."""
        from geossm.io.ply import write_ply

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        coord = np.asarray(sample["points"])[:, :3]
        np.savez_compressed(path, coord=coord, gt_boxes=np.asarray(sample["gt_boxes"]),
                            **{k: np.asarray(v) for k, v in result.items()})
        ply = path.with_suffix(".ply")
        write_ply(ply, coord)
        return [path, ply]


def render_detections(npz: str | os.PathLike, png: str | os.PathLike, width: int = 1280,
                      height: int = 720, score_threshold: float = 0.3,
                      view: tuple[float, float, float] | None = None) -> Path:
    """Render a ``predict`` output: points (grey), ground-truth boxes (green) and predicted
    boxes with score >= ``score_threshold`` (red) as Open3D line sets, seen from ``view``
    (default ``geossm.viz.DETECTION_VIEW``: behind and above the sensor), with their colour key
    at the bottom. ``geossm viz`` draws the same from the ``.npz``."""
    from geossm import viz

    with np.load(npz) as z:
        data = {k: z[k] for k in z.files}
    boxes = (data.get("gt_boxes"), data.get("pred_boxes"), data.get("pred_scores"))
    scene = viz.detection_scene(data["coord"], *boxes, score_threshold)
    legend = viz.detection_legend(data["coord"], *boxes, score_threshold)
    return viz.render_with_legend(scene, legend, png, width, height,
                                  view=view or viz.DETECTION_VIEW)
