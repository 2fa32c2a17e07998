"""Visualisation: labelled point clouds as ``.ply`` and PNG renders with Open3D.

Colours: label ``k >= 0`` is drawn with ``PALETTE[k % 20]`` (20 fixed, distinguishable RGB
colours, listed below in order); negative labels (ignored / unlabelled) with ``IGNORE_COLOR``
(grey 128). The palette is part of the API: renders of the same labels look the same everywhere.

    0 blue  1 orange  2 green  3 red  4 purple  5 brown  6 pink  7 olive  8 cyan  9 navy
    10 lime  11 maroon  12 teal  13 gold  14 magenta  15 sky  16 coral  17 dark green
    18 lavender  19 dark grey

Rendering uses ``open3d.visualization.rendering.OffscreenRenderer`` (headless: on a machine
without GPU it runs on Mesa's software Vulkan driver, llvmpipe: ``apt-get install
libusb-1.0-0 mesa-vulkan-drivers libvulkan1``), or a window with ``Scene.show`` when a display
exists. ``.ply`` files are written and read here with NumPy (binary little-endian, extra
per-point properties ``label``/``pred`` kept), so saving needs no open3d.

The ``Scene`` holds named geometries: point clouds (``add_points``), 3D boxes as line sets
(``add_boxes``), arbitrary line sets (``add_lines``), and any Open3D geometry
(``add_geometry``) - the hook for task-specific views (event streams, voxels).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geossm._compat import require

PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [0, 0, 128],
    [50, 205, 50], [128, 0, 0], [0, 128, 128], [255, 215, 0], [255, 0, 255],
    [135, 206, 250], [255, 127, 80], [0, 100, 0], [181, 126, 220], [64, 64, 64],
], dtype=np.uint8)
IGNORE_COLOR = np.array([128, 128, 128], dtype=np.uint8)
BACKGROUND = (1.0, 1.0, 1.0)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """RGB ``(N, 3) uint8`` of integer labels ``(N,)`` (see the palette in the module doc)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    out = PALETTE[np.mod(labels, len(PALETTE))]
    out[labels < 0] = IGNORE_COLOR
    return out


# ------------------------------------------------------------------------------------ PLY I/O

_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4",
              "uint": "u4", "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1",
              "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "float32": "f4",
              "float64": "f8"}
_NP_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
              "u4": "uint", "f4": "float", "f8": "double"}


