"""The fixed label palette: label ``k >= 0`` is drawn with ``PALETTE[k % 20]``, negative labels
(ignored / unlabelled) with ``IGNORE_COLOR`` (grey 128); ``BACKGROUND`` is the render background.

    0 blue  1 orange  2 green  3 red  4 purple  5 brown  6 pink  7 olive  8 cyan  9 navy
    10 lime  11 maroon  12 teal  13 gold  14 magenta  15 sky  16 coral  17 dark green
    18 lavender  19 dark grey
"""

from __future__ import annotations

import numpy as np


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
