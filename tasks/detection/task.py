"""3D object detection task (``task: DetectionTask``).

Batches are packed by ``pack_collate``: ``points (N, 4)``, ``cu_seqlens (B+1,)``, ``batch (N,)``,
``gt_boxes (M, 7)``, ``gt_labels (M,)``, ``gt_boxes_cu_seqlens (B+1,)``, and per-sample lists
``gt_names``, ``frame_id``, ``calib``, ``annos``; ``collate`` adds the CenterPoint ``targets``
and, for a model with a ``voxel_planner`` (LION) and a loader with workers, the points'
``voxels`` layout. Config keys read here besides the standard ones::

    model.num_classes             heatmap classes (= len(data.classes))
    model.point_cloud_range, model.voxel_size, model.stem_stride, model.score_threshold,
    model.nms_threshold, model.max_detections, model.pre_nms
                                  the BEV grid and box decoder (models.BoxDecoder.from_config;
                                  the model class's defaults where unset)
    data.classes                  class names, default [Car, Pedestrian, Cyclist]
    loss: {reg_weight: 2.0, min_radius: 2, min_overlap: 0.1, reg_neighbours: 0}
    eval_metrics: [bev, 3d]       KITTI AP metrics reported by evaluation (bbox, bev, 3d, aos)
    eval.write_kitti              a folder: evaluation writes the detections there as KITTI
                                  submission files, <frame_id>.txt (null: none)

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

from geossm.engine import distributed
from geossm.engine.metrics import ListMetric
from geossm.engine.task import Task
from geossm.packed import cu_seqlens_from_lengths, pack_collate
from geossm.registry import TASKS

from .datasets import KITTI_RANGE
from .evaluation import kitti_eval
from .kitti import (Calibration, camera_boxes_to_image_bbox, camera_to_lidar_boxes,
                    in_image_fov, lidar_to_camera_boxes, observation_angle, read_calib,
                    read_label, read_velodyne, write_label)
from .losses import centerpoint_loss, centerpoint_targets
from .models import BoxDecoder
from .transforms import points_in_range, validate_frame

__all__ = ["DetectionTask", "KittiAPMetric", "detections_to_anno", "write_kitti_submission"]

LOSS_KEYS = ("reg_weight", "min_radius", "min_overlap", "reg_neighbours")   # of cfg.loss


class KittiAPMetric(ListMetric):
    """KITTI AP over an evaluation: keeps every frame's detections and annotations (they do not
    add up across batches), gathers them from all ranks in ``reduce``, evaluates in ``compute``.

    Args:
        decode: ``outputs -> [ {"boxes", "scores", "labels"} per sample ]``.
        classes: class names (label ``i`` is ``classes[i - 1]``).
        metrics: ``("bev", "3d")`` by default (any of ``bbox``, ``bev``, ``3d``, ``aos``).
        write_dir: a folder to write the detections to as KITTI submission files
            (``<frame_id>.txt``, camera frame, with scores) in ``compute``; default None.
    """

    list_states = ("gt", "dt")   # per-frame annotations and detections

    def __init__(self, decode, classes: Sequence[str], metrics: Sequence[str] = ("bev", "3d"),
                 write_dir: str | os.PathLike | None = None):
        super().__init__()
        self.decode, self.classes, self.metrics = decode, tuple(classes), tuple(metrics)
        self.write_dir = None if write_dir is None else Path(write_dir)

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        frame_ids = batch.get("frame_id") or [None] * len(batch["annos"])
        for det, anno, calib, fid in zip(self.decode(outputs), batch["annos"], batch["calib"],
                                         frame_ids):
            self.gt.append(anno)
            self.dt.append({**detections_to_anno(det, calib, self.classes), "frame_id": fid})

    def compute(self) -> dict[str, float]:
        if not self.gt:
            return {}
        if self.write_dir is not None and distributed.is_main():
            write_kitti_submission(self.write_dir, self.dt)
        return kitti_eval(self.gt, self.dt, self.classes, self.metrics)


def write_kitti_submission(folder: str | os.PathLike,
                           dt_annos: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write detections as the KITTI benchmark's submission: one ``<frame_id>.txt`` per frame
    in ``folder`` (created), 16 fields per line in the rectified camera frame
    (``kitti.write_label``; an empty file for a frame without detections).

    ``dt_annos``: per frame ``frame_id``, ``name``, ``alpha``, ``bbox``, ``dimensions`` (h, w,
    l), ``location``, ``rotation_y``, ``score`` (what ``detections_to_anno`` gives with a
    calibration). Raises ``ValueError`` naming the entry without a frame id or camera boxes."""
    folder = Path(folder)
    paths = []
    for i, anno in enumerate(dt_annos):
        if anno.get("frame_id") is None:
            raise ValueError(f"dt_annos[{i}]: expected a frame_id to name its .txt file, got none")
        missing = [k for k in ("location", "dimensions", "rotation_y", "alpha") if k not in anno]
        if missing:
            raise ValueError(f"dt_annos[{i}]: missing camera-frame fields {missing} (detections "
                             f"need the frame's calibration)")
        paths.append(write_label(folder / f"{anno['frame_id']}.txt", anno))
    return paths


