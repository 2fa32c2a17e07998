"""Files to look at: ``write_labeled_ply`` (a palette-coloured ``.ply``), ``load_for_view``,
``render_file`` / ``show_file`` (what ``geossm viz`` runs) and the ``Viewer`` s tasks register
for their own file types (``VIEWERS``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from geossm.io.ply import read_ply, write_ply
from geossm.registry import Registry, autoload

from .palette import label_colors
from .scene import Scene
from .legend import render_with_legend
from .views import (DETECTION_VIEW, detection_legend, detection_scene, side_by_side,
                    side_by_side_legend)


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


class Viewer:
    """A task's view of its own file types (e.g. event recordings), asked by ``render_file`` /
    ``show_file`` before the built-in ``.ply`` / ``.npz`` view.

    Subclass it with static methods and register the class in ``VIEWERS`` at import time
    (``@VIEWERS.register``, keyed by the class name like models and datasets):

    - ``claims(path) -> bool`` decides (usually by suffix, maybe by sniffing the header);
    - ``render(path, output, width, height, point_size) -> Path`` writes a PNG;
    - ``show(path)`` opens a window (optional: None renders only).
    """

    show: Any = None

    @staticmethod
    def claims(path: Path) -> bool:
        raise NotImplementedError

    @staticmethod
    def render(path: Path, output: Path, width: int, height: int, point_size: float) -> Path:
        raise NotImplementedError


#: File viewers of the tasks (``Viewer`` subclasses), found by ``find_viewer``.
VIEWERS = Registry("viewer")


def find_viewer(path: str | os.PathLike) -> type[Viewer] | None:
    """The registered viewer claiming ``path`` (the library's tasks are imported first, so their
    viewers are known), or None for the built-in ``.ply``/``.npz`` view.

    A ``.ply`` / ``.npz`` is drawn by the built-in view unless a viewer registered already
    claims it: the tasks are not imported for it (that would cost seconds per file).
    """
    path = Path(path)
    loaded = VIEWERS.loaded().values()
    if path.suffix.lower() in (".ply", ".npz") and not any(v.claims(path) for v in loaded):
        return None
    autoload()
    for viewer in VIEWERS.loaded().values():
        if viewer.claims(path):
            return viewer
    return None


def render_file(path: str | os.PathLike, output: str | os.PathLike | None = None,
                width: int = 1024, height: int = 768, point_size: float = 3.0) -> Path:
    """Render a ``.ply``/``.npz`` to a PNG of ``width x height`` pixels (default path
    ``<input>.png``): points with ground-truth and predicted 3D boxes when the ``.npz`` holds
    ``gt_boxes`` / ``pred_boxes`` (``pred_scores`` >= 0.3; see ``detection_scene``), else ground
    truth and prediction side by side when both are there, else the labels, else the stored
    colours. Boxes and labels come with their legend drawn in (``render_with_legend``: captions
    "ground truth" / "prediction" in a band on top, a colour key at the bottom; see
    ``side_by_side_legend``, ``detection_legend``). Files claimed by a registered ``Viewer``
    (event recordings ...) are drawn by it."""
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
        boxes = (data.get("gt_boxes"), data.get("pred_boxes"), data.get("pred_scores"))
        scene = detection_scene(data["coord"], *boxes, point_size=min(point_size, 2.0))
        return render_with_legend(scene, detection_legend(data["coord"], *boxes), out, width,
                                  height, view=DETECTION_VIEW)
    if "label" in data or "pred" in data:
        scene = side_by_side(data["coord"], data.get("label"), data.get("pred"),
                             point_size=point_size)
        legend = side_by_side_legend(data.get("label"), data.get("pred"))
        return render_with_legend(scene, legend, out, width, height)
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
