"""Event streams: tonic-compatible slicers and representations, and raw-event serialization.

Events are either a numpy structured array with fields ``x, y, t, p`` (tonic's convention, ``t``
in microseconds, sorted by ``t``) or the same as a dict of 1-D torch tensors. ``sensor_size`` is
``(W, H, P)``.

The slicers return exactly the windows of tonic's ``slice_events_by_time`` /
``slice_events_by_count`` / ``slice_events_by_time_bins`` / ``slice_events_by_event_bins``
(``tonic.slicers``), and ``to_frame`` equals ``tonic.functional.to_frame_numpy``, except that
empty input gives empty frames instead of an exception. Window bounds are computed on the host
(their number depends on the data: one host sync for torch inputs); the accumulation is
vectorised numpy or torch (CPU or CUDA).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from .curves import sample_depths
from .points import serialize_grid
from .structure import Serialization, _unchecked
from .traceable import serialize_events_op, tracing

__all__ = [
    "slice_by_time", "slice_by_count", "slice_by_time_bins", "slice_by_event_bins",
    "slice_indices", "to_frame", "to_voxel_grid", "to_time_surface", "serialize_events",
    "as_tensors",
]

_FIELDS = ("x", "y", "t", "p")


def _is_torch(events) -> bool:
    return isinstance(events, Mapping)


def _columns(events, need=_FIELDS) -> dict[str, Any]:
    """The named columns as numpy arrays or torch tensors (no copy)."""
    if isinstance(events, np.ndarray):
        names = events.dtype.names or ()
        missing = [f for f in need if f not in names]
        if missing:
            raise ValueError(
                f"events: expected a structured array with fields {need}, got fields {names} "
                f"(missing {missing})"
            )
        return {f: events[f] for f in need}
    if isinstance(events, Mapping):
        missing = [f for f in need if f not in events]
        if missing:
            raise ValueError(
                f"events: expected a dict with keys {need}, got keys {tuple(events)} "
                f"(missing {missing})"
            )
        cols = {f: events[f] for f in need}
        n = None
        for f, v in cols.items():
            if not isinstance(v, Tensor) or v.dim() != 1:
                raise TypeError(f"events[{f!r}]: expected a 1-D torch.Tensor, got {type(v).__name__}")
            if n is not None and v.numel() != n:
                raise ValueError(f"events[{f!r}]: expected {n} events like the others, got {v.numel()}")
            n = v.numel()
        return cols
    raise TypeError(
        "events: expected a numpy structured array (fields x, y, t, p) or a dict of torch "
        f"tensors, got {type(events).__name__}"
    )


def _num_events(events) -> int:
    if isinstance(events, np.ndarray):
        return len(events)
    return _columns(events, ("t",))["t"].numel()


def _host_t(events) -> np.ndarray:
    t = _columns(events, ("t",))["t"]
    if isinstance(t, Tensor):
        t = t.detach().cpu().numpy()
    t = np.asarray(t)
    if t.size > 1 and bool(np.any(t[1:] < t[:-1])):
        bad = int(np.nonzero(t[1:] < t[:-1])[0][0])
        raise ValueError(
            f"events['t']: expected timestamps sorted ascending, got t[{bad}] = {t[bad]} > "
            f"t[{bad + 1}] = {t[bad + 1]}"
        )
    return t


def as_tensors(events, device=None) -> dict[str, Tensor]:
    """A structured array (or dict) -> dict of torch tensors ``x, y, t, p`` (int64) on ``device``."""
    cols = _columns(events)
    out = {}
    for f, v in cols.items():
        # astype copies into a fresh int64 array: a field of a packed structured array (13-byte
        # records) has strides torch cannot view, and numpy calls a 1-event field contiguous,
        # so ascontiguousarray would not copy it.
        tens = v if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v).astype(np.int64))
        out[f] = tens.to(device=device, dtype=torch.long) if device is not None else tens.long()
    return out


def _take(events, start: int, end: int):
    if isinstance(events, np.ndarray):
        return events[start:end]
    return {k: v[start:end] for k, v in events.items()}


def _positive(name: str, value, integer: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not value > 0 or (integer and int(value) != value):
        kind = "a positive int" if integer else "a positive number"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")


def _indices_by_time(t: np.ndarray, time_window, overlap=0, include_incomplete=False,
                     start_time=None, end_time=None) -> tuple[np.ndarray, np.ndarray]:
    _positive("time_window", time_window)
    stride = time_window - overlap
    if not stride > 0:
        raise ValueError(
            f"overlap: expected less than time_window = {time_window}, got {overlap!r}"
        )
    if t.size == 0 and (start_time is None or end_time is None):
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    start = t[0] if start_time is None else start_time
    end = t[-1] if end_time is None else end_time
    rounding = np.ceil if include_incomplete else np.floor
    n_slices = max(int(rounding((end - start - time_window) / stride) + 1), 1)
    begin = np.arange(n_slices) * stride + start
    return (np.searchsorted(t, begin).astype(np.int64),
            np.searchsorted(t, begin + time_window).astype(np.int64))


def _indices_by_count(n: int, event_count, overlap=0, include_incomplete=False):
    _positive("event_count", event_count, integer=True)
    stride = event_count - overlap
    if not stride > 0:
        raise ValueError(f"overlap: expected less than event_count = {event_count}, got {overlap!r}")
    count = min(event_count, n)
    rounding = np.ceil if include_incomplete else np.floor
    n_slices = int(rounding((n - count) / stride) + 1)
    begin = (np.arange(n_slices) * stride).astype(np.int64)
    return begin, begin + count


def _check_bins(bin_count, overlap) -> None:
    _positive("bin_count", bin_count, integer=True)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap: expected a fraction of a bin in [0, 1), got {overlap!r}")


def _indices_by_time_bins(t: np.ndarray, bin_count, overlap=0.0):
    _check_bins(bin_count, overlap)
    if t.size == 0:
        zeros = np.zeros(int(bin_count), dtype=np.int64)
        return zeros, zeros.copy()
    # tonic floors the bin width before enlarging it; keep that for identical windows.
    window = (t[-1] - t[0]) // bin_count * (1 + overlap)
    stride = window * (1 - overlap)
    begin = np.arange(bin_count) * stride + t[0]
    return (np.searchsorted(t, begin).astype(np.int64),
            np.searchsorted(t, begin + window).astype(np.int64))


def _indices_by_event_bins(n: int, bin_count, overlap=0.0):
    _check_bins(bin_count, overlap)
    count = int(n // bin_count * (1 + overlap))
    stride = int(count * (1 - overlap))
    begin = np.arange(bin_count, dtype=np.int64) * stride
    return begin, begin + count


def slice_indices(events, time_window=None, event_count=None, n_time_bins=None,
                  n_event_bins=None, overlap=0, include_incomplete=False, start_time=None,
                  end_time=None) -> tuple[np.ndarray, np.ndarray]:
    """Window bounds ``(start (T,), end (T,))`` int64 for exactly one slicing method.

    ``events[start[i]:end[i]]`` is window ``i``; ``end`` may exceed ``N`` (slicing clamps, as in
    tonic). Overlap is in µs (time_window), events (event_count) or a fraction of a bin (bins).
    """
    chosen = [name for name, v in (("time_window", time_window), ("event_count", event_count),
                                   ("n_time_bins", n_time_bins), ("n_event_bins", n_event_bins))
              if v is not None]
    if len(chosen) != 1:
        raise ValueError(
            "time_window/event_count/n_time_bins/n_event_bins: expected exactly one to be set, "
            f"got {chosen or 'none'}"
        )
    if time_window is not None:
        return _indices_by_time(_host_t(events), time_window, overlap, include_incomplete,
                                start_time, end_time)
    if event_count is not None:
        return _indices_by_count(_num_events(events), event_count, overlap, include_incomplete)
    if n_time_bins is not None:
        return _indices_by_time_bins(_host_t(events), n_time_bins, overlap)
    return _indices_by_event_bins(_num_events(events), n_event_bins, overlap)


def _slices(events, bounds) -> list:
    return [_take(events, int(s), int(e)) for s, e in zip(*bounds)]


def slice_by_time(events, time_window, overlap=0, include_incomplete=False, start_time=None,
                  end_time=None) -> list:
    """Windows of ``time_window`` µs every ``time_window - overlap`` µs from the first event.

    ``T = floor((t_end - t_start - time_window) / stride) + 1`` windows (``ceil`` with
    ``include_incomplete``; at least 1), window ``i`` holds ``t_start + i·stride <= t <
    t_start + i·stride + time_window``. Same windows as ``tonic.slicers.slice_events_by_time``.

    Returns: list of ``T`` event arrays (views) of the input's type.
    """
    _columns(events)
    return _slices(events, _indices_by_time(_host_t(events), time_window, overlap,
                                            include_incomplete, start_time, end_time))


def slice_by_count(events, event_count, overlap=0, include_incomplete=False) -> list:
    """Windows of ``event_count`` events every ``event_count - overlap`` events.

    Same windows as ``tonic.slicers.slice_events_by_count``.
    """
    _columns(events)
    return _slices(events, _indices_by_count(_num_events(events), event_count, overlap,
                                             include_incomplete))


def slice_by_time_bins(events, bin_count, overlap=0.0) -> list:
    """``bin_count`` windows of ``(t_last - t_first) // bin_count · (1 + overlap)`` µs.

    Same windows as ``tonic.slicers.slice_events_by_time_bins`` (empty input: empty windows).
    """
    _columns(events)
    return _slices(events, _indices_by_time_bins(_host_t(events), bin_count, overlap))


def slice_by_event_bins(events, bin_count, overlap=0.0) -> list:
    """``bin_count`` windows of ``N // bin_count · (1 + overlap)`` events.

    Same windows as ``tonic.slicers.slice_events_by_event_bins``.
    """
    _columns(events)
    return _slices(events, _indices_by_event_bins(_num_events(events), bin_count, overlap))


def _check_sensor(sensor_size) -> tuple[int, int, int]:
    if (not isinstance(sensor_size, (tuple, list)) or len(sensor_size) != 3
            or any(isinstance(v, bool) or int(v) != v or v < 1 for v in sensor_size)):
        raise ValueError(f"sensor_size: expected (W, H, P) positive ints, got {sensor_size!r}")
    return int(sensor_size[0]), int(sensor_size[1]), int(sensor_size[2])


def _pixels(cols, sensor, lib):
    """Validated integer ``x, y`` and polarity channel ``c`` (negative polarity -> channel 0)."""
    w, h, p_ch = sensor
    x, y, p = cols["x"], cols["y"], cols["p"]
    if lib is np:
        x, y, p = x.astype(np.int64), y.astype(np.int64), p.astype(np.int64)
    else:
        x, y, p = x.long(), y.long(), p.long()
    if x.shape[0]:
        for name, v, top in (("x", x, w), ("y", y, h)):
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= top:
                raise ValueError(f"events[{name!r}]: expected values in [0, {top}), got [{lo}, {hi}]")
        if p_ch == 1:
            if int(p.min()) != int(p.max()):
                raise ValueError(
                    "events['p']: expected a single polarity for sensor_size P = 1, got values "
                    f"in [{int(p.min())}, {int(p.max())}]"
                )
            p = p * 0
        else:
            p = p.clip(0, None) if lib is np else p.clamp_min(0)
            if int(p.max()) >= p_ch:
                raise ValueError(
                    f"events['p']: expected polarities < P = {p_ch}, got max {int(p.max())}"
                )
    return x, y, p


def to_frame(events, sensor_size, time_window=None, event_count=None, n_time_bins=None,
             n_event_bins=None, overlap=0, include_incomplete=False, start_time=None,
             end_time=None):
    """Event counts per window, polarity and pixel (tonic's ``ToFrame``).

    ``frame[i, c, y, x] = #{events e in window i : p_e -> c, y_e = y, x_e = x}`` with the
    windows of ``slice_indices`` (exactly one of ``time_window``, ``event_count``,
    ``n_time_bins``, ``n_event_bins``). Equal to ``tonic.functional.to_frame_numpy``, also
    correct for empty input (one empty frame for time_window / event_count, ``n`` for bins).
    A polarity ``p < 0`` counts in channel 0 (tonic would wrap it to the last channel).

    Args:
        events: structured array or dict of tensors (``x, y, t, p``).
        sensor_size: ``(W, H, P)``.

    Returns:
        ``(T, P, H, W)`` int16, numpy for numpy input, torch on the events' device otherwise.
    """
    sensor = _check_sensor(sensor_size)
    cols = _columns(events)
    starts, ends = slice_indices(events, time_window, event_count, n_time_bins, n_event_bins,
                                 overlap, include_incomplete, start_time, end_time)
    w, h, p_ch = sensor
    n = _num_events(events)
    starts = np.clip(starts, 0, n)
    lengths = np.clip(ends, 0, n) - starts
    lengths = np.maximum(lengths, 0)
    n_frames = len(starts)
    size = n_frames * p_ch * h * w
    if _is_torch(events):
        dev = cols["t"].device
        x, y, p = _pixels(cols, sensor, torch)
        st = torch.from_numpy(starts).to(dev)
        ln = torch.from_numpy(lengths).to(dev)
        total = int(lengths.sum())
        frame = torch.repeat_interleave(torch.arange(n_frames, device=dev), ln, output_size=total)
        offset = torch.cumsum(ln, 0) - ln
        ev = st[frame] + torch.arange(total, device=dev) - offset[frame]
        flat = ((frame * p_ch + p[ev]) * h + y[ev]) * w + x[ev]
        counts = torch.bincount(flat, minlength=size)
        return counts.to(torch.int16).view(n_frames, p_ch, h, w)
    x, y, p = _pixels(cols, sensor, np)
    frame = np.repeat(np.arange(n_frames, dtype=np.int64), lengths)
    offset = np.cumsum(lengths) - lengths
    ev = starts[frame] + np.arange(frame.size, dtype=np.int64) - offset[frame]
    flat = ((frame * p_ch + p[ev]) * h + y[ev]) * w + x[ev]
    counts = np.bincount(flat, minlength=size)
    # int16 like tonic (which accumulates in int16 and wraps alike).
    return counts.astype(np.int16).reshape(n_frames, p_ch, h, w)


def to_voxel_grid(events, sensor_size, n_time_bins):
    """Event volume of Zhu et al. 2019 (bilinear in time, polarity ±1).

    With ``t* = (B - 1)(t - t_0) / (t_N - t_0)`` (0 for a zero-length recording)::

        V[b, y, x] = Σ_e  p_e · max(0, 1 - |b - t*_e|),     p_e = +1 if p > 0 else -1

    Every event contributes (tonic scales by ``B`` instead of ``B - 1``, which drops the last
    event; otherwise the two agree up to that scale).

    Returns:
        ``(B, 1, H, W)``: float64 numpy for numpy input, float32 torch otherwise.
    """
    w, h, _ = _check_sensor(sensor_size)
    _positive("n_time_bins", n_time_bins, integer=True)
    bins = int(n_time_bins)
    cols = _columns(events)
    lib = torch if _is_torch(events) else np
    x, y, _ = _pixels(cols, (w, h, 2), lib)
    if lib is torch:
        t = cols["t"].to(torch.float64)
        pol = torch.where(cols["p"] > 0, 1.0, -1.0).to(torch.float64)
        grid = torch.zeros(bins * h * w, dtype=torch.float64, device=t.device)
    else:
        t = cols["t"].astype(np.float64)
        pol = np.where(cols["p"] > 0, 1.0, -1.0)
        grid = np.zeros(bins * h * w, dtype=np.float64)
    if t.shape[0]:
        span = float(t[-1] - t[0])
        ts = (bins - 1) * (t - t[0]) / span if span > 0 else t * 0
        left = lib.floor(ts)
        frac = ts - left
        left = left.long() if lib is torch else left.astype(np.int64)
        pix = y * w + x
        for b, val in ((left, pol * (1 - frac)), (left + 1, pol * frac)):
            keep = b < bins
            idx = b[keep] * (h * w) + pix[keep]
            if lib is torch:
                grid.index_add_(0, idx, val[keep])
            else:
                np.add.at(grid, idx, val[keep])
    out = grid.reshape(bins, 1, h, w)
    return out.float() if lib is torch else out


def to_time_surface(events, sensor_size, dt, tau, overlap=0, include_incomplete=False):
    """Global time surfaces at the end of every ``dt`` window (tonic's ``ToTimesurface``).

    Windows as ``slice_by_time(events, dt, overlap, include_incomplete)``; with ``last_i(c, y,
    x)`` the latest timestamp at that pixel among events up to the end of window ``i`` and
    ``t_0`` the first timestamp::

        S[i, c, y, x] = exp(-((i + 1)·dt + t_0 - last_i(c, y, x)) / tau)    (0 if no event yet)

    Equal to ``tonic.functional.to_timesurface_numpy``.

    Returns:
        ``(T, P, H, W)``: float64 numpy for numpy input, float32 torch otherwise.
    """
    sensor = _check_sensor(sensor_size)
    _positive("tau", tau)
    w, h, p_ch = sensor
    cols = _columns(events)
    t_host = _host_t(events)
    _, ends = _indices_by_time(t_host, dt, overlap, include_incomplete)
    n = t_host.size
    n_win = len(ends)
    t0 = float(t_host[0]) if n else 0.0
    lib = torch if _is_torch(events) else np
    x, y, p = _pixels(cols, sensor, lib)
    ends = np.minimum(ends, n)
    # An event first shows up in the first window whose end lies beyond it.
    first = np.searchsorted(ends, np.arange(n), side="right")
    size = p_ch * h * w
    if lib is torch:
        dev = cols["t"].device
        first_t = torch.from_numpy(first).to(dev)
        keep = first_t < n_win
        flat = first_t[keep] * size + ((p[keep] * h + y[keep]) * w + x[keep])
        mem = torch.full((n_win * size,), -math.inf, dtype=torch.float64, device=dev)
        mem.scatter_reduce_(0, flat, cols["t"][keep].to(torch.float64), "amax")
        mem = torch.cummax(mem.view(n_win, size), 0).values
        times = (torch.arange(1, n_win + 1, device=dev, dtype=torch.float64) * dt + t0)[:, None]
        surf = torch.exp(-(times - mem) / tau)
        return surf.view(n_win, p_ch, h, w).float()
    keep = first < n_win
    flat = first[keep] * size + ((p[keep] * h + y[keep]) * w + x[keep])
    mem = np.full(n_win * size, -np.inf)
    np.maximum.at(mem, flat, cols["t"][keep].astype(np.float64))
    mem = np.maximum.accumulate(mem.reshape(n_win, size), axis=0)
    times = (np.arange(1, n_win + 1) * dt + t0)[:, None]
    return np.exp(-(times - mem) / tau).reshape(n_win, p_ch, h, w)


def serialize_events(events, sensor_size, time_scale: float, order: str = "hilbert",
                     batch: Tensor | None = None, depth: int | None = None,
                     per_sample: bool = False) -> Serialization:
    """Serialize raw events as points ``(x, y, floor((t - t_min)·time_scale))`` along a curve.

    Args:
        events: structured array or dict of tensors (``x, y, t, p``).
        sensor_size: ``(W, H, P)`` (x, y are checked against it).
        time_scale: grid cells per µs along time (e.g. ``1e-3`` = one cell per ms).
        order: a curve of ``curves.ORDERS``, default ``"hilbert"``.
        batch: ``(N,)`` recording index for several concatenated recordings, default None.
        depth: bits per axis, default the fewest that fit.
        per_sample: with ``batch``, ``t_min`` and the depth of each recording its own (``depth``
            must be None): a recording gets the order it gets alone, whatever it is batched
            with; default False (one time origin and depth for the whole batch).

    Returns:
        ``Serialization`` (one segment per recording) with extras ``code``, ``grid_coord``
        ``(N, 3)`` = (x, y, time cell), ``batch``, ``depth`` and ``p``. Host syncs: checks.
        Under ``torch.export`` the custom op ``geossm::serialize_events`` (no extras: the
        checks and codes run at run time).
    """
    sensor = _check_sensor(sensor_size)
    _positive("time_scale", time_scale)
    cols = as_tensors(events)
    if tracing():
        order_, inverse, cu = serialize_events_op(cols["x"], cols["y"], cols["t"], cols["p"],
                                                  batch, list(sensor), float(time_scale),
                                                  order, depth, per_sample)
        return _unchecked(order_, inverse, cu)
    if per_sample and depth is not None:
        raise ValueError(f"depth: per_sample=True gives every recording its own depth; got "
                         f"depth={depth!r} too")
    per_sample = per_sample and batch is not None
    dev = cols["t"].device
    x, y, p = _pixels(cols, sensor, torch)
    t = cols["t"]
    t_min = _sample_min(t, batch) if per_sample else t.min() if t.numel() else 0
    tcell = (torch.floor((t - t_min).to(torch.float64) * time_scale).long()
             if t.numel() else t.long())
    grid = torch.stack([x, y, tcell], 1).to(dev)
    if per_sample:
        depth = sample_depths(grid, batch)
    ser = serialize_grid(grid, order, batch, depth)
    return _unchecked(ser.order, ser.inverse, ser.cu_seqlens, {**ser.extras, "p": p})


def _sample_min(t: Tensor, batch: Tensor) -> Tensor:
    """``(N,)`` the smallest ``t`` of each event's recording."""
    n_rec = int(batch.max()) + 1 if batch.numel() else 0
    lo = torch.full((n_rec,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=t.device)
    lo = lo.scatter_reduce(0, batch.long(), t.long(), "amin", include_self=True)
    return lo[batch.long()]
