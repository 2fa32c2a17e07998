"""Prophesee recordings: EVT 2.0 and EVT 3.0 ``.raw`` (32- / 16-bit words) and ``.dat`` (8-byte
CD events), each after a ``%`` text header that may state the sensor geometry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import Reader, make_events, text_header


def raw_kind(header: list[str]) -> str | None:
    """``"evt2"`` / ``"evt3"`` from a ``.raw`` header's ``% evt 2.0`` or ``% format EVT3`` line,
    else None."""
    for line in header:
        low = line.lower()
        m = re.search(r"format\s+evt\s*([23])", low) or re.search(r"^%\s*evt\s+([23])", low)
        if m:
            return f"evt{m.group(1)}"
    return None


def header_geometry(header: list[str]) -> tuple[int, int, int] | None:
    """``(W, H, 2)`` from a ``% geometry WxH`` line or ``width`` / ``height`` entries, else None."""
    width = height = None
    for line in header:
        low = line.lower()
        m = re.search(r"geometry\s+(\d+)\s*x\s*(\d+)", low)
        if m:
            return int(m.group(1)), int(m.group(2)), 2
        m = re.search(r"width\s*[=\s]\s*(\d+)", low)
        if m:
            width = int(m.group(1))
        m = re.search(r"height\s*[=\s]\s*(\d+)", low)
        if m:
            height = int(m.group(1))
    if width and height:
        return width, height, 2
    return None


_EVT2_TYPES = {0x0, 0x1, 0x8, 0xA, 0xE, 0xF}


class EVT2Reader(Reader):
    """Prophesee EVT 2.0: 32-bit words after a ``%`` header.

    Events before the first EVT_TIME_HIGH word have no time base and are dropped (as the
    Metavision decoder does). A decrease of the 28-bit time-high counter is a wrap-around of
    the 34-bit timestamp and adds 2^34 µs.
    """

    def __init__(self, path: Path):
        super().__init__(path)
        header, self.start = text_header(path)
        self.sensor_size = header_geometry(header)

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        high = -1          # time-high counter in effect (-1: none seen yet)
        wraps = 0
        for offset, buf in self._records(self.start, 4, n, "EVT 2.0 word"):
            w = np.frombuffer(buf, dtype="<u4").astype(np.int64)
            kind = w >> 28
            bad = ~np.isin(kind, list(_EVT2_TYPES))
            if bad.any():
                i = int(np.argmax(bad))
                raise self.error(offset + 4 * i, f"unknown EVT 2.0 event type 0x{int(kind[i]):X} "
                                                 f"in word 0x{int(w[i]):08X}")
            is_th = kind == 0x8
            th = np.where(is_th, w & 0x0FFFFFFF, -1)
            # Wrap-arounds: a time-high value below the previous one (in and across chunks).
            th_vals = th[is_th]
            if th_vals.size:
                prev = np.concatenate([[high], th_vals[:-1]])
                step = (th_vals < prev) & (prev >= 0)
                wrap_at = np.zeros(len(w), np.int64)
                wrap_at[np.nonzero(is_th)[0]] = step
                wrap_cum = wraps + np.cumsum(wrap_at)
                wraps = int(wrap_cum[-1])
            else:
                wrap_cum = np.full(len(w), wraps, np.int64)
            # Forward-fill the time high: index of the latest TIME_HIGH word at or before each.
            idx = np.where(is_th, np.arange(len(w)), -1)
            np.maximum.accumulate(idx, out=idx)
            cur = np.where(idx >= 0, th[np.maximum(idx, 0)], high)
            if th_vals.size:
                high = int(th_vals[-1])
            cd = (kind <= 0x1) & (cur >= 0)
            wc = w[cd]
            t = ((cur[cd] + (wrap_cum[cd] << 28)) << 6) | ((wc >> 22) & 0x3F)
            yield make_events((wc >> 11) & 0x7FF, wc & 0x7FF, t, kind[cd])


class EVT3Reader(Reader):
    """Prophesee EVT 3.0: 16-bit words after a ``%`` header, decoded vectorised.

    Every word sees the latest ``EVT_ADDR_Y`` (row), ``EVT_TIME_HIGH`` / ``EVT_TIME_LOW``
    (time) and ``VECT_BASE_X`` (column base and polarity, advanced by 12 / 8 after each
    ``VECT_12`` / ``VECT_8``) before it: forward fills over the word array, with the state at
    the end of a chunk carried into the next. A decrease of the 12-bit time high is a wrap of
    the 24-bit timestamp (+2^24 µs). Events before the first time high and row are dropped.
    """

    _KNOWN = {0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xA, 0xE, 0xF}

    def __init__(self, path: Path):
        super().__init__(path)
        header, self.start = text_header(path)
        self.sensor_size = header_geometry(header)

    @staticmethod
    def _ffill(mask: np.ndarray, values: np.ndarray, initial: int) -> np.ndarray:
        idx = np.where(mask, np.arange(len(mask)), -1)
        np.maximum.accumulate(idx, out=idx)
        return np.where(idx >= 0, values[np.maximum(idx, 0)], initial)

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        y0, high, low, base0, pol0, wraps = -1, -1, 0, 0, 0, 0
        for offset, buf in self._records(self.start, 2, 2 * n, "EVT 3.0 word"):
            w = np.frombuffer(buf, dtype="<u2").astype(np.int64)
            kind = w >> 12
            bad = ~np.isin(kind, list(self._KNOWN))
            if bad.any():
                i = int(np.argmax(bad))
                raise self.error(offset + 2 * i, f"unknown EVT 3.0 event type 0x{int(kind[i]):X} "
                                                 f"in word 0x{int(w[i]):04X}")
            m = len(w)
            y = self._ffill(kind == 0x0, w & 0x7FF, y0)
            is_th = kind == 0x8
            th_vals = w[is_th] & 0xFFF
            wrap_at = np.zeros(m, np.int64)
            if th_vals.size:
                prev = np.concatenate([[high], th_vals[:-1]])
                wrap_at[np.nonzero(is_th)[0]] = (th_vals < prev) & (prev >= 0)
            wrap_cum = wraps + np.cumsum(wrap_at)
            th = self._ffill(is_th, w & 0xFFF, high)
            tl = self._ffill(kind == 0x6, w & 0xFFF, low)
            t = ((wrap_cum << 12) + th << 12) | tl
            # Column base: latest VECT_BASE_X plus 12 / 8 per vector word since then.
            is_base = kind == 0x3
            base = self._ffill(is_base, w & 0x7FF, base0)
            pol = self._ffill(is_base, (w >> 11) & 1, pol0)
            step = np.where(kind == 0x4, 12, np.where(kind == 0x5, 8, 0))
            seg = np.maximum.accumulate(np.where(is_base, np.arange(m), -1))
            cum = np.cumsum(step)
            at_base = np.where(seg >= 0, cum[np.maximum(seg, 0)], 0)
            adv_before = cum - step - at_base  # advance from vector words before this one
            xbase = base + adv_before
            valid = (y >= 0) & (th >= 0)
            # Single events.
            single = (kind == 0x2) & valid
            parts = [(w[single] & 0x7FF, y[single], t[single], (w[single] >> 11) & 1)]
            # Vector events: bit i of the mask is column xbase + i.
            for code, bits in ((0x4, 12), (0x5, 8)):
                sel = np.nonzero((kind == code) & valid)[0]
                if sel.size:
                    mask = (w[sel, None] >> np.arange(bits)) & 1  # (V, bits)
                    r, c = np.nonzero(mask)
                    ev = sel[r]
                    parts.append((xbase[ev] + c, y[ev], t[ev], pol[ev]))
            x_, y_, t_, p_ = (np.concatenate(c) for c in zip(*parts))
            order = np.argsort(t_, kind="stable")
            yield make_events(x_[order], y_[order], t_[order], p_[order])
            # Carry the decoder state into the next chunk.
            y0, high, low = int(y[-1]), int(th[-1]), int(tl[-1])
            base0, pol0 = int(base[-1] + adv_before[-1] + step[-1]), int(pol[-1])
            wraps = int(wrap_cum[-1])


class DATReader(Reader):
    """Prophesee ``.dat`` (CD events): ``%`` header with ``Version``, ``Width``, ``Height``."""

    def __init__(self, path: Path):
        super().__init__(path)
        header, start = text_header(path)
        self.version = 2
        for line in header:
            m = re.match(r"%\s*version\s+(\d+)", line.lower())
            if m:
                self.version = int(m.group(1))
        self.sensor_size = header_geometry(header)
        if self.size < start + 2:
            raise self.error(start, f"truncated .dat file: {self.size - start} byte(s) after the "
                                    "header, expected the event type and size bytes")
        with open(path, "rb") as f:
            f.seek(start)
            self.ev_type, self.ev_size = f.read(2)
        if self.ev_size != 8:
            raise self.error(start + 1, f"unsupported .dat event size {self.ev_size} (expected 8)")
        self.start = start + 2

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        if self.version < 2:
            xm, ys, ym, ps = 0x1FF, 9, 0xFF, 17
        else:
            xm, ys, ym, ps = 0x3FFF, 14, 0x3FFF, 28
        for _, buf in self._records(self.start, 8, n, ".dat event"):
            rec = np.frombuffer(buf, dtype="<u4").reshape(-1, 2).astype(np.int64)
            d = rec[:, 1]
            yield make_events(d & xm, (d >> ys) & ym, rec[:, 0], (d >> ps) & (0xF if ps == 28
                                                                              else 1))
