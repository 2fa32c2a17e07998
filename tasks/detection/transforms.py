"""Detection transforms on samples ``{"points" (N, >=3), "gt_boxes" (M, 7), "gt_labels" (M,),
"gt_names" [M]}``: ground-truth sampling, global flip / rotation / scaling, per-object noise,
range filtering and shuffling, and ``DetectionPreprocess``, what the datasets do to every frame.

Transforms follow ``geossm.transforms`` (``t(sample, rng=None) -> sample``, changing ``sample``
in place); configs list them as ``augment: [{name: GlobalRotation, ...}]``. The detection
datasets hand every transform of a frame one generator, drawn from ``(seed, index, torch's
seed)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from geossm.cache import build_once
from geossm.engine.inputs import check_field
from geossm.registry import TRANSFORMS
from geossm.transforms import generator

from .boxes import iou_bev, limit_period, points_in_boxes

__all__ = ["GTSampling", "GlobalFlip", "GlobalRotation", "GlobalScaling", "ObjectNoise",
           "RangeFilter", "ShufflePoints", "points_in_range", "DetectionPreprocess",
           "validate_frame"]


def _rot_z(xy: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([xy[:, 0] * c - xy[:, 1] * s, xy[:, 0] * s + xy[:, 1] * c], 1)


@TRANSFORMS.register
class GlobalFlip:
    """Mirror the scene across the x-z plane, ``y -> -y`` (heading -> -heading), with
    probability ``p`` (default 0.5): OpenPCDet's ``random_world_flip`` along x."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        if generator(rng).random() < self.p:
            s["points"][:, 1] *= -1
            s["gt_boxes"][:, 1] *= -1
            s["gt_boxes"][:, 6] *= -1
        return s


@TRANSFORMS.register
class GlobalRotation:
    """Rotate the scene about +z by an angle uniform in ``angle`` (radians, default ±pi/4)."""

    def __init__(self, angle: Sequence[float] = (-0.785398, 0.785398)):
        self.angle = tuple(float(a) for a in angle)

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        a = generator(rng).uniform(*self.angle)
        s["points"][:, :2] = _rot_z(s["points"][:, :2], a)
        s["gt_boxes"][:, :2] = _rot_z(s["gt_boxes"][:, :2], a)
        s["gt_boxes"][:, 6] = limit_period(s["gt_boxes"][:, 6] + a, period=2 * np.pi)
        return s


@TRANSFORMS.register
class GlobalScaling:
    """Scale coordinates and box sizes by a factor uniform in ``scale`` (default 0.95-1.05)."""

    def __init__(self, scale: Sequence[float] = (0.95, 1.05)):
        self.scale = tuple(float(a) for a in scale)

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        f = generator(rng).uniform(*self.scale)
        s["points"][:, :3] *= f
        s["gt_boxes"][:, :6] *= f
        return s


@TRANSFORMS.register
class ObjectNoise:
    """Move each object (box and the points inside it) by a normal translation (std ``sigma``
    metres per axis) and a yaw uniform in ``angle``; a move that would make boxes overlap in
    BEV is dropped (tried ``tries`` times)."""

    def __init__(self, sigma: Sequence[float] = (0.25, 0.25, 0.25),
                 angle: Sequence[float] = (-0.15708, 0.15708), tries: int = 10):
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.angle = tuple(float(a) for a in angle)
        self.tries = int(tries)

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        boxes, pts = s["gt_boxes"], s["points"]
        if len(boxes) == 0:
            return s
        rng = generator(rng)
        inside = points_in_boxes(pts, boxes)
        for j in range(len(boxes)):
            for _ in range(self.tries):
                t = rng.normal(0, 1, 3) * self.sigma
                a = rng.uniform(*self.angle)
                cand = boxes[j].copy()
                cand[:3] += t
                cand[6] = limit_period(cand[6] + a, period=2 * np.pi)
                others = np.delete(boxes, j, 0)
                if len(others) and iou_bev(cand[None], others).max() > 0:
                    continue
                m = inside[:, j]
                local = pts[m, :2] - boxes[j, :2]
                pts[m, :2] = _rot_z(local, a) + boxes[j, :2] + t[:2]
                pts[m, 2] += t[2]
                boxes[j] = cand
                break
        return s


