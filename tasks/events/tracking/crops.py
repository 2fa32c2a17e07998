"""Event frames at the ground-truth times and square crops of them (template, search region)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geossm.serialization.events import to_frame


def event_frames(events: np.ndarray, times: np.ndarray, sensor_size: Sequence[int],
                 window_us: int) -> np.ndarray:
    """Event counts ``(K, 2, H, W) float32`` in ``(t_k - window_us, t_k]`` for every ``t_k``.

    The windows are cut here (ground-truth times need not be evenly spaced, which the slicers
    of ``to_frame`` assume) and counted by ``geossm.serialization.events.to_frame``; events
    outside the ``W x H`` sensor are dropped. ``to_frame`` counts in int16 (tonic's dtype):
    exact up to 32,767 events of one polarity on one pixel within a window.
    """
    w, h = int(sensor_size[0]), int(sensor_size[1])
    # Off-sensor events dropped once (order kept, so every window is still one slice).
    events = events[(events["x"] >= 0) & (events["x"] < w) & (events["y"] >= 0)
                    & (events["y"] < h)]
    times = np.asarray(times)
    lo = np.searchsorted(events["t"], times - window_us, side="right")
    hi = np.searchsorted(events["t"], times, side="right")
    out = np.zeros((len(times), 2, h, w), np.float32)
    for k in range(len(times)):
        out[k] = to_frame(events[lo[k]:hi[k]], (w, h, 2), n_event_bins=1)[0]
    return out


def crop(frames: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor,
         size: int) -> torch.Tensor:
    """Square crops resampled bilinearly to ``size x size`` (zeros outside), ``log1p``-scaled.

    Shapes: ``frames (B, C, H, W)``, ``centers (B, 2)`` (x, y) and ``sides (B,)`` in pixels
    (pixel ``i`` spans ``[i, i + 1)``) -> ``(B, C, size, size)``.
    """
    b, _, h, w = frames.shape
    theta = torch.zeros(b, 2, 3, dtype=frames.dtype, device=frames.device)
    theta[:, 0, 0] = sides / w
    theta[:, 1, 1] = sides / h
    theta[:, 0, 2] = 2 * centers[:, 0] / w - 1
    theta[:, 1, 2] = 2 * centers[:, 1] / h - 1
    grid = F.affine_grid(theta, (b, frames.shape[1], size, size), align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Counts per crop pixel grow with the crop side: normalise to counts per sensor pixel.
    return torch.log1p(out)


def box_center_side(boxes: torch.Tensor, factor: float, min_side: float = 8.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(B, 2)`` and crop sides ``factor * sqrt(w h)`` ``(B,)`` of boxes ``(B, 4)``."""
    centers = boxes[:, :2] + boxes[:, 2:] / 2
    sides = factor * torch.sqrt(boxes[:, 2].clamp_min(1) * boxes[:, 3].clamp_min(1))
    return centers, sides.clamp_min(min_side)
