"""``Scene``: named Open3D geometries (point clouds, 3D boxes, line sets, any geometry) rendered
offscreen to a PNG or shown in a window."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geossm._compat import require

from .palette import BACKGROUND, IGNORE_COLOR, label_colors


def has_display() -> bool:
    """Whether a window can be opened (an X11 or Wayland display is set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class _Item:
    geometry: Any
    kind: str          # "points" | "lines" | "other"
    point_size: float = 3.0
    line_width: float = 2.0


@dataclass
class Scene:
    """Named Open3D geometries to render offscreen (``render``) or show in a window (``show``).

    Args:
        background: RGB in [0, 1] (default white).
    """

    background: tuple[float, float, float] = BACKGROUND
    items: dict[str, _Item] = field(default_factory=dict)

    def add_geometry(self, name: str, geometry: Any, kind: str = "other",
                     point_size: float = 3.0, line_width: float = 2.0) -> "Scene":
        """Add any Open3D geometry (the extension point for task-specific views)."""
        if name in self.items:
            raise ValueError(f"Scene: a geometry named '{name}' exists already")
        self.items[name] = _Item(geometry, kind, point_size, line_width)
        return self

    def add_points(self, name: str, coord: np.ndarray, colors: np.ndarray | None = None,
                   labels: np.ndarray | None = None, point_size: float = 3.0) -> "Scene":
        """A point cloud ``coord (N, 3)`` coloured by ``colors (N, 3)`` (uint8 or [0, 1] floats)
        or by ``labels (N,)`` through the palette (grey if neither)."""
        o3d = require("open3d", "geossm.viz")
        coord = np.asarray(coord, dtype=np.float64)
        if coord.ndim != 2 or coord.shape[1] != 3:
            raise ValueError(f"coord: expected shape (N, 3), got {coord.shape}")
        if colors is None:
            colors = label_colors(labels) if labels is not None else np.tile(IGNORE_COLOR,
                                                                              (len(coord), 1))
        colors = np.asarray(colors)
        if colors.shape != coord.shape:
            raise ValueError(f"colors: expected shape {coord.shape}, got {colors.shape}")
        if not np.issubdtype(colors.dtype, np.floating):
            colors = colors / 255.0
        pc = o3d.geometry.PointCloud()
        pc.points = o3d.utility.Vector3dVector(coord)
        pc.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64))
        return self.add_geometry(name, pc, "points", point_size=point_size)

    def add_lines(self, name: str, points: np.ndarray, lines: np.ndarray,
                  color: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  line_width: float = 2.0) -> "Scene":
        """A line set: ``points (P, 3)``, ``lines (L, 2)`` index pairs, one RGB colour in [0, 1]."""
        o3d = require("open3d", "geossm.viz")
        ls = o3d.geometry.LineSet()
        ls.points = o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64))
        ls.lines = o3d.utility.Vector2iVector(np.asarray(lines, dtype=np.int32))
        ls.colors = o3d.utility.Vector3dVector(np.tile(np.asarray(color, float), (len(lines), 1)))
        return self.add_geometry(name, ls, "lines", line_width=line_width)

    def add_boxes(self, name: str, boxes: np.ndarray,
                  color: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  line_width: float = 2.0) -> "Scene":
        """3D boxes ``(M, 7)``: centre ``x, y, z``, size ``dx, dy, dz``, heading ``yaw`` (radians,
        about +z; OpenPCDet convention), drawn as 12 edges each."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        corners = box_corners(boxes).reshape(-1, 3)
        edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                          [0, 4], [1, 5], [2, 6], [3, 7]])
        lines = (edges[None] + 8 * np.arange(len(boxes))[:, None, None]).reshape(-1, 2)
        return self.add_lines(name, corners, lines, color, line_width)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned ``(min (3,), max (3,))`` over all geometries."""
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for item in self.items.values():
            box = item.geometry.get_axis_aligned_bounding_box()
            lo = np.minimum(lo, np.asarray(box.min_bound))
            hi = np.maximum(hi, np.asarray(box.max_bound))
        if not np.isfinite(lo).all():
            lo, hi = np.zeros(3), np.ones(3)
        return lo, hi

    def _material(self, item: _Item) -> Any:
        rendering = require("open3d", "geossm.viz").visualization.rendering
        mat = rendering.MaterialRecord()
        if item.kind == "lines":
            mat.shader = "unlitLine"
            mat.line_width = item.line_width
        else:
            mat.shader = "defaultUnlit"
            mat.point_size = item.point_size
        return mat

    def render(self, path: str | os.PathLike, width: int = 1024, height: int = 768,
               view: tuple[float, float, float] = (-0.25, -1.0, 0.75), fov_deg: float = 45.0) -> Path:
        """Render offscreen to a PNG of ``width x height`` pixels; the camera looks at the centre
        of all geometries from direction ``view`` (z up) at a distance that fits them."""
        image = self.render_image(width, height, view, fov_deg)
        o3d = require("open3d", "geossm.viz (PNG rendering)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not o3d.io.write_image(str(path), o3d.geometry.Image(image)):
            raise OSError(f"render: could not write {path}")
        return path

    def render_image(self, width: int = 1024, height: int = 768,
                     view: tuple[float, float, float] = (-0.25, -1.0, 0.75),
                     fov_deg: float = 45.0) -> np.ndarray:
        """What ``render`` writes, as an RGB array ``(height, width, 3) uint8``."""
        if width < 1 or height < 1:
            raise ValueError(f"render: width and height must be >= 1, got {width}x{height}")
        if not self.items:
            raise ValueError("render: the scene is empty")
        o3d = require("open3d", "geossm.viz (PNG rendering)")
        rendering = o3d.visualization.rendering
        renderer = rendering.OffscreenRenderer(int(width), int(height))
        try:
            scene = renderer.scene
            scene.set_background([*self.background, 1.0])
            # Unlit colours straight to the image: no tone mapping, so palette colours stay exact.
            scene.view.set_post_processing(False)
            for name, item in self.items.items():
                scene.add_geometry(name, item.geometry, self._material(item))
            center, eye, up = self._camera(width, height, view, fov_deg)
            renderer.setup_camera(fov_deg, center, eye, up)
            image = np.asarray(renderer.render_to_image())
        finally:
            del renderer
        return np.ascontiguousarray(image[..., :3])

    def project(self, points: np.ndarray, width: int = 1024, height: int = 768,
                view: tuple[float, float, float] = (-0.25, -1.0, 0.75),
                fov_deg: float = 45.0) -> np.ndarray:
        """Pixel positions ``(M, 2)`` (column, row; row 0 at the top) of ``points (M, 3)`` in the
        image ``render`` draws with the same arguments (pinhole camera, vertical ``fov_deg``)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        center, eye, up = (v.astype(np.float64) for v in self._camera(width, height, view,
                                                                       fov_deg))
        forward = (center - eye) / np.linalg.norm(center - eye)
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        true_up = np.cross(right, forward)
        rel = points - eye
        depth = np.maximum(rel @ forward, 1e-9)
        focal = height / 2 / math.tan(math.radians(fov_deg) / 2)
        col = width / 2 + focal * (rel @ right) / depth
        row = height / 2 - focal * (rel @ true_up) / depth
        return np.stack([col, row], 1)

    def _camera(self, width: int, height: int, view: tuple[float, float, float],
                fov_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.bounds()
        center = (lo + hi) / 2
        radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
        # fov is vertical; a wide scene (side by side) is bounded by the horizontal fov instead.
        half_v = math.radians(fov_deg) / 2
        half_h = math.atan(math.tan(half_v) * width / height)
        dist = radius / math.sin(min(half_v, half_h)) * 1.02
        direction = np.asarray(view, dtype=np.float64)
        direction = direction / np.linalg.norm(direction)
        eye = center + direction * dist
        return (center.astype(np.float32), eye.astype(np.float32),
                np.array([0, 0, 1], dtype=np.float32))

    def show(self, title: str = "geossm") -> None:
        """Open an interactive window (needs a display)."""
        if not has_display():
            raise RuntimeError("Scene.show: no display (DISPLAY / WAYLAND_DISPLAY unset); "
                               "use Scene.render(path) instead")
        o3d = require("open3d", "geossm.viz (window)")
        o3d.visualization.draw_geometries([i.geometry for i in self.items.values()],
                                          window_name=title)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners ``(M, 8, 3)`` of boxes ``(M, 7)`` (x, y, z, dx, dy, dz, yaw); corners 0-3 are the
    bottom face counter-clockwise from (-dx/2, -dy/2), 4-7 the top face above them."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    sx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) / 2
    sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1]) / 2
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) / 2
    local = np.stack([sx[None] * boxes[:, 3:4], sy[None] * boxes[:, 4:5],
                      sz[None] * boxes[:, 5:6]], -1)  # (M, 8, 3)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], -1) + boxes[:, None, :3]