def points_in_range(points: np.ndarray, point_cloud_range: Sequence[float]) -> np.ndarray:
    """Mask ``(N,)`` of the points ``(N, >=3)`` inside ``[x0, y0, z0, x1, y1, z1]`` (lower
    bounds included, upper excluded)."""
    r = np.asarray(point_cloud_range, dtype=np.float64)
    xyz = np.asarray(points)[:, :3]
    return np.all((xyz >= r[:3]) & (xyz < r[3:]), 1)


@TRANSFORMS.register
class RangeFilter:
    """Keep points inside ``point_cloud_range = [x0, y0, z0, x1, y1, z1]`` and boxes whose
    centre lies inside its x/y extent."""

    def __init__(self, point_cloud_range: Sequence[float]):
        r = np.asarray(point_cloud_range, dtype=np.float64)
        if r.shape != (6,) or np.any(r[3:] <= r[:3]):
            raise ValueError("point_cloud_range: expected [x0, y0, z0, x1, y1, z1] with x1 > x0, "
                             f"y1 > y0, z1 > z0, got {list(point_cloud_range)}")
        self.r = r

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        r = self.r
        s["points"] = s["points"][points_in_range(s["points"], r)]
        b = s["gt_boxes"]
        kb = (b[:, 0] >= r[0]) & (b[:, 0] < r[3]) & (b[:, 1] >= r[1]) & (b[:, 1] < r[4])
        return _select_boxes(s, kb)


@TRANSFORMS.register
class ShufflePoints:
    """Random point order (the voxeliser's per-voxel mean does not depend on it, but a point cap
    per frame would)."""

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        s["points"] = s["points"][generator(rng).permutation(len(s["points"]))]
        return s


def _select_boxes(s: dict, keep: np.ndarray) -> dict:
    s["gt_boxes"] = s["gt_boxes"][keep]
    s["gt_labels"] = s["gt_labels"][keep]
    s["gt_names"] = [n for n, k in zip(s["gt_names"], keep) if k]
    return s


