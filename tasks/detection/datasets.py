"""Detection datasets: ``KittiDataset`` (official KITTI object layout) and ``SyntheticLidar``
(ray-cast scenes, the embedded default).

Every sample is a dict (``points`` first, so ``pack_collate`` packs along points)::

    points      (N, 4) float32   x, y, z, reflectance (LiDAR frame)
    gt_boxes    (M, 7) float32   x, y, z, dx, dy, dz, heading (OpenPCDet convention)
    gt_labels   (M,)   int64     1-based index into ``classes``
    gt_names    [M] str
    frame_id    str
    calib       {"P2" (3, 4), "R0" (3, 3), "V2C" (3, 4)} float32
    annos       every labelled object for the KITTI evaluation (DontCare and other classes
                included): name (K,) str, boxes (K, 7) LiDAR, bbox (K, 4), truncated (K,),
                occluded (K,) and the label's camera-frame fields location (K, 3) bottom centre,
                dimensions (K, 3) h, w, l, rotation_y (K,), alpha (K,) (KittiDataset only)

Boxes and labels: ``gt_boxes (M, 7)`` with a separate ``gt_labels (M,)``, where OpenPCDet's
datasets hand one ``gt_boxes (M, 8)`` whose last column is the 1-based class index; the
7 columns are the same (``[x, y, z, dx, dy, dz, heading]``). ``np.concatenate([gt_boxes,
gt_labels[:, None]], 1)`` gives OpenPCDet's array; ``tasks.detection.interop`` converts
annotations and detections to and from OpenPCDet's ``result.pkl`` entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.cache import cache_root, files_digest
from geossm.registry import DATASETS
from geossm.transforms import Compose, build_transforms

from .kitti import (Calibration, camera_to_lidar_boxes, in_image_fov, read_calib, read_label,
                    read_velodyne)
from .transforms import DetectionPreprocess, GTSampling, ShufflePoints

__all__ = ["KittiDataset", "SyntheticLidar"]

KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
#: Bumped when the cached GT-sampling database's content or layout changes.
GT_DATABASE_VERSION = 1


def _check_classes(classes) -> tuple[str, ...]:
    if isinstance(classes, str) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes: expected a non-empty list of class names, got {classes!r}")
    return tuple(classes)


class _DetectionDataset(torch.utils.data.Dataset):
    """Shared pipeline: raw sample -> augmentations (training only) -> ``DetectionPreprocess``
    (range filter, dtypes) -> shuffle (training only)."""

    def __init__(self, classes, augment, point_cloud_range, training: bool, seed: int):
        self.classes = _check_classes(classes)
        self.augment = build_transforms(augment) if training else Compose()
        for transform in self.augment:
            if isinstance(transform, GTSampling):  # its database: this dataset's frames
                transform.attach(self)
        self.preprocess = DetectionPreprocess(point_cloud_range)
        self.shuffle = ShufflePoints() if training else None
        self.training = training
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def raw(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        # a fresh stream per draw when training (augmentations differ across epochs), a fixed one
        # otherwise; torch's seed ties it to the loader's seeded generator
        rng = np.random.default_rng(
            [self.seed, index, torch.initial_seed() % (2 ** 32) if self.training else 0])
        s = self.preprocess(self.augment(self.raw(index), rng))
        if self.shuffle is not None:
            s = self.shuffle(s, rng)
        return s


@DATASETS.register
class KittiDataset(_DetectionDataset):
    """KITTI 3D object detection, read from the official layout (see ``tasks.detection.kitti``).

    Args:
        root: the KITTI object folder (holding ``training/`` and/or ``testing/``).
        split: ``"training"`` / ``"testing"`` (every frame of that folder), or ``"train"``,
            ``"val"``, ``"trainval"``, ``"test"``: the ids of ``ImageSets/<split>.txt`` when it
            exists, else every frame of ``training/`` (``testing/`` for ``test``). Default
            ``"training"``.
        classes: classes kept as targets, default ``("Car", "Pedestrian", "Cyclist")``; other
            classes and DontCare are dropped from ``gt_boxes`` (kept in ``annos`` for evaluation).
        augment: training augmentations, config entries ``{name: ..., **kwargs}``
            (``GTSampling`` with ``sample_groups: {Car: 15, ...}``, ``GlobalFlip``,
            ``GlobalRotation``, ``GlobalScaling``, ``ObjectNoise``), applied in the listed
            order for ``train`` / ``training`` / ``trainval`` only. Default none.
        point_cloud_range: ``[x0, y0, z0, x1, y1, z1]`` filter (default OpenPCDet's KITTI range
            ``[0, -39.68, -3, 69.12, 39.68, 1]``); ``None`` keeps everything.
        fov_only: keep only points that project into the camera image (KITTI labels only
            objects seen by the camera), default True.
        seed: augmentation seed, default 0.

    Raises ``FileNotFoundError`` naming the missing folder/file and ``ValueError`` naming the
    malformed file (truncated ``.bin``, label lines without 15 fields, incomplete calibration).
    """

    def __init__(self, root: str | os.PathLike, split: str = "training",
                 classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                 augment: Sequence[Mapping[str, Any]] | None = None,
                 point_cloud_range: Sequence[float] | None = KITTI_RANGE, fov_only: bool = True,
                 seed: int = 0):
        if root is None:
            raise ValueError("root: expected the KITTI object folder (with training/), got None")
        self.root = Path(root)
        splits = ("training", "testing", "train", "val", "trainval", "test")
        if split not in splits:
            raise ValueError(f"split: expected one of {splits}, got {split!r}")
        self.split = split
        self.folder = "testing" if split in ("testing", "test") else "training"
        base = self.root / self.folder
        velo = base / "velodyne"
        if not velo.is_dir():
            raise FileNotFoundError(f"KITTI folder not found: {velo} (expected the official "
                                    "layout <root>/{training,testing}/velodyne); set "
                                    "data.root=PATH to the KITTI object folder holding "
                                    "training/velodyne/<id>.bin, training/calib/<id>.txt and "
                                    "training/label_2/<id>.txt (testing/ and ImageSets/ "
                                    "optional)")
        image_set = self.root / "ImageSets" / f"{split}.txt"
        if split not in ("training", "testing") and image_set.is_file():
            ids = [ln.strip() for ln in image_set.read_text().splitlines() if ln.strip()]
        else:
            ids = sorted(p.stem for p in velo.glob("*.bin"))
            if split in ("train", "val"):
                # the official download has no ImageSets: both splits would be every training
                # frame, and a model would be selected and scored on the frames it trained on
                warnings.warn(f"KITTI: no {image_set}: split '{split}' reads every frame of "
                              f"{base} (train and val are then the same frames); put the "
                              "train.txt / val.txt frame lists (e.g. OpenPCDet's ImageSets) "
                              "there", stacklevel=2)
        if not ids:
            raise FileNotFoundError(f"no frames found in {velo}")
        self.frame_ids = ids
        self.has_labels = self.folder == "training"
        self.fov_only = bool(fov_only)
        super().__init__(classes, augment, point_cloud_range,
                         training=split in ("train", "training", "trainval"), seed=seed)

    def gt_database_path(self) -> Path:
        """The cached GT-sampling database of these frames (``GTSampling``):
        ``<cache_root>/detection/kitti_gt_database_<key>.npz``, the key a hash of the root,
        split, frame ids, classes, ``fov_only`` and each frame's label and point-cloud file size
        and modification time (an edited frame makes a new database)."""
        base = self.root / self.folder
        digest = hashlib.sha256()
        header = [GT_DATABASE_VERSION, str(self.root.resolve()), self.split, list(self.classes),
                  self.fov_only]
        digest.update(json.dumps(header).encode())
        frames = [base / folder / f"{fid}{suffix}" for fid in self.frame_ids
                  for folder, suffix in (("label_2", ".txt"), ("velodyne", ".bin"),
                                         ("calib", ".txt"))]
        digest.update(files_digest(frames, content=False).encode())
        return cache_root() / "detection" / f"kitti_gt_database_{digest.hexdigest()[:16]}.npz"

    def raw(self, index: int) -> dict[str, Any]:
        fid = self.frame_ids[index]
        base = self.root / self.folder
        points = read_velodyne(base / "velodyne" / f"{fid}.bin")
        calib = read_calib(base / "calib" / f"{fid}.txt")
        if self.fov_only:
            points = points[in_image_fov(points, calib)]
        annos = _kitti_annos(base / "label_2" / f"{fid}.txt", calib) if self.has_labels \
            else _empty_annos()
        keep = np.array([n in self.classes for n in annos["name"]], dtype=bool)
        return {"points": points, "gt_boxes": annos["boxes"][keep].astype(np.float32),
                "gt_labels": np.array([self.classes.index(n) + 1 for n in annos["name"][keep]],
                                      dtype=np.int64),
                "gt_names": [str(n) for n in annos["name"][keep]], "frame_id": fid,
                "calib": calib.as_dict(), "annos": annos}


def _empty_annos() -> dict[str, np.ndarray]:
    return {"name": np.zeros(0, dtype=str), "boxes": np.zeros((0, 7)), "bbox": np.zeros((0, 4)),
            "truncated": np.zeros(0), "occluded": np.zeros(0, dtype=np.int64),
            "location": np.zeros((0, 3)), "dimensions": np.zeros((0, 3)),
            "rotation_y": np.zeros(0), "alpha": np.zeros(0)}


def _kitti_annos(path: Path, calib: Calibration) -> dict[str, np.ndarray]:
    lab = read_label(path)
    boxes = camera_to_lidar_boxes(lab["location"], lab["dimensions"], lab["rotation_y"], calib)
    boxes[lab["name"] == "DontCare"] = np.nan  # DontCare regions are 2D only
    # the camera-frame fields are what the official evaluation compares (evaluation.py)
    return {"name": lab["name"], "boxes": boxes, "bbox": lab["bbox"],
            "truncated": lab["truncated"], "occluded": lab["occluded"],
            "location": lab["location"], "dimensions": lab["dimensions"],
            "rotation_y": lab["rotation_y"], "alpha": lab["alpha"]}


@DATASETS.register
class SyntheticLidar(_DetectionDataset):
    """Procedurally generated LiDAR scenes ray-cast with a 64-beam spinning sensor (see
    ``tasks.detection.synthetic``), deterministic from ``seed``: frame ``i`` of split ``s`` is
    ``generate_scene(hash(seed, s, i))``.

    Args:
        root: unused (no files), accepted for the common dataset signature.
        split: ``"train"`` / ``"val"`` / ``"test"`` (disjoint seeds), default ``"train"``.
        num_samples / num_val_samples: frames of the training / other splits (512 / 64).
        classes: default ``("Car", "Pedestrian", "Cyclist")``.
        augment / point_cloud_range: as for ``KittiDataset`` (range default the scene extent).
        scene: keyword arguments of ``generate_scene`` (objects, range, beams ...); its
            ``y_range`` defaults to the lateral point-cloud range less 0.5 m.
        seed: default 0.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 num_samples: int = 512, num_val_samples: int = 64,
                 classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                 augment: Sequence[Mapping[str, Any]] | None = None,
                 point_cloud_range: Sequence[float] | None = (0.0, -25.6, -3.0, 51.2, 25.6, 1.0),
                 scene: Mapping[str, Any] | None = None, seed: int = 0):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        n = num_samples if split == "train" else num_val_samples
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_samples/num_val_samples: expected a positive int, got {n!r}")
        self.split = split
        self.frame_ids = [f"{split}_{i:06d}" for i in range(n)]
        self.scene_kwargs = dict(scene or {})
        if point_cloud_range is not None and "y_range" not in self.scene_kwargs:
            # labelled objects inside the grid (0.5 m margin), as the evaluation counts them all
            self.scene_kwargs["y_range"] = (float(point_cloud_range[1]) + 0.5,
                                            float(point_cloud_range[4]) - 0.5)
        self._cache: dict[int, dict] = {}
        super().__init__(classes, augment, point_cloud_range, training=split == "train",
                         seed=seed)

    def raw(self, index: int) -> dict[str, Any]:
        from .synthetic import generate_scene

        if index not in self._cache:
            split_id = ("train", "val", "test").index(self.split)
            scene = generate_scene(np.random.default_rng([self.seed, split_id, index]),
                                   classes=self.classes, **self.scene_kwargs)
            scene["frame_id"] = self.frame_ids[index]
            self._cache[index] = scene
        s = self._cache[index]
        return {k: (v.copy() if isinstance(v, np.ndarray) else
                    (list(v) if isinstance(v, list) else v)) for k, v in s.items()}
