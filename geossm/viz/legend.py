"""Legends drawn into rendered PNGs, since Open3D's offscreen renderer draws no 2-D text.

A ``Legend`` has two parts, each drawn on a band of the background colour; the PNG keeps its
``width x height`` and the 3-D view is rendered into the height the bands leave
(``render_with_legend``):

- ``captions`` (top band): one caption centred above each named geometry of the scene, e.g.
  "ground truth" over the left cloud and "prediction" over the right one;
- ``key`` (bottom band): ``Swatch`` es, a colour square (filled for points, hollow for box edges)
  followed by what it means: the classes present, or what grey, green and red stand for in a
  detection view. At most ``MAX_KEY_ROWS`` rows; what does not fit becomes "+N more".

Text is drawn with Pillow's bundled font (``ImageFont.load_default(size)``, Pillow >= 10.1), so
no font file is read and the same Pillow draws the same pixels. Sizes follow the image height:
the font is ``font_size(height)`` = ``max(12, round(height / 32))`` pixels, each band row
``band_height(size)`` = ``round(1.8 * size)`` pixels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geossm._compat import require

from .scene import Scene

#: Key rows at most; the swatches left over are counted in a last "+N more" entry.
MAX_KEY_ROWS = 2
TEXT_COLOR = (40, 40, 40)


@dataclass(frozen=True)
class Swatch:
    """One key entry: ``text`` after a square of ``color`` (RGB 0-255; None: text only),
    hollow when ``outline`` (box edges) and filled otherwise (points)."""

    text: str
    color: tuple[int, int, int] | None = None
    outline: bool = False


@dataclass(frozen=True)
class Legend:
    """What ``render_with_legend`` draws: ``captions`` maps a scene geometry's name to the text
    centred above it (top band); ``key`` lists the swatches of the bottom band. Empty parts
    take no band."""

    captions: Mapping[str, str] = field(default_factory=dict)
    key: tuple[Swatch, ...] = ()


def font_size(height: int) -> int:
    """Font size in pixels for an image ``height`` pixels high: ``max(12, round(height / 32))``."""
    return max(12, round(height / 32))


def band_height(size: int) -> int:
    """Pixels of one band row for font ``size``: ``round(1.8 * size)``."""
    return round(1.8 * size)


def _pil() -> tuple[Any, Any, Any]:
    """Pillow's ``Image``, ``ImageDraw`` and ``ImageFont`` (imported on first use: optional)."""
    require("PIL", "geossm.viz (legends)")
    from PIL import Image, ImageDraw, ImageFont
    return Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=None)
def _font(size: int) -> Any:
    return _pil()[2].load_default(size=size)


def _band(width: int, rows: int, size: int, background: tuple[int, int, int]) -> tuple[Any, Any]:
    image_mod, draw_mod, _ = _pil()
    band = image_mod.new("RGB", (width, rows * band_height(size)), background)
    return band, draw_mod.Draw(band)


def rgb255(color: Sequence[float]) -> tuple[int, int, int]:
    """An RGB colour in [0, 1] (``Scene.background``, ``GT_BOX_COLOR`` ...) as 0-255 integers."""
    return tuple(int(c) for c in np.round(np.asarray(color, np.float64) * 255).clip(0, 255))


def _swatch_width(swatch: Swatch, size: int) -> int:
    square = size + size // 2 if swatch.color is not None else 0
    return square + round(_font(size).getlength(swatch.text))


def _row_width(row: Sequence[Swatch], size: int) -> int:
    return sum(_swatch_width(s, size) for s in row) + size * (len(row) - 1)


