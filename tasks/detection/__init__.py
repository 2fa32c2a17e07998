"""LiDAR 3D object detection with linear group RNNs (LION).

- ``kitti`` / ``datasets``: the official KITTI object layout (``KittiDataset``) and ray-cast
  synthetic scenes (``SyntheticLidar``, the embedded default), boxes in OpenPCDet's convention;
- ``transforms``: GT sampling, global flip / rotation / scaling, object noise, range filter;
- ``boxes``: rotated BEV / 3D IoU (numba), points in boxes, rotated BEV NMS;
- ``evaluation``: KITTI AP (R40 and 11-point), 2D box, BEV, 3D and AOS, easy / moderate / hard,
  in the camera frame of the labels as the official evaluation;
- ``interop``: OpenPCDet's ``gt_boxes (M, 8)`` and ``result.pkl`` annotations, to and from;
- ``sparse``: voxelisation, mean VFE, submanifold sparse 3D convolution in torch (spconv optional);
- ``models``: ``LION`` (window-group Mamba backbone, BEV backbone, CenterPoint-style head);
- ``task``: ``DetectionTask``, ``render_detections`` (points, GT and predicted boxes to PNG).

Configs: ``configs/detection/synthetic_lion.yaml`` (CPU default),
``configs/detection/kitti_lion.yaml``.
"""

from . import (boxes, datasets, evaluation, interop, kitti, losses, models, sparse, synthetic,
               task, transforms)
from .datasets import KittiDataset, SyntheticLidar
from .evaluation import kitti_eval
from .models import LION
from .task import DetectionTask, render_detections

__all__ = ["boxes", "datasets", "evaluation", "interop", "kitti", "losses", "models", "sparse", "synthetic",
           "task", "transforms", "KittiDataset", "SyntheticLidar", "kitti_eval", "LION",
           "DetectionTask", "render_detections"]
