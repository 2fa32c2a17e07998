"""Event-recording views for ``geossm viz`` (``EventViewer``, a registered ``geossm.viz.Viewer``).

``render_events`` draws one PNG: on top, the events as an Open3D point cloud in ``(x, t, y)``
(time runs into the picture; ON events red, OFF events blue); below it a strip of
``n_frames`` event frames over equal time bins (red / blue per polarity on white), with
ground-truth (green) and predicted (magenta) boxes when given (tracking); at the bottom a key
of these colours (``geossm.viz.key_band``). Files with a
``read_events`` extension (``.raw``, ``.dat``, ``.aedat4``, ``.aedat``, ``.es``, ``.h5``,
``.hdf5``) are claimed; ``.bin`` only when it parses as N-MNIST records with non-decreasing
timestamps (KITTI ``.bin`` point clouds do not).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geossm import viz
from geossm._compat import require
from geossm.viz.legend import Swatch, font_size, key_band

from .io import read_events

ON_COLOR = np.array([214, 39, 40], np.uint8)     # palette red
OFF_COLOR = np.array([31, 119, 180], np.uint8)   # palette blue
GT_COLOR = np.array([44, 160, 44], np.uint8)
PRED_COLOR = np.array([227, 0, 227], np.uint8)
_SUFFIXES = {".raw", ".dat", ".aedat4", ".aedat", ".es", ".h5", ".hdf5"}


def event_cloud(events: np.ndarray, sensor_size, max_points: int = 200_000,
                depth_ratio: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, 3)`` = ``(x, t', H - y)`` with ``t'`` spanning ``depth_ratio * W`` and
    colours ``(N, 3) uint8`` by polarity; at most ``max_points`` (an even stride)."""
    if len(events) > max_points:
        events = events[np.linspace(0, len(events) - 1, max_points).astype(np.int64)]
    w, h = sensor_size[0], sensor_size[1]
    t = events["t"].astype(np.float64)
    span = max(float(t[-1] - t[0]), 1.0) if len(t) else 1.0
    tt = (t - (t[0] if len(t) else 0)) / span * depth_ratio * w
    coord = np.stack([events["x"].astype(np.float64), tt, h - 1 - events["y"].astype(np.float64)],
                     1)
    colors = np.where(events["p"][:, None], ON_COLOR, OFF_COLOR).astype(np.uint8)
    return coord, colors