def detections_to_anno(det: Mapping[str, np.ndarray], calib: Mapping[str, Any] | None,
                       classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Decoded LiDAR boxes of one frame as a KITTI evaluation entry: ``name``, ``boxes`` (D, 7),
    ``score`` and, with a calibration, the camera-frame fields of the official evaluation
    (``location``, ``dimensions`` (h, w, l), ``rotation_y``, ``alpha``: ``lidar_to_camera_boxes``)
    and ``bbox`` projected from the camera-frame corners (without one, a 100 px box)."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 7)
    names = np.array([classes[int(i) - 1] for i in det["labels"]], dtype=str).reshape(-1)
    anno = {"name": names, "boxes": boxes,
            "score": np.asarray(det["scores"], dtype=np.float64).reshape(-1)}
    if calib is None:
        anno["bbox"] = np.tile([0.0, 0.0, 100.0, 100.0], (len(boxes), 1))
        return anno
    cal = Calibration(*(np.asarray(calib[k], dtype=np.float64) for k in ("P2", "R0", "V2C")))
    cam = lidar_to_camera_boxes(boxes, cal)
    anno.update(location=cam[:, :3], dimensions=cam[:, 3:6], rotation_y=cam[:, 6],
                alpha=observation_angle(cam), bbox=camera_boxes_to_image_bbox(cam, cal))
    return anno


@TASKS.register
class DetectionTask(Task):
    """LiDAR 3D object detection (see the module docstring)."""

    input_keys = ("points", "cu_seqlens")
    input_suffixes = (".bin", ".npz")
    best_metric, best_mode = "Car/bev_moderate_R40", "max"

    def classes(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.get("classes") or ("Car", "Pedestrian", "Cyclist"))

    #: The built model's ``voxel_planner()`` (``LION``) when the data loader has workers
    #: (``train.num_workers > 0``): ``collate`` lays every batch's points out on its voxel grid
    #: (``batch["voxels"]``) there, so the step does not. None: no layout (without workers
    #: ``collate`` runs in the training process, where the model's own path on the device is
    #: cheaper than sorting the points on the host).
    voxel_planner = None

    def build_model(self) -> torch.nn.Module:
        n = int(self.cfg.model.get("num_classes", 3))
        if n != len(self.classes()):
            raise ValueError(f"model.num_classes: expected len(data.classes) = "
                             f"{len(self.classes())}, got {n}")
        built = super().build_model()
        planner = getattr(built, "voxel_planner", None)
        workers = int((self.cfg.get("train") or {}).get("num_workers") or 0)
        self.voxel_planner = planner() if callable(planner) and workers > 0 else None
        return built

    def forward(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """The model on ``points`` and ``cu_seqlens`` (and the ``voxels`` layout, when
        ``collate`` built one)."""
        voxels = batch.get("voxels")
        extra = {"voxels": voxels} if voxels is not None else {}
        return model(batch["points"], batch["cu_seqlens"], **extra)

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
        # The heatmap / regression targets are built here, in the data loader, on the CPU
        # tensors: the training step then has no host loop over boxes and no device-to-host
        # copy of them (the loss builds them itself for a batch without "targets"). A task
        # without a config has no grid: its batches carry none.
        if self.cfg is not None:
            batch["targets"] = self._targets(batch, int(self.cfg.model.get("num_classes", 3)),
                                             len(samples))
        # the voxel grid too (sorting the points, the host reads of their voxels per sample)
        if self.voxel_planner is not None:
            batch["voxels"] = self.voxel_planner(batch["points"], batch["cu_seqlens"])
        return batch

    def _loss_config(self) -> dict[str, Any]:
        cfg = dict(self.cfg.get("loss") or {})
        unknown = set(cfg) - set(LOSS_KEYS)
        if unknown:
            raise ValueError(f"loss: unknown keys {sorted(unknown)} "
                             f"(known: {', '.join(LOSS_KEYS)})")
        return cfg

    def _targets(self, batch: Mapping[str, Any], num_classes: int, batch_size: int):
        """``centerpoint_targets`` of the batch's boxes on the model's BEV grid."""
        cfg = self._loss_config()
        return centerpoint_targets(batch["gt_boxes"], batch["gt_labels"],
                                   batch["gt_boxes_cu_seqlens"], self.decoder.grid, num_classes,
                                   batch_size, int(cfg.get("min_radius", 2)),
                                   float(cfg.get("min_overlap", 0.1)),
                                   int(cfg.get("reg_neighbours", 0)))

    def loss(self, outputs: dict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self._loss_config()
        hm = outputs["heatmap"]
        targets = batch.get("targets")
        if targets is None or tuple(targets[0].shape) != tuple(hm.shape):
            targets = self._targets(batch, hm.shape[1], hm.shape[0])
        return centerpoint_loss(outputs, targets, float(cfg.get("reg_weight", 2.0)))

    def build_metrics(self) -> KittiAPMetric:
        metrics = tuple(self.cfg.get("eval_metrics") or ("bev", "3d"))
        write_dir = (self.cfg.get("eval") or {}).get("write_kitti")
        return KittiAPMetric(self.decoder, self.classes(), metrics, write_dir)

    # ---------------------------------------------------------------- predict
    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """A KITTI ``velodyne/<id>.bin`` (with ``calib/<id>.txt`` and, when present,
        ``label_2/<id>.txt`` beside its folder, as in the official layout: points are then
        restricted to the camera's view and ground truth is attached), or an ``.npz`` with
        ``points`` (and optional ``gt_boxes``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
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
            frame = {"points": points, "gt_boxes": gt}
        elif path.suffix == ".npz":
            # allow_pickle=False, and corrupt files are one line, as for every task
            frame = super().load_input(path)
        else:
            raise ValueError(f"input file {path}: expected a KITTI .bin or an .npz, got "
                             f"'{path.suffix}'")
        return self.preprocess(frame, source=f"input file {path}")

    def preprocess(self, frame: Mapping[str, Any], *, source: str = "sample") -> dict[str, Any]:
        """A frame ``{"points": (N, model.in_channels), "gt_boxes": (M, 7) optional}`` checked
        (``validate_frame``) and cropped to ``data.point_cloud_range``, as ``load_input``
        prepares a file."""
        pcr = self.cfg.data.get("point_cloud_range") or KITTI_RANGE
        validate_frame(frame, source=source, point_cloud_range=pcr,
                       in_channels=self.cfg.model.get("in_channels", 4))
        points = np.asarray(frame["points"]).astype(np.float32)
        gt = frame.get("gt_boxes")
        gt = np.zeros((0, 7), np.float32) if gt is None else np.asarray(gt, dtype=np.float32)
        points = points[points_in_range(points, pcr)]
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