@TRANSFORMS.register
class GTSampling:
    """Paste ground-truth objects from a database into the scene (SECOND's GT sampling).

    The database holds, per class, boxes ``(7,)`` and the points inside them (relative to the box
    centre), taken from the training frames of the dataset the transform is attached to
    (``attach``; the detection datasets attach every ``GTSampling`` of their ``augment``). A
    dataset that names a cache file for it (``gt_database_path()``: ``KittiDataset``, keyed by
    its root, split, frames, classes and files) has it built once into that ``.npz`` (through
    ``geossm.cache.build_once``: one builder, atomic) and every process — each DataLoader worker
    of every epoch — loads the file, as OpenPCDet reads its ``dbinfos`` and ``gt_database``;
    other datasets (the synthetic scenes) build it in memory at the first call. For each class up
    to ``sample_groups[class]`` objects in total are kept: random database objects whose BEV box
    overlaps neither the scene's boxes nor each other are added, and the scene's points inside
    them removed.

    Args:
        sample_groups: ``{class: target number of objects}``, default 10 of every class of the
            dataset.
        min_points: database objects with fewer points are skipped (default 5).
    """

    def __init__(self, sample_groups: Mapping[str, int] | None = None, min_points: int = 5):
        self.sample_groups = None if sample_groups is None else dict(sample_groups)
        self.min_points = int(min_points)
        self.dataset = None
        self.db: dict[str, list] | None = None
        self.db_path = None

    def attach(self, dataset) -> None:
        """Take the database (at the first call) from ``dataset``: its ``classes``, ``len()``
        and raw frames ``raw(i)`` (``points``, ``gt_boxes``, ``gt_names``), cached in the file
        ``dataset.gt_database_path()`` names when it has that method and it returns a path."""
        self.dataset, self.db = dataset, None
        path_of = getattr(dataset, "gt_database_path", None)
        self.db_path = path_of() if callable(path_of) else None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.dataset.classes) if self.dataset is not None else ()

    def _database(self) -> dict[str, list]:
        if self.db is None:
            if self.dataset is None:
                raise ValueError("GTSampling: no database; it is filled from the training frames "
                                 "of a detection dataset (list it in that dataset's augment)")
            if self.db_path is not None:
                db = self.load(build_once(self.db_path, lambda tmp: self.save(tmp, self._build())),
                               self.classes)
            else:
                db = self._build()
            self.db = {k: [o for o in v if len(o[1]) >= self.min_points] for k, v in db.items()}
        return self.db

    def _build(self) -> dict[str, list]:
        """The database of the attached dataset's raw frames (``build``)."""
        return self.build((self.dataset.raw(i) for i in range(len(self.dataset))), self.classes)

    @staticmethod
    def save(path, db: Mapping[str, list]) -> None:
        """Write a database to an ``.npz`` (no pickles): per class ``<class>.boxes (K, 7)``,
        ``<class>.points (P, C)`` (every object's points, box-relative, one after another) and
        ``<class>.offsets (K+1,)`` (object ``k`` is ``points[offsets[k]:offsets[k+1]]``)."""
        arrays = {}
        for cls, objects in db.items():
            boxes = [b for b, _ in objects]
            pts = [p for _, p in objects]
            width = pts[0].shape[1] if pts else 4
            arrays[f"{cls}.boxes"] = np.asarray(boxes, dtype=np.float32).reshape(-1, 7)
            arrays[f"{cls}.points"] = (np.concatenate(pts, 0).astype(np.float32) if pts
                                       else np.zeros((0, width), np.float32))
            arrays[f"{cls}.offsets"] = np.concatenate(
                [[0], np.cumsum([len(p) for p in pts], dtype=np.int64)]).astype(np.int64)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @staticmethod
    def load(path, classes: Sequence[str]) -> dict[str, list]:
        """Read a database written by ``save``: ``{class: [(box (7,), points (n, C)), ...]}``
        (classes missing from the file get an empty list)."""
        db: dict[str, list] = {c: [] for c in classes}
        with np.load(path, allow_pickle=False) as z:
            for cls in classes:
                if f"{cls}.boxes" not in z.files:
                    continue
                boxes, pts, off = z[f"{cls}.boxes"], z[f"{cls}.points"], z[f"{cls}.offsets"]
                db[cls] = [(boxes[k], pts[off[k]:off[k + 1]]) for k in range(len(boxes))]
        return db

    @staticmethod
    def build(samples, classes: Sequence[str]) -> dict[str, list]:
        """Database from an iterable of samples (``points``, ``gt_boxes``, ``gt_names``)."""
        db: dict[str, list] = {c: [] for c in classes}
        for s in samples:
            if len(s["gt_boxes"]) == 0:
                continue
            inside = points_in_boxes(s["points"], s["gt_boxes"])
            for j, name in enumerate(s["gt_names"]):
                if name in db:
                    pts = s["points"][inside[:, j]].copy()
                    pts[:, :3] -= s["gt_boxes"][j, :3]
                    db[name].append((s["gt_boxes"][j].copy(), pts))
        return db

    def __call__(self, s: dict, rng: np.random.Generator | None = None) -> dict:
        database = self._database()
        groups = (self.sample_groups if self.sample_groups is not None
                  else {c: 10 for c in self.classes})
        rng = generator(rng)
        boxes = s["gt_boxes"]
        new_boxes, new_pts, new_names = [], [], []
        for cls, target in groups.items():
            pool = database.get(cls, [])
            have = sum(1 for n in s["gt_names"] if n == cls)
            want = int(target) - have
            if want <= 0 or not pool:
                continue
            for k in rng.choice(len(pool), size=min(want, len(pool)), replace=False):
                box, pts = pool[k]
                existing = np.concatenate([boxes] + [b[None] for b in new_boxes], 0)
                if len(existing) and iou_bev(box[None], existing).max() > 0:
                    continue
                new_boxes.append(box.copy())
                p = pts.copy()
                p[:, :3] += box[:3]
                new_pts.append(p)
                new_names.append(cls)
        if not new_boxes:
            return s
        nb = np.stack(new_boxes).astype(s["gt_boxes"].dtype)
        # remove scene points that the pasted objects now occupy
        keep = ~points_in_boxes(s["points"], nb).any(1)
        s["points"] = np.concatenate([s["points"][keep]] + [p.astype(s["points"].dtype)
                                                           for p in new_pts], 0)
        s["gt_boxes"] = np.concatenate([s["gt_boxes"], nb], 0)
        new_labels = np.array([self.classes.index(n) + 1 for n in new_names])
        s["gt_labels"] = np.concatenate([s["gt_labels"], new_labels]).astype(np.int64)
        s["gt_names"] = list(s["gt_names"]) + new_names
        return s


