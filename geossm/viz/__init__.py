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
exists. ``.ply`` files are written and read with NumPy by ``geossm.io.ply`` (binary
little-endian, extra per-point properties ``label``/``pred`` kept), so saving needs no open3d.

The ``Scene`` holds named geometries: point clouds (``add_points``), 3D boxes as line sets
(``add_boxes``), arbitrary line sets (``add_lines``), and any Open3D geometry
(``add_geometry``) - the hook for task-specific views (event streams, voxels).

Legends are drawn into the PNG with Pillow (``pip install pillow``; Open3D draws no 2-D text):
a caption band on top ("ground truth" over the left cloud, "prediction" over the right one) and
a colour key at the bottom (the classes present; points / ground-truth / predicted boxes).

Modules: ``palette`` (colours), ``scene`` (``Scene``, ``box_corners``), ``legend`` (``Legend``,
``render_with_legend``), ``views`` (ready-made scenes of prediction files and their legends:
``side_by_side``, ``detection_scene``), ``files`` (``render_file`` / ``show_file`` /
``load_for_view``, ``write_labeled_ply`` and the tasks' ``VIEWERS``).
"""

from __future__ import annotations

from geossm._compat import require
from geossm.io.ply import read_ply, write_ply

from .files import (VIEWERS, Viewer, find_viewer, load_for_view, render_file, show_file,
                    write_labeled_ply)
from .legend import Legend, Swatch, caption_band, key_band, render_with_legend
from .palette import BACKGROUND, IGNORE_COLOR, PALETTE, label_colors
from .scene import Scene, box_corners, has_display
from .views import (DETECTION_POINT_COLOR, DETECTION_VIEW, GT_BOX_COLOR, PRED_BOX_COLOR,
                    detection_legend, detection_scene, side_by_side, side_by_side_legend)

__all__ = ["PALETTE", "IGNORE_COLOR", "BACKGROUND", "label_colors", "read_ply", "write_ply",
           "write_labeled_ply", "Scene", "box_corners", "has_display", "side_by_side",
           "detection_scene", "GT_BOX_COLOR", "PRED_BOX_COLOR", "DETECTION_POINT_COLOR",
           "DETECTION_VIEW", "load_for_view", "render_file", "show_file", "Viewer", "VIEWERS",
           "find_viewer", "require", "Legend", "Swatch", "render_with_legend", "key_band",
           "caption_band", "side_by_side_legend", "detection_legend"]