def _draw_box(img: np.ndarray, box, color: np.ndarray, scale: int) -> None:
    x, y, w, h = (np.asarray(box, np.float64) * scale).round().astype(int)
    hh, ww = img.shape[:2]
    x0, x1 = np.clip([x, x + w], 0, ww - 1)
    y0, y1 = np.clip([y, y + h], 0, hh - 1)
    for t in range(max(1, scale // 2)):
        img[np.clip(y0 + t, 0, hh - 1), x0:x1 + 1] = color
        img[np.clip(y1 - t, 0, hh - 1), x0:x1 + 1] = color
        img[y0:y1 + 1, np.clip(x0 + t, 0, ww - 1)] = color
        img[y0:y1 + 1, np.clip(x1 - t, 0, ww - 1)] = color


def frame_strip(events: np.ndarray, sensor_size, n_frames: int = 6, width: int = 1024,
                boxes=None, pred_boxes=None, times=None) -> np.ndarray:
    """``n_frames`` event frames side by side as an RGB ``uint8`` image ``width`` pixels wide.

    Pixels with more ON than OFF events are red, the others with events blue, saturation by
    count. ``boxes`` / ``pred_boxes`` ``(K, 4)`` at ``times (K,)`` are drawn on the frame whose
    bin holds their time.
    """
    w, h = int(sensor_size[0]), int(sensor_size[1])
    gap = max(2, w // 20)
    scale = max(1, (width - gap * (n_frames - 1)) // (n_frames * w))
    t = events["t"]
    t0, t1 = (int(t[0]), int(t[-1]) + 1) if len(t) else (0, 1)
    edges = np.linspace(t0, t1, n_frames + 1)
    strip = np.full((h * scale, n_frames * w * scale + gap * (n_frames - 1), 3), 255, np.uint8)
    for i in range(n_frames):
        lo, hi = np.searchsorted(t, edges[i:i + 2])
        e = events[lo:hi]
        on = np.zeros((h, w))
        off = np.zeros((h, w))
        np.add.at(on, (e["y"][e["p"]], e["x"][e["p"]]), 1)
        np.add.at(off, (e["y"][~e["p"]], e["x"][~e["p"]]), 1)
        total = on + off
        level = np.clip(total / max(np.percentile(total[total > 0], 95), 1) if total.any()
                        else total, 0, 1)[..., None]
        color = np.where((on >= off)[..., None], ON_COLOR, OFF_COLOR)
        img = (255 * (1 - level) + color * level).astype(np.uint8)
        img = np.repeat(np.repeat(img, scale, 0), scale, 1)
        if times is not None:
            for kind, color_ in ((boxes, GT_COLOR), (pred_boxes, PRED_COLOR)):
                if kind is None:
                    continue
                k = np.nonzero((np.asarray(times) >= edges[i]) & (np.asarray(times) < edges[i + 1])
                               )[0]
                if len(k):
                    _draw_box(img, np.asarray(kind)[k[-1]], color_, scale)
        x0 = i * (w * scale + gap)
        strip[:, x0:x0 + w * scale] = img
    return strip


def event_key(boxes=None, pred_boxes=None) -> tuple[Swatch, ...]:
    """The key of ``render_events``: ON / OFF polarity colours, and the box colours of what is
    drawn (``boxes`` ground truth, ``pred_boxes`` prediction)."""
    key = [Swatch("ON events", tuple(ON_COLOR.tolist())),
           Swatch("OFF events", tuple(OFF_COLOR.tolist()))]
    for given, text, color in ((boxes, "ground truth", GT_COLOR),
                               (pred_boxes, "prediction", PRED_COLOR)):
        if given is not None:
            key.append(Swatch(text, tuple(color.tolist()), outline=True))
    return tuple(key)


def render_events(events: np.ndarray, sensor_size, path: str | os.PathLike, width: int = 1024,
                  height: int = 768, point_size: float = 2.0, n_frames: int = 6, boxes=None,
                  pred_boxes=None, times=None) -> Path:
    """The PNG described in the module docstring, ``width`` wide; the 3D view takes
    ``height`` pixels, the frame strip (with an 8-pixel margin above and below) and the key
    (``band_height(font_size(height))`` pixels, ``geossm.viz.legend``) are added below it."""
    o3d = require("open3d", "geossm.tasks.events.viz (PNG rendering)")
    coord, colors = event_cloud(events, sensor_size)
    scene = viz.Scene().add_points("events", coord, colors=colors, point_size=point_size)
    top = scene.render_image(width, height, view=(0.9, -0.8, 0.5))
    strip = frame_strip(events, sensor_size, n_frames, width, boxes, pred_boxes, times)
    pad = np.full((strip.shape[0] + 16, width, 3), 255, np.uint8)
    left = (width - strip.shape[1]) // 2
    pad[8:8 + strip.shape[0], left:left + strip.shape[1]] = strip
    key = key_band(width, event_key(boxes, pred_boxes), font_size(height))
    image = np.ascontiguousarray(np.concatenate([top, pad, key], 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_image(str(path), o3d.geometry.Image(image)):
        raise OSError(f"render_events: could not write {path}")
    return path


def _sensor(rec, events: np.ndarray) -> tuple[int, int, int]:
    if rec.sensor_size is not None:
        return rec.sensor_size
    if not len(events):
        return (1, 1, 2)
    return (int(events["x"].max()) + 1, int(events["y"].max()) + 1, 2)


def _claims(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        return True
    if suffix == ".bin":
        try:
            size = path.stat().st_size
            if size == 0 or size % 5:
                return False
            with open(path, "rb") as f:
                b = np.frombuffer(f.read(5 * 1000), np.uint8).reshape(-1, 5).astype(np.int64)
        except OSError:
            return False
        t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
        return bool(np.all(np.diff(t[b[:, 1] != 240]) >= 0))
    return False


def _render(path: Path, output: Path, width: int, height: int, point_size: float) -> Path:
    rec = read_events(path)
    return render_events(rec.events, _sensor(rec, rec.events), output, width, height,
                         point_size=max(1.0, point_size * 0.7))


def _show(path: Path) -> None:
    rec = read_events(path)
    coord, colors = event_cloud(rec.events, _sensor(rec, rec.events))
    viz.Scene().add_points("events", coord, colors=colors).show(title=str(path))


@viz.VIEWERS.register
class EventViewer(viz.Viewer):
    """Event recordings: the files ``_claims`` accepts, drawn by ``render_events``."""

    claims = staticmethod(_claims)
    render = staticmethod(_render)
    show = staticmethod(_show)


VIEWER = EventViewer

__all__ = ["event_cloud", "frame_strip", "event_key", "render_events", "EventViewer", "VIEWER"]
