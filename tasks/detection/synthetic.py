"""Procedural LiDAR scenes ray-cast with a 64-beam spinning sensor (the embedded default).

A scene is a flat ground plane 1.73 m below the sensor (KITTI's mounting height) with cars,
pedestrians and cyclists as boxes of realistic sizes (KITTI's class means and spreads), walls
along the road and clutter (poles, bushes, boxes). Every beam of an HDL-64E-like sensor (64
elevations from +2 to -24.8 degrees; azimuths over the camera's field of view) returns its first
hit, so nearer objects occlude farther ones and point density falls off with range as on a real
sensor. Labels use the KITTI / OpenPCDet box convention. Everything is deterministic given the
``numpy.random.Generator``.

Difficulty (what the KITTI evaluation's easy / moderate / hard rules read) is assigned as for a
real frame seen by a KITTI camera (``SYNTHETIC_CALIB``: KITTI's ``P2``, the camera 0.27 m behind
and 0.08 m above the LiDAR):

- ``bbox``: the box's 8 corners projected through ``P2``, clipped to the 1242 x 375 image, so
  the height rule (>= 40 px easy, >= 25 px moderate / hard) drops cars beyond ~45 m from
  moderate as on KITTI;
- ``occluded``: from the fraction ``v`` of the rays that would hit the object alone and do hit
  it first in the scene: 0 for ``v > 0.8``, 1 for ``v > 0.5``, 2 for ``v > 0.2``, else 3
  (KITTI: fully visible, partly, largely occluded, unknown);
- ``truncated``: 0 (objects are placed inside the sensor's field of view).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .boxes import iou_bev
from .kitti import Calibration, boxes_to_image_bbox

__all__ = ["generate_scene", "raycast", "SYNTHETIC_CALIB", "CLASS_SIZES"]

SENSOR_HEIGHT = 1.73
#: (mean (l, w, h), std) per class, close to KITTI's statistics.
CLASS_SIZES = {"Car": ((3.9, 1.6, 1.56), (0.3, 0.08, 0.1)),
               "Pedestrian": ((0.8, 0.6, 1.75), (0.1, 0.06, 0.1)),
               "Cyclist": ((1.76, 0.6, 1.73), (0.1, 0.05, 0.08))}
#: A KITTI-like camera: rectified frame = (-y, -z, x) of the LiDAR frame, shifted.
SYNTHETIC_CALIB = Calibration(
    P2=np.array([[721.5, 0.0, 609.6, 44.9], [0.0, 721.5, 172.9, 0.2], [0.0, 0.0, 1.0, 0.003]]),
    R0=np.eye(3),
    V2C=np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27]]))


def raycast(origins_dirs: np.ndarray, boxes: np.ndarray, ground_z: float, max_range: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """First hit of unit rays from the origin against boxes ``(M, 7)`` and the plane
    ``z = ground_z``. ``origins_dirs (R, 3)`` are directions. Returns ``(t (R,), hit (R,))``:
    distance (``inf`` for no hit within ``max_range``) and index of the box hit (-1 ground or
    none)."""
    d = origins_dirs
    r = len(d)
    best = np.full(r, np.inf)
    hit = np.full(r, -1, dtype=np.int64)
    down = d[:, 2] < -1e-6
    tg = np.where(down, ground_z / np.where(down, d[:, 2], -1.0), np.inf)
    best = np.where((tg > 0) & (tg < max_range), tg, best)
    ray_az = np.arctan2(d[:, 1], d[:, 0])
    for j, b in enumerate(boxes):
        # only rays within the box's azimuth span can hit it (the sensor is outside every box)
        cxy = _bev_corners(b)
        az = np.arctan2(cxy[:, 1], cxy[:, 0])
        if az.max() - az.min() > np.pi:  # span crosses +-pi: test every ray
            sel = np.arange(r)
        else:
            sel = np.nonzero((ray_az >= az.min() - 1e-3) & (ray_az <= az.max() + 1e-3))[0]
        if len(sel) == 0:
            continue
        c, s = np.cos(b[6]), np.sin(b[6])
        # ray in the box frame: origin o = R^T (0 - centre), direction R^T d
        ox, oy, oz = -(b[0] * c + b[1] * s), -(-b[0] * s + b[1] * c), -b[2]
        ds = d[sel]
        dx = ds[:, 0] * c + ds[:, 1] * s
        dy = -ds[:, 0] * s + ds[:, 1] * c
        dz = ds[:, 2]
        tmin = np.zeros(len(sel))
        tmax = np.full(len(sel), np.inf)
        for o, dd, half in ((ox, dx, b[3] / 2), (oy, dy, b[4] / 2), (oz, dz, b[5] / 2)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t1 = (-half - o) / dd
                t2 = (half - o) / dd
            lo = np.where(np.abs(dd) < 1e-12, np.where(abs(o) <= half, -np.inf, np.inf),
                          np.minimum(t1, t2))
            hi = np.where(np.abs(dd) < 1e-12, np.where(abs(o) <= half, np.inf, -np.inf),
                          np.maximum(t1, t2))
            tmin = np.maximum(tmin, lo)
            tmax = np.minimum(tmax, hi)
        ok = (tmax >= tmin) & (tmin > 0) & (tmin < best[sel])
        best[sel[ok]] = tmin[ok]
        hit[sel[ok]] = j
    return best, hit


def _bev_corners(b: np.ndarray) -> np.ndarray:
    c, s = np.cos(b[6]), np.sin(b[6])
    lx = np.array([-0.5, 0.5, 0.5, -0.5]) * b[3]
    ly = np.array([-0.5, -0.5, 0.5, 0.5]) * b[4]
    return np.stack([lx * c - ly * s + b[0], lx * s + ly * c + b[1]], 1)


def _beams(num_beams: int, fov_deg: float, azimuth_res_deg: float) -> np.ndarray:
    elev = np.deg2rad(np.linspace(2.0, -24.8, num_beams))
    az = np.deg2rad(np.arange(-fov_deg / 2, fov_deg / 2, azimuth_res_deg))
    e, a = np.meshgrid(elev, az, indexing="ij")
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)


def _place(rng, boxes, box, margin=0.3) -> bool:
    if not boxes:
        return True
    grown = box.copy()
    grown[3:5] += margin
    return iou_bev(grown[None], np.stack(boxes))[0].max() == 0


def generate_scene(rng: np.random.Generator,
                   classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                   num_objects: Sequence[int] = (4, 12),
                   class_weights: Sequence[float] = (0.6, 0.25, 0.15),
                   num_clutter: Sequence[int] = (4, 12), x_range: Sequence[float] = (3.0, 50.0),
                   y_range: Sequence[float] | None = None, fov_deg: float = 90.0, num_beams: int = 64, azimuth_res_deg: float = 0.25,
                   max_range: float = 80.0, range_noise: float = 0.02, dropout: float = 0.05,
                   min_points: int = 3) -> dict:
    """One scene: points, labelled boxes and KITTI-style annotations.

    Args:
        rng: the random generator (the scene is a pure function of its state).
        classes: labelled classes (of Car, Pedestrian, Cyclist); the others still appear.
        num_objects: ``[lo, hi]`` objects placed (uniform), class by ``class_weights``
            (Car, Pedestrian, Cyclist).
        num_clutter: ``[lo, hi]`` poles / bushes / crates; two walls are always added.
        x_range: forward distance of objects (metres); lateral within the field of view.
        y_range: ``[lo, hi]`` lateral limit of object centres (metres), default none (the field
            of view only); ``SyntheticLidar`` sets it to its point-cloud range so that no
            labelled object lies outside the detector's grid.
        fov_deg / num_beams / azimuth_res_deg: sensor sweep (default 90 deg, 64, 0.25 deg).
        max_range / range_noise / dropout: returns beyond ``max_range`` are lost; Gaussian range
            noise (m); fraction of beams without return.
        min_points: objects with fewer returns are not labelled (as KITTI annotators can't see
            them either).

    Returns:
        ``{"points" (N, 4) float32, "gt_boxes" (M, 7), "gt_labels" (M,), "gt_names" [M],
        "frame_id", "calib", "annos"}`` as ``KittiDataset`` samples.
    """
    names_all = ("Car", "Pedestrian", "Cyclist")
    ground = -SENSOR_HEIGHT
    half_fov = np.deg2rad(fov_deg / 2) * 0.92
    y_lo, y_hi = (-np.inf, np.inf) if y_range is None else (float(y_range[0]), float(y_range[1]))

    def lateral(x: float) -> float:
        # uniform in the view angle, the angles limited to those of the lateral limit
        lo, hi = max(-half_fov, np.arctan2(y_lo, x)), min(half_fov, np.arctan2(y_hi, x))
        return np.tan(rng.uniform(lo, hi)) * x
    boxes, kinds = [], []
    # walls (building fronts) beyond the sidewalks on both sides
    for side in (-1, 1):
        y = side * rng.uniform(9.0, 20.0)
        length = rng.uniform(30.0, 60.0)
        boxes.append(np.array([rng.uniform(20, 40), y + side * 0.5, ground + 2.5, length, 1.0,
                               5.0, rng.normal(0, 0.03)]))
        kinds.append("Wall")
    n_obj = int(rng.integers(num_objects[0], num_objects[1] + 1))
    w = np.asarray(class_weights, dtype=np.float64)
    for _ in range(n_obj):
        cls = names_all[rng.choice(3, p=w / w.sum())]
        mean, std = CLASS_SIZES[cls]
        l, wd, h = np.maximum(np.asarray(mean) + rng.normal(0, 1, 3) * np.asarray(std), 0.3)
        for _try in range(20):
            x = rng.uniform(*x_range)
            y = lateral(x)
            heading = rng.choice([0.0, np.pi]) + rng.normal(0, 0.15) if (
                cls == "Car" and rng.random() < 0.7) else rng.uniform(-np.pi, np.pi)
            box = np.array([x, y, ground + h / 2, l, wd, h, heading])
            if _place(rng, boxes, box):
                boxes.append(box)
                kinds.append(cls)
                break
    for _ in range(int(rng.integers(num_clutter[0], num_clutter[1] + 1))):
        kind = rng.choice(3)
        size = [(0.25, 0.25, rng.uniform(2.5, 5.0)),                       # pole
                (rng.uniform(0.6, 2.0), rng.uniform(0.6, 2.0), rng.uniform(0.4, 1.2)),  # bush
                (rng.uniform(0.5, 1.2),) * 2 + (rng.uniform(0.5, 1.0),)][kind]  # crate
        for _try in range(10):
            x = rng.uniform(*x_range)
            y = lateral(x)
            box = np.array([x, y, ground + size[2] / 2, *size, rng.uniform(-np.pi, np.pi)])
            if _place(rng, boxes, box, margin=0.1):
                boxes.append(box)
                kinds.append("Clutter")
                break
    boxes_arr = np.stack(boxes)
    dirs = _beams(num_beams, fov_deg, azimuth_res_deg)
    t, hit = raycast(dirs, boxes_arr, ground, max_range)
    keep = np.isfinite(t) & (rng.random(len(t)) >= dropout)
    t = t + rng.normal(0, range_noise, len(t))
    pts = dirs[keep] * t[keep, None]
    hit = hit[keep]
    refl = np.where(hit < 0, rng.uniform(0.05, 0.3, len(hit)), 0.0)
    obj_refl = rng.uniform(0.2, 0.9, len(boxes_arr))
    refl = np.where(hit >= 0, obj_refl[np.maximum(hit, 0)] + rng.normal(0, 0.03, len(hit)), refl)
    points = np.concatenate([pts, np.clip(refl, 0, 1)[:, None]], 1).astype(np.float32)

    # occlusion: of the rays that would reach an object alone, how many see it first
    counts = np.bincount(hit[hit >= 0], minlength=len(boxes_arr))
    labelled = [j for j, k in enumerate(kinds) if k in names_all and counts[j] >= min_points]
    obj = boxes_arr[labelled]
    alone = np.array([np.isfinite(raycast(dirs, boxes_arr[j:j + 1], -1e9, max_range)[0]).sum()
                      for j in labelled], dtype=np.float64)
    visible = counts[labelled] / np.maximum(alone * (1 - dropout), 1)
    occluded = np.select([visible > 0.8, visible > 0.5, visible > 0.2], [0, 1, 2], 3)
    names = np.array([kinds[j] for j in labelled], dtype=str)
    annos = {"name": names, "boxes": obj, "bbox": boxes_to_image_bbox(obj, SYNTHETIC_CALIB),
             "truncated": np.zeros(len(obj)), "occluded": occluded.astype(np.int64)}
    classes = tuple(classes)
    sel = np.array([n in classes for n in names], dtype=bool)
    return {"points": points, "gt_boxes": obj[sel].astype(np.float32),
            "gt_labels": np.array([classes.index(n) + 1 for n in names[sel]], dtype=np.int64),
            "gt_names": [str(n) for n in names[sel]], "frame_id": "",
            "calib": SYNTHETIC_CALIB.as_dict(), "annos": annos}