def write_ply(path: str | os.PathLike, coord: np.ndarray, colors: np.ndarray | None = None,
              **fields: np.ndarray) -> Path:
    """Write a binary little-endian PLY point cloud.

    Shapes: ``coord (N, 3)``; ``colors (N, 3)`` uint8 (or floats in [0, 1]); each extra field
    ``(N,)`` (stored as a vertex property of its name; int64 is stored as int32, bool as uchar).
    """
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord: expected shape (N, 3), got {coord.shape}")
    n = len(coord)
    cols: list[tuple[str, np.ndarray]] = [("x", coord[:, 0].astype("<f4")),
                                          ("y", coord[:, 1].astype("<f4")),
                                          ("z", coord[:, 2].astype("<f4"))]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3):
            raise ValueError(f"colors: expected shape ({n}, 3), got {colors.shape}")
        if np.issubdtype(colors.dtype, np.floating):
            colors = np.clip(np.round(colors * 255), 0, 255)
        colors = colors.astype(np.uint8)
        cols += [("red", colors[:, 0]), ("green", colors[:, 1]), ("blue", colors[:, 2])]
    for name, values in fields.items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), got {values.shape}")
        if values.dtype == bool:
            values = values.astype("u1")
        elif values.dtype.kind in "iu" and values.dtype.itemsize == 8:
            values = values.astype("<i4")
        elif values.dtype.kind == "f" and values.dtype.itemsize not in (4, 8):
            values = values.astype("<f4")
        cols.append((name, values.astype(values.dtype.newbyteorder("<"))))
    dtype = np.dtype([(name, v.dtype) for name, v in cols])
    table = np.empty(n, dtype=dtype)
    for name, v in cols:
        table[name] = v
    header = ["ply", "format binary_little_endian 1.0", "comment written by geossm.viz",
              f"element vertex {n}"]
    header += [f"property {_NP_TO_PLY[v.dtype.str[1:]]} {name}" for name, v in cols]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Vertex properties of a ``.ply`` (ascii or binary): ``coord (N, 3) float32``, ``color``
    when it has red/green/blue, and every other vertex property under its name. Raises
    ``FileNotFoundError`` or a ``ValueError`` naming the file for a malformed or truncated one."""
    path = Path(path)
    try:
        return _read_ply(path)
    except (IndexError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: malformed PLY file ({err})") from None


def _read_ply(path: Path) -> dict[str, np.ndarray]:
    """Read the vertices of a PLY file (ascii or binary, as written by most tools).

    Returns ``coord (N, 3) float32``, ``color (N, 3) uint8`` when present, and every other
    vertex property ``(N,)`` under its name (e.g. ``label``, ``pred``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, elements = None, []  # elements: [name, count, [(prop, dtype)]]
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property":
                if words[1] == "list":
                    elements[-1][2].append((words[-1], None))
                else:
                    if words[1] not in _PLY_TYPES:
                        raise ValueError(f"{path}: unknown PLY property type '{words[1]}'")
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: expected the first PLY element to be 'vertex'")
        _, n, props = elements[0]
        if any(t is None for _, t in props):
            raise ValueError(f"{path}: list properties on vertices are not supported")
        if fmt == "ascii":
            table = np.loadtxt(f, max_rows=n, ndmin=2)
            data = {name: table[:, i].astype(t) for i, (name, t) in enumerate(props)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + t) for name, t in props])
            left = os.fstat(f.fileno()).st_size - f.tell()
            # checked before reading: a corrupt count must not make f.read allocate it
            if n < 0 or dtype.itemsize * n > left:
                raise ValueError(f"{path}: PLY header declares {n} vertices of "
                                 f"{dtype.itemsize} bytes, {left} bytes follow (truncated?)")
            table = np.frombuffer(f.read(dtype.itemsize * n), dtype=dtype, count=n)
            data = {name: table[name].astype(np.dtype(t).newbyteorder("=")) for name, t in props}
        else:
            raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    for axis in "xyz":
        if axis not in data:
            raise ValueError(f"{path}: PLY vertices lack the '{axis}' property")
    out = {"coord": np.stack([data.pop("x"), data.pop("y"), data.pop("z")], 1).astype(np.float32)}
    if all(c in data for c in ("red", "green", "blue")):
        rgb = np.stack([data.pop("red"), data.pop("green"), data.pop("blue")], 1)
        if np.issubdtype(rgb.dtype, np.floating) and rgb.max(initial=0) <= 1.0:
            rgb = rgb * 255
        out["color"] = np.clip(rgb, 0, 255).astype(np.uint8)
    out.update(data)
    return out


def write_labeled_ply(path: str | os.PathLike, coord: np.ndarray, pred: np.ndarray | None = None,
                      label: np.ndarray | None = None) -> Path:
    """A ``.ply`` coloured by ``pred`` (else ``label``), keeping both as vertex properties."""
    fields: dict[str, np.ndarray] = {}
    shown = None
    for name, values in (("label", label), ("pred", pred)):
        if values is not None:
            values = np.asarray(values).reshape(-1)
            if not np.issubdtype(values.dtype, np.integer):
                values = values.astype(np.int64)
            fields[name] = values
            shown = values
    colors = label_colors(shown) if shown is not None else None
    return write_ply(path, coord, colors, **fields)


# -------------------------------------------------------------------------------------- scene

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
            image = renderer.render_to_image()
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not o3d.io.write_image(str(path), image):
                raise OSError(f"render: could not write {path}")
        finally:
            del renderer
        return path

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


