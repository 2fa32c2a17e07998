"""Reading the official KITTI object layout: point clouds, calibration files and labels.

Layout (``root``)::

    ImageSets/{train,val,test}.txt       optional frame lists (one id per line)
    training/velodyne/<id>.bin           float32 (N, 4): x, y, z, reflectance, LiDAR frame
    training/calib/<id>.txt              P0..P3 (3x4), R0_rect (3x3), Tr_velo_to_cam (3x4), ...
    training/label_2/<id>.txt            15 fields per object (16 with a score)
    testing/{velodyne,calib}/<id>.bin|txt

Label fields: ``type truncated occluded alpha left top right bottom h w l x y z rotation_y``,
``(x, y, z)`` the bottom centre in the rectified camera frame. Boxes are converted to the
OpenPCDet LiDAR convention ``[x, y, z, dx, dy, dz, heading]`` with ``z`` at the box centre,
``(dx, dy, dz) = (l, w, h)`` and ``heading = -(rotation_y + pi / 2)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .boxes import limit_period

__all__ = ["Calibration", "read_calib", "read_label", "write_label", "read_velodyne",
           "camera_to_lidar_boxes", "lidar_to_camera_boxes", "camera_box_corners",
           "camera_boxes_to_image_bbox", "boxes_to_image_bbox", "observation_angle",
           "KITTI_CLASSES"]

KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc",
                 "DontCare")
#: Image size ``(H, W)`` used to clip projected boxes when the image is not read (the KITTI
#: object images are 370-376 x 1224-1242 pixels).
DEFAULT_IMAGE_SHAPE = (375, 1242)


@dataclass(frozen=True)
class Calibration:
    """KITTI calibration of one frame.

    Shapes: ``P2 (3, 4)``, ``R0 (3, 3)``, ``V2C (3, 4)`` (``Tr_velo_to_cam``).
    """

    P2: np.ndarray
    R0: np.ndarray
    V2C: np.ndarray

    def lidar_to_rect(self, pts: np.ndarray) -> np.ndarray:
        """LiDAR ``(N, 3)`` -> rectified camera ``(N, 3)``: ``R0 @ (V2C @ [p; 1])``."""
        hom = np.concatenate([pts[:, :3], np.ones((len(pts), 1))], 1)
        return (hom @ self.V2C.T) @ self.R0.T

    def rect_to_lidar(self, pts: np.ndarray) -> np.ndarray:
        """Rectified camera ``(N, 3)`` -> LiDAR ``(N, 3)`` (inverse of ``lidar_to_rect``)."""
        m = np.eye(4)
        m[:3, :3] = self.R0 @ self.V2C[:, :3]
        m[:3, 3] = self.R0 @ self.V2C[:, 3]
        hom = np.concatenate([pts[:, :3], np.ones((len(pts), 1))], 1)
        return (hom @ np.linalg.inv(m).T)[:, :3]

    def rect_to_image(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rectified camera ``(N, 3)`` -> pixels ``(N, 2)`` and depth ``(N,)`` through ``P2``."""
        hom = np.concatenate([pts[:, :3], np.ones((len(pts), 1))], 1) @ self.P2.T
        depth = hom[:, 2]
        return hom[:, :2] / np.where(np.abs(depth) < 1e-9, 1e-9, depth)[:, None], depth

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"P2": self.P2.astype(np.float32), "R0": self.R0.astype(np.float32),
                "V2C": self.V2C.astype(np.float32)}


def _read_text(path: Path) -> str:
    """The file as text; a binary or corrupt file is a ``ValueError`` naming it."""
    try:
        return path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err})") from None