def _key_rows(key: Sequence[Swatch], width: int, size: int) -> list[list[Swatch]]:
    """Swatches filled in order into rows ``width - size`` pixels wide; beyond ``MAX_KEY_ROWS``
    rows, the last row ends with a text-only "+N more" counting the swatches left out."""
    room = width - size
    rows: list[list[Swatch]] = [[]]
    for swatch in key:
        if rows[-1] and _row_width(rows[-1] + [swatch], size) > room:
            rows.append([])
        rows[-1].append(swatch)
    if len(rows) <= MAX_KEY_ROWS:
        return rows
    rows = rows[:MAX_KEY_ROWS]
    shown = sum(len(row) for row in rows)
    more = Swatch(f"+{len(key) - shown} more")
    while rows[-1] and _row_width(rows[-1] + [more], size) > room:
        rows[-1].pop()
        shown -= 1
        more = Swatch(f"+{len(key) - shown} more")
    rows[-1].append(more)
    return rows


def key_band(width: int, key: Sequence[Swatch], size: int,
             background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The key as an RGB band ``(rows * band_height(size), width, 3) uint8``, each row centred."""
    rows = _key_rows(key, width, size)
    band, draw = _band(width, len(rows), size, background)
    font, row_h = _font(size), band_height(size)
    for r, row in enumerate(rows):
        x = max(0, (width - _row_width(row, size)) // 2)
        middle = r * row_h + row_h // 2
        for swatch in row:
            if swatch.color is not None:
                box = (x, middle - size // 2, x + size - 1, middle + size // 2 - 1)
                if swatch.outline:
                    draw.rectangle(box, outline=swatch.color, width=max(2, size // 6))
                else:
                    draw.rectangle(box, fill=swatch.color)
                x += size + size // 2
            draw.text((x, middle), swatch.text, fill=TEXT_COLOR, font=font, anchor="lm")
            x += round(font.getlength(swatch.text)) + size
    return np.asarray(band)


def caption_band(width: int, captions: Sequence[tuple[str, float]], size: int,
                 background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Captions ``(text, centre column)`` on one RGB band ``(band_height(size), width, 3)
    uint8``, each centred on its column and moved inwards where it would leave the band."""
    band, draw = _band(width, 1, size, background)
    font, middle = _font(size), band_height(size) // 2
    for text, column in captions:
        length = font.getlength(text)
        left = min(max(column - length / 2, size / 2), width - size / 2 - length)
        draw.text((round(max(left, 0)), middle), text, fill=TEXT_COLOR, font=font, anchor="lm")
    return np.asarray(band)


def render_with_legend(scene: Scene, legend: Legend, path: str | os.PathLike, width: int = 1024,
                       height: int = 768, view: tuple[float, float, float] = (-0.25, -1.0, 0.75),
                       fov_deg: float = 45.0) -> Path:
    """A PNG of ``width x height`` pixels: the legend's caption band on top, the key band at the
    bottom and ``scene`` rendered (as ``Scene.render`` with ``view`` / ``fov_deg``) into the
    height between them. Without captions and key, or when the bands would take more than half
    the height (tiny images), the whole PNG is the 3-D view."""
    if width < 1 or height < 1:
        raise ValueError(f"render: width and height must be >= 1, got {width}x{height}")
    size = font_size(height)
    background = rgb255(scene.background)
    captions = [(text, name) for name, text in legend.captions.items() if name in scene.items]
    key = key_band(width, legend.key, size, background) if legend.key else None
    top = band_height(size) if captions else 0
    bottom = 0 if key is None else key.shape[0]
    if top + bottom == 0 or 2 * (top + bottom) > height:
        return scene.render(path, width, height, view, fov_deg)
    body_height = height - top - bottom
    parts = [scene.render_image(width, body_height, view, fov_deg)]
    if captions:
        centres = np.stack([np.mean(_item_bounds(scene, name), 0) for _, name in captions])
        columns = scene.project(centres, width, body_height, view, fov_deg)[:, 0]
        texts = [(text, float(c)) for (text, _), c in zip(captions, columns)]
        parts.insert(0, caption_band(width, texts, size, background))
    if key is not None:
        parts.append(key)
    return _write_png(np.concatenate(parts, 0), path)


def _item_bounds(scene: Scene, name: str) -> np.ndarray:
    box = scene.items[name].geometry.get_axis_aligned_bounding_box()
    return np.stack([np.asarray(box.min_bound), np.asarray(box.max_bound)])


def _write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil()[0].fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return path
