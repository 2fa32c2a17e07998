"""Event-recording transforms (tonic-style callables over ``x, y, t, p`` structured arrays) and
``EventPreprocess``, the representation every recognition dataset and ``predict`` produce.

A sample is ``{"events": (N,) EVENT_DTYPE, "sensor_size": (W, H, 2), ...}``: tonic passes the
sensor size to each transform's constructor; here the sample carries it (the dataset knows it),
so configs need not repeat it. Transforms follow ``geossm.transforms`` (``t(sample, rng=None)``)
and are listed as ``augment: [{name: DropEvent, max_rate: 0.1}, {name: RandomAffine, ...}]``;
the recognition datasets hand every transform of a sample one generator.

The representations and slicers of ``geossm.serialization.events`` also come as tonic's classes
(same names and arguments), called on the events alone: ``ToFrame(sensor_size,
n_time_bins=3)(events)`` is ``to_frame(events, sensor_size, n_time_bins=3)``. They return an
array or a list of windows, not a sample, so they are not in ``TRANSFORMS`` (the datasets'
representation step is ``EventPreprocess``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geossm.registry import TRANSFORMS
from geossm.serialization import events as E
from geossm.serialization.events import to_frame, to_voxel_grid
from geossm.transforms import Sample, generator

__all__ = ["DropEvent", "RandomAffine", "EventPreprocess", "REPRESENTATIONS", "ToFrame",
           "ToVoxelGrid", "ToTimesurface", "SliceByTime", "SliceByEventCount",
           "SliceByTimeBins", "SliceByEventBins"]

REPRESENTATIONS = ("frames", "voxel", "events")


def _fraction(name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


@TRANSFORMS.register
class DropEvent:
    """Drop a random fraction of the events, the fraction uniform in ``[0, max_rate]``
    (default 0.1; 0 turns it off). Each event is kept independently."""

    def __init__(self, max_rate: float = 0.1):
        self.max_rate = _fraction("max_rate", max_rate)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        events = sample["events"]
        if self.max_rate > 0 and len(events):
            rng = generator(rng)
            # the per-event draws come before the rate: the order of the original stream
            keep = rng.random(len(events)) >= rng.uniform(0, self.max_rate)
            sample["events"] = events[keep]
        return sample

    def __repr__(self) -> str:
        return f"DropEvent(max_rate={self.max_rate})"


@TRANSFORMS.register
class RandomAffine:
    """Rotate by an angle uniform in ``±max_rotation`` degrees and scale by a factor uniform in
    ``[1 - max_scale, 1 + max_scale]`` about the sensor centre, then translate by an integer
    shift uniform in ``[-max_shift, max_shift]`` pixels per axis; coordinates are rounded and
    events leaving the sensor dropped. All three zero: the identity (no draws).

    Args:
        max_rotation: degrees, default 0.
        max_scale: relative change of scale in ``[0, 1)``, default 0.
        max_shift: pixels, default 2.
    """

    def __init__(self, max_rotation: float = 0.0, max_scale: float = 0.0, max_shift: int = 2):
        if float(max_rotation) < 0:
            raise ValueError(f"max_rotation: expected degrees >= 0, got {max_rotation!r}")
        if isinstance(max_shift, bool) or int(max_shift) != max_shift or max_shift < 0:
            raise ValueError(f"max_shift: expected an int >= 0, got {max_shift!r}")
        self.max_rotation = float(max_rotation)
        self.max_scale = _fraction("max_scale", max_scale)
        self.max_shift = int(max_shift)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if not (self.max_shift > 0 or self.max_rotation > 0 or self.max_scale > 0):
            return sample
        events, (w, h, _) = sample["events"], sample["sensor_size"]
        x, y = self._warp(events["x"].astype(np.float64), events["y"].astype(np.float64),
                          (w, h), generator(rng))
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        events = events[inside].copy()
        events["x"], events["y"] = x[inside], y[inside]
        sample["events"] = events
        return sample

    def _warp(self, x: np.ndarray, y: np.ndarray, size: tuple[int, int],
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``x, y (N,) float64`` -> rounded ``(N,) int64`` pixel coordinates (may leave the
        ``size = (W, H)`` sensor)."""
        w, h = size
        angle = np.deg2rad(rng.uniform(-self.max_rotation, self.max_rotation))
        scale = rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale)
        dx, dy = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        cos, sin = scale * np.cos(angle), scale * np.sin(angle)
        u, v = x - cx, y - cy
        return (np.rint(cos * u - sin * v + cx).astype(np.int64) + dx,
                np.rint(sin * u + cos * v + cy).astype(np.int64) + dy)

    def __repr__(self) -> str:
        return (f"RandomAffine(max_rotation={self.max_rotation}, max_scale={self.max_scale}, "
                f"max_shift={self.max_shift})")