def read_calib(path: str | os.PathLike) -> Calibration:
    """Parse a KITTI object calibration file. Raises ``FileNotFoundError`` / ``ValueError``
    naming the file when it is missing, lacks ``P2``/``R0_rect``/``Tr_velo_to_cam`` or has a
    matrix with the wrong number of values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI calibration file not found: {path}")
    values: dict[str, np.ndarray] = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"{path}: line {n}: expected 'KEY: values', got {line[:60]!r}")
        try:
            values[key.strip()] = np.array(rest.split(), dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path}: line {n}: non-numeric value in {key.strip()} "
                             f"({err})") from None
    sizes = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}
    for key, size in sizes.items():
        if key not in values:
            raise ValueError(f"{path}: missing '{key}' (found {sorted(values)})")
        if values[key].size != size:
            raise ValueError(f"{path}: '{key}' expected {size} values, got {values[key].size}")
    return Calibration(values["P2"].reshape(3, 4), values["R0_rect"].reshape(3, 3),
                       values["Tr_velo_to_cam"].reshape(3, 4))


def read_velodyne(path: str | os.PathLike) -> np.ndarray:
    """Points ``(N, 4)`` float32 (x, y, z, reflectance) of a KITTI ``.bin``. Raises
    ``ValueError`` naming the file when its size is not a multiple of 16 bytes (truncated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI point cloud not found: {path}")
    size = path.stat().st_size
    if size % 16:
        raise ValueError(f"{path}: expected a multiple of 16 bytes (float32 x, y, z, reflectance "
                         f"per point), got {size} bytes (truncated file?)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_label(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a KITTI ``label_2`` file into arrays over its ``M`` objects: ``name (M,) str``,
    ``truncated``, ``occluded`` (int), ``alpha``, ``bbox (M, 4)`` (left, top, right, bottom),
    ``dimensions (M, 3)`` (h, w, l), ``location (M, 3)`` (camera frame, bottom centre),
    ``rotation_y``, ``score`` (1 when absent). Raises ``ValueError`` naming file and line for a
    line without 15 (or 16) fields or with a non-numeric field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI label file not found: {path}")
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (15, 16):
            raise ValueError(f"{path}: line {n}: expected 15 fields (16 with a score), "
                             f"got {len(fields)}")
        try:
            nums = [float(v) for v in fields[1:]]
        except ValueError as err:
            raise ValueError(f"{path}: line {n}: non-numeric field ({err})") from None
        rows.append((fields[0], nums if len(nums) == 15 else nums + [1.0]))
    m = len(rows)
    arr = np.array([r[1] for r in rows], dtype=np.float64).reshape(m, 15)
    return {"name": np.array([r[0] for r in rows], dtype=str).reshape(m),
            "truncated": arr[:, 0], "occluded": arr[:, 1].astype(np.int64), "alpha": arr[:, 2],
            "bbox": arr[:, 3:7], "dimensions": arr[:, 7:10], "location": arr[:, 10:13],
            "rotation_y": arr[:, 13], "score": arr[:, 14]}


def camera_to_lidar_boxes(location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray,
                          calib: Calibration) -> np.ndarray:
    """KITTI camera boxes -> LiDAR boxes ``(M, 7)`` (OpenPCDet convention).

    Shapes: ``location (M, 3)`` bottom centre in the rectified camera frame, ``dimensions
    (M, 3)`` as (h, w, l), ``rotation_y (M,)``."""
    h, w, l = dimensions[:, 0], dimensions[:, 1], dimensions[:, 2]
    xyz = calib.rect_to_lidar(location) if len(location) else np.zeros((0, 3))
    xyz = xyz.copy()
    xyz[:, 2] += h / 2  # KITTI's location is the bottom centre
    heading = -(rotation_y + np.pi / 2)
    return np.concatenate([xyz, l[:, None], w[:, None], h[:, None], heading[:, None]], 1)


def lidar_to_camera_boxes(boxes: np.ndarray, calib: Calibration) -> np.ndarray:
    """Inverse of ``camera_to_lidar_boxes``: ``(M, 7)`` -> ``(M, 7)`` as
    ``(x, y, z) bottom centre (camera), (h, w, l), rotation_y``."""
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2
    loc = calib.lidar_to_rect(bottom) if len(boxes) else np.zeros((0, 3))
    ry = -boxes[:, 6] - np.pi / 2
    return np.concatenate([loc, boxes[:, 5:6], boxes[:, 4:5], boxes[:, 3:4], ry[:, None]], 1)


def camera_box_corners(camera_boxes: np.ndarray) -> np.ndarray:
    """Corners ``(M, 8, 3)`` of KITTI camera boxes ``(M, 7)`` = ``(x, y, z) bottom centre,
    (h, w, l), rotation_y``: the length along the box's x, the width along its z, rotated by
    ``rotation_y`` about the camera's y axis (pointing down), the box from ``y - h`` to ``y``."""
    b = np.asarray(camera_boxes, dtype=np.float64).reshape(-1, 7)
    h, w, l, ry = b[:, 3:4], b[:, 4:5], b[:, 5:6], b[:, 6:7]
    sx = np.array([0.5, 0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5])
    sy = np.array([0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0])
    sz = np.array([0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5, 0.5])
    x, y, z = sx * l, sy * h, sz * w  # (M, 8) each, box axes
    c, s = np.cos(ry), np.sin(ry)
    return np.stack([x * c + z * s + b[:, 0:1], y + b[:, 1:2], -x * s + z * c + b[:, 2:3]], -1)


def camera_boxes_to_image_bbox(camera_boxes: np.ndarray, calib: Calibration,
                               image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """2D boxes ``(M, 4)`` (left, top, right, bottom) of KITTI camera boxes ``(M, 7)``: the
    extent of the projected camera-frame corners clipped to the image, as the KITTI tools
    derive a detection's image box (what the evaluation's 25 / 40 px height rule reads)."""
    if len(camera_boxes) == 0:
        return np.zeros((0, 4))
    corners = camera_box_corners(camera_boxes)
    uv, depth = calib.rect_to_image(corners.reshape(-1, 3))
    uv = uv.reshape(-1, 8, 2)
    # corners behind the camera would flip through the projection: clamp them to the image edge
    behind = (depth.reshape(-1, 8) <= 0.1)
    out = np.concatenate([uv.min(1), uv.max(1)], 1)
    h, w = image_shape
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w - 1)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h - 1)
    out[behind.all(1)] = 0
    return out


def boxes_to_image_bbox(boxes: np.ndarray, calib: Calibration,
                        image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """2D boxes ``(M, 4)`` of LiDAR boxes ``(M, 7)``: converted to camera boxes through the
    calibration (``lidar_to_camera_boxes``), whose corners are projected
    (``camera_boxes_to_image_bbox``). The camera box stands upright along the camera's y, which
    the rectification tilts by about 0.01 rad from the LiDAR's z: projecting the LiDAR box's own
    corners differs by several pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    return camera_boxes_to_image_bbox(lidar_to_camera_boxes(boxes, calib), calib, image_shape)


def observation_angle(camera_boxes: np.ndarray) -> np.ndarray:
    """KITTI ``alpha`` ``(M,)`` of camera boxes ``(M, 7)``: ``rotation_y`` less the azimuth of
    the box seen from the camera, ``alpha = ry - atan2(x, z)``, wrapped into ``[-pi, pi)``."""
    b = np.asarray(camera_boxes, dtype=np.float64).reshape(-1, 7)
    alpha = b[:, 6] - np.arctan2(b[:, 0], b[:, 2])
    return limit_period(alpha, 0.5, 2 * np.pi)


def write_label(path: str | os.PathLike, anno: dict[str, np.ndarray]) -> Path:
    """Write one frame's objects as a KITTI ``label_2`` / submission ``.txt`` (what
    ``read_label`` reads back): one line per object, ``type truncated occluded alpha left top
    right bottom h w l x y z rotation_y [score]`` in the rectified camera frame, 16 fields when
    ``anno`` has ``score`` (detections; the official submission format), else 15.

    ``anno``: ``name (M,)``, ``alpha (M,)``, ``bbox (M, 4)``, ``dimensions (M, 3)`` (h, w, l),
    ``location (M, 3)`` (bottom centre), ``rotation_y (M,)``; optional ``truncated``,
    ``occluded`` (default -1, 'unknown', as for detections) and ``score``. The file is written
    whole (an empty file for a frame without objects); the folder is created."""
    path = Path(path)
    n = len(anno["name"])
    rows = [np.asarray(anno.get("truncated", np.full(n, -1.0)), dtype=np.float64).reshape(n, 1),
            np.asarray(anno.get("occluded", np.full(n, -1)), dtype=np.float64).reshape(n, 1),
            np.asarray(anno["alpha"], dtype=np.float64).reshape(n, 1),
            np.asarray(anno["bbox"], dtype=np.float64).reshape(n, 4),
            np.asarray(anno["dimensions"], dtype=np.float64).reshape(n, 3),
            np.asarray(anno["location"], dtype=np.float64).reshape(n, 3),
            np.asarray(anno["rotation_y"], dtype=np.float64).reshape(n, 1)]
    if "score" in anno:
        rows.append(np.asarray(anno["score"], dtype=np.float64).reshape(n, 1))
    values = np.concatenate(rows, 1)
    lines = []
    for name, v in zip(anno["name"], values):
        lines.append(" ".join([str(name), f"{v[0]:.2f}", str(int(v[1]))]
                              + [f"{x:.4f}" for x in v[2:]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def in_image_fov(points: np.ndarray, calib: Calibration,
                 image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """Mask ``(N,)`` of points in front of the camera that project inside the image."""
    uv, depth = calib.rect_to_image(calib.lidar_to_rect(points[:, :3]))
    h, w = image_shape
    return (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