class DetectionPreprocess:
    """What the detection datasets do to every frame after augmentation: keep what lies in
    ``point_cloud_range`` (``RangeFilter``; None keeps everything) and give ``points`` (N, C)
    float32, ``gt_boxes`` (M, 7) float32 and ``gt_labels`` (M,) int64."""

    def __init__(self, point_cloud_range: Sequence[float] | None = None):
        self.range_filter = RangeFilter(point_cloud_range) if point_cloud_range else None

    def __call__(self, s: dict) -> dict:
        if self.range_filter is not None:
            s = self.range_filter(s)
        s["points"] = np.ascontiguousarray(s["points"], dtype=np.float32)
        s["gt_boxes"] = np.ascontiguousarray(s["gt_boxes"], dtype=np.float32).reshape(-1, 7)
        s["gt_labels"] = np.asarray(s["gt_labels"], dtype=np.int64).reshape(-1)
        return s


def validate_frame(sample: Mapping, *, source: str = "sample", in_channels: int = 4,
                   point_cloud_range: Sequence[float] | None = None) -> None:
    """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came)
    unless ``sample`` is a frame the detector can run on (``predict``'s input):

    - ``points (N, in_channels)`` finite numbers (x, y, z, reflectance...), ``N >= 1``, some
      inside ``point_cloud_range`` ``[x0, y0, z0, x1, y1, z1]`` when given (the rest are dropped);
    - ``gt_boxes`` (optional ground truth): ``(M, 7)`` finite numbers.
    """
    points = check_field(sample, "points", source=source, shape=("N", in_channels),
                         kind="number", finite=True, note=f"(model.in_channels={in_channels})")
    check_field(sample, "gt_boxes", source=source, shape=("M", 7), kind="number", finite=True,
                required=False)
    if len(points) == 0:
        raise ValueError(f"{source}: points: expected at least one point, got shape "
                         f"{tuple(points.shape)}")
    if point_cloud_range is None:
        return
    r = np.asarray(point_cloud_range, dtype=np.float64)
    xyz = points[:, :3]
    if not points_in_range(xyz, r).any():
        extent = ", ".join(f"{axis} in [{lo:g}, {hi:g}]"
                           for axis, lo, hi in zip("xyz", xyz.min(0), xyz.max(0)))
        raise ValueError(f"{source}: points: expected points inside point_cloud_range "
                         f"{[float(v) for v in r]} (x0, y0, z0, x1, y1, z1), got none of "
                         f"{len(points)} ({extent})")
