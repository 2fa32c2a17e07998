"""Point-cloud segmentation and classification with Point Cloud Mamba.

- ``datasets``: ``SyntheticParts`` (embedded default), ``ShapeNetPart``, ``S3DIS``,
  ``ModelNet40``, ``SemanticKITTI`` (official and ``.npy`` layouts);
- ``transforms``: grid sampling, rotation / scale / flip / jitter, normalisation, crops;
- ``models``: ``PointCloudMambaSeg`` (U-Net) and ``PointCloudMambaCls`` (``tiny`` / ``base``);
- ``metrics``: OA, mAcc, per-class IoU / mIoU, ShapeNetPart instance / class mIoU;
- ``task``: ``SegmentationTask``, ``ClassificationTask``.

Configs: ``configs/default.yaml`` (synthetic parts), ``configs/segmentation/*.yaml``,
``configs/classification/*.yaml``.
"""

from . import datasets, losses, metrics, models, synthetic, task, transforms
from .datasets import S3DIS, ModelNet40, SemanticKITTI, ShapeNetPart, SyntheticParts
from .models import PointCloudMambaCls, PointCloudMambaSeg
from .task import ClassificationTask, SegmentationTask

__all__ = ["datasets", "losses", "metrics", "models", "synthetic", "task", "transforms",
           "SyntheticParts", "ShapeNetPart", "S3DIS", "ModelNet40", "SemanticKITTI",
           "PointCloudMambaSeg", "PointCloudMambaCls", "SegmentationTask", "ClassificationTask"]