def load_for_view(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``coord`` plus optional ``label``/``pred``/``color`` from a ``.ply`` or ``.npz``
    (``geossm predict`` writes both; an ``.npz`` without ``coord`` uses the ``.ply`` beside it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"viz: input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if "coord" not in data:
            ply = path.with_suffix(".ply")
            if not ply.is_file():
                raise ValueError(f"viz: {path} has no 'coord' array and no {ply.name} beside it")
            data = {**read_ply(ply), **{k: v for k, v in data.items() if k in ("label", "pred")}}
        return data
    raise ValueError(f"viz: expected a .ply or .npz file, got '{path.name}'")


# ------------------------------------------------------------------------ file viewers

@dataclass
class Viewer:
    """A task's view of its own file types (e.g. event recordings), used by ``render_file`` /
    ``show_file`` before the built-in ``.ply``/``.npz`` view.

    ``claims(path) -> bool`` decides (usually by suffix, maybe by sniffing the header);
    ``render(path, output, width, height, point_size) -> Path`` writes a PNG;
    ``show(path)`` opens a window (optional).
    """

    name: str
    claims: Any
    render: Any
    show: Any = None


VIEWERS: dict[str, Viewer] = {}


def register_viewer(viewer: Viewer) -> Viewer:
    """Add (or replace, by name) a file viewer; tasks call this at import time."""
    VIEWERS[viewer.name] = viewer
    return viewer


def find_viewer(path: str | os.PathLike) -> Viewer | None:
    """The registered viewer claiming ``path`` (the library's tasks are imported first, so their
    viewers are known), or None for the built-in ``.ply``/``.npz`` view."""
    suffix = Path(path).suffix.lower()
    if suffix in (".ply", ".npz") and not any(v.claims(Path(path)) for v in VIEWERS.values()):
        return None
    from geossm.registry import autoload
    autoload()
    for viewer in VIEWERS.values():
        if viewer.claims(Path(path)):
            return viewer
    return None


def render_file(path: str | os.PathLike, output: str | os.PathLike | None = None,
                width: int = 1024, height: int = 768, point_size: float = 3.0) -> Path:
    """Render a ``.ply``/``.npz`` to PNG (default ``<input>.png``): points with ground-truth and
    predicted 3D boxes when the ``.npz`` holds ``gt_boxes`` / ``pred_boxes`` (``pred_scores``
    >= 0.3; see ``detection_scene``), else ground truth and prediction side by side when both
    are there, else the labels, else the stored colours. Files claimed
    by a registered ``Viewer`` (event recordings ...) are drawn by it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"viz: input file not found: {path}")
    viewer = find_viewer(path)
    if viewer is not None:
        out = Path(output) if output else Path(path).with_suffix(".png")
        return viewer.render(Path(path), out, width, height, point_size)
    data = load_for_view(path)
    out = Path(output) if output else Path(path).with_suffix(".png")
    if "gt_boxes" in data or "pred_boxes" in data:
        # a detection prediction (geossm predict): points with both box sets
        scene = detection_scene(data["coord"], data.get("gt_boxes"), data.get("pred_boxes"),
                                data.get("pred_scores"), point_size=min(point_size, 2.0))
        return scene.render(out, width, height, view=DETECTION_VIEW)
    if "label" in data or "pred" in data:
        scene = side_by_side(data["coord"], data.get("label"), data.get("pred"),
                             point_size=point_size)
    else:
        scene = Scene().add_points("points", data["coord"], colors=data.get("color"),
                                   point_size=point_size)
    return scene.render(out, width, height)


def show_file(path: str | os.PathLike) -> None:
    """Open a window on a ``.ply``/``.npz`` (as ``render_file`` would draw it)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"viz: input file not found: {path}")
    viewer = find_viewer(path)
    if viewer is not None and viewer.show is not None:
        viewer.show(Path(path))
        return
    data = load_for_view(path)
    if "gt_boxes" in data or "pred_boxes" in data:
        scene = detection_scene(data["coord"], data.get("gt_boxes"), data.get("pred_boxes"),
                                data.get("pred_scores"))
    elif "label" in data or "pred" in data:
        scene = side_by_side(data["coord"], data.get("label"), data.get("pred"))
    else:
        scene = Scene().add_points("points", data["coord"], colors=data.get("color"))
    scene.show(title=str(path))