class EventPreprocess:
    """One recording in the representation a recognition model reads:

    - ``"frames"``: ``frames (C, H, W) float32`` = ``log1p`` of event counts per polarity in
      ``n_time_bins`` equal time bins (``C = 2 * n_time_bins``, channel ``2 b + p``);
    - ``"voxel"``: ``frames (n_time_bins, H, W) float32``, the bilinear event volume of Zhu et
      al. (``to_voxel_grid``), divided by its largest magnitude;
    - ``"events"``: ``events (N, 4) int64`` columns ``x, y, t, p`` (t in µs from the first
      event), at most ``max_events`` of them: a random subset when called with a generator
      (training), an even stride otherwise.

    Args:
        sensor_size: ``(W, H, 2)``.
        representation: ``"frames"`` (default), ``"voxel"`` or ``"events"``.
        n_time_bins: time bins of frames / voxel grids, default 3.
        max_events: cap of the ``"events"`` representation, default 1024.
    """

    def __init__(self, sensor_size: Sequence[int], representation: str = "frames",
                 n_time_bins: int = 3, max_events: int = 1024):
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation: expected one of {REPRESENTATIONS}, got "
                             f"{representation!r}")
        for name, value in (("n_time_bins", n_time_bins), ("max_events", max_events)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.sensor_size = tuple(sensor_size)
        self.representation = representation
        self.n_time_bins = n_time_bins
        self.max_events = max_events

    def __call__(self, sample: Mapping[str, Any],
                 rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``sample["events"]`` in the representation, followed by the sample's other entries
        (``label``...) except ``sensor_size``."""
        out = self.represent(sample["events"], rng)
        out.update((k, v) for k, v in sample.items() if k not in ("events", "sensor_size"))
        return out

    def represent(self, ev: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The representation of one recording ``ev (N,) EVENT_DTYPE`` (class docstring)."""
        if self.representation == "frames":
            fr = to_frame(ev, self.sensor_size, n_time_bins=self.n_time_bins)  # (B, 2, H, W)
            fr = np.log1p(fr.astype(np.float32))
            return {"frames": fr.reshape(-1, *fr.shape[2:])}
        if self.representation == "voxel":
            vox = to_voxel_grid(ev, self.sensor_size, self.n_time_bins)[:, 0]  # (B, H, W)
            scale = float(np.abs(vox).max()) if vox.size else 0.0
            return {"frames": (vox / scale if scale > 0 else vox).astype(np.float32)}
        n = len(ev)
        if n > self.max_events:
            if rng is not None:
                idx = np.sort(rng.choice(n, self.max_events, replace=False))
            else:
                idx = np.linspace(0, n - 1, self.max_events).round().astype(np.int64)
            ev = ev[idx]
        t0 = int(ev["t"][0]) if len(ev) else 0
        cols = np.stack([ev["x"].astype(np.int64), ev["y"].astype(np.int64),
                         ev["t"].astype(np.int64) - t0,
                         (ev["p"] > 0).astype(np.int64)], 1)  # {-1, 1} or bool -> {0, 1}
        return {"events": cols.reshape(-1, 4)}

    def __repr__(self) -> str:
        return (f"EventPreprocess(sensor_size={self.sensor_size}, representation="
                f"{self.representation!r}, n_time_bins={self.n_time_bins}, "
                f"max_events={self.max_events})")


# ------------------------------------------- tonic's transform classes over events (docstring)

@dataclass(frozen=True)
class ToFrame:
    """tonic's ``ToFrame``: ``to_frame(events, sensor_size, ...)``, counts ``(T, P, H, W)``
    over the windows of exactly one of ``time_window`` (µs), ``event_count``, ``n_time_bins``,
    ``n_event_bins``."""

    sensor_size: tuple[int, int, int]
    time_window: float | None = None
    event_count: int | None = None
    n_time_bins: int | None = None
    n_event_bins: int | None = None
    overlap: float = 0
    include_incomplete: bool = False
    start_time: float | None = None
    end_time: float | None = None

    def __call__(self, events):
        return E.to_frame(events, self.sensor_size, time_window=self.time_window,
                          event_count=self.event_count, n_time_bins=self.n_time_bins,
                          n_event_bins=self.n_event_bins, overlap=self.overlap,
                          include_incomplete=self.include_incomplete,
                          start_time=self.start_time, end_time=self.end_time)


@dataclass(frozen=True)
class ToVoxelGrid:
    """tonic's ``ToVoxelGrid``: ``to_voxel_grid(events, sensor_size, n_time_bins)``,
    ``(n_time_bins, 1, H, W)`` (Zhu et al.'s ``B - 1`` time scaling, see the function)."""

    sensor_size: tuple[int, int, int]
    n_time_bins: int

    def __call__(self, events):
        return E.to_voxel_grid(events, self.sensor_size, self.n_time_bins)


@dataclass(frozen=True)
class ToTimesurface:
    """tonic's ``ToTimesurface``: ``to_time_surface(events, sensor_size, dt, tau, overlap,
    include_incomplete)``, ``(T, P, H, W)`` (``overlap`` and ``include_incomplete`` as tonic's
    functional form; its class fixes them at 0 and False, the defaults here)."""

    sensor_size: tuple[int, int, int]
    dt: float
    tau: float
    overlap: float = 0
    include_incomplete: bool = False

    def __call__(self, events):
        return E.to_time_surface(events, self.sensor_size, self.dt, self.tau, self.overlap,
                                 self.include_incomplete)


@dataclass(frozen=True)
class SliceByTime:
    """tonic's ``SliceByTime`` as a callable: ``slice_by_time(events, ...)``, a list of windows
    of ``time_window`` µs."""

    time_window: float
    overlap: float = 0
    include_incomplete: bool = False
    start_time: float | None = None
    end_time: float | None = None

    def __call__(self, events) -> list:
        return E.slice_by_time(events, self.time_window, self.overlap, self.include_incomplete,
                               self.start_time, self.end_time)


@dataclass(frozen=True)
class SliceByEventCount:
    """tonic's ``SliceByEventCount`` as a callable: ``slice_by_count(events, ...)``, a list of
    windows of ``event_count`` events."""

    event_count: int
    overlap: int = 0
    include_incomplete: bool = False

    def __call__(self, events) -> list:
        return E.slice_by_count(events, self.event_count, self.overlap, self.include_incomplete)


@dataclass(frozen=True)
class _SliceIntoBins:
    """A slicer into ``bin_count`` windows: ``slicer(events, bin_count, overlap)``."""

    bin_count: int
    overlap: float = 0.0
    slicer = None  # the serialization.events function, set by each subclass

    def __call__(self, events) -> list:
        return type(self).slicer(events, self.bin_count, self.overlap)


class SliceByTimeBins(_SliceIntoBins):
    """tonic's ``SliceByTimeBins`` as a callable: ``slice_by_time_bins(events, bin_count,
    overlap)``, ``bin_count`` windows of equal duration."""

    slicer = staticmethod(E.slice_by_time_bins)


class SliceByEventBins(_SliceIntoBins):
    """tonic's ``SliceByEventBins`` as a callable: ``slice_by_event_bins(events, bin_count,
    overlap)``, ``bin_count`` windows of equal event counts."""

    slicer = staticmethod(E.slice_by_event_bins)
