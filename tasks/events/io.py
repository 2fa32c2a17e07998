"""Event-camera file readers: one structured array ``(x, y, t, p)`` per recording.

``read_events(path, format=None)`` returns a ``Recording(events, sensor_size)``: ``events`` is a
numpy structured array of ``EVENT_DTYPE`` (tonic's convention: ``x, y`` int16, ``t`` int64 in
microseconds, ``p`` bool), sorted by ``t`` (stable, so simultaneous events keep file order);
``sensor_size`` is ``(W, H, 2)`` when the file states its geometry, else ``None``.
``iter_events(path, format=None, chunk_size=...)`` yields the same events in file order as
chunks of at most ``chunk_size`` events without holding the file in memory (a decoder's state -
time base, row address - is carried from chunk to chunk; each chunk is sorted on its own).

Formats (``format=None`` picks by extension, then by the header):

============  ==========================================================================
``nmnist``    N-MNIST / N-Caltech101 ``.bin``: 5 bytes per event: x, y, then bit 7 of byte 2
              = polarity and a 23-bit big-endian timestamp over bytes 2-4 (µs).
``evt2``      Prophesee EVT 2.0 ``.raw``: ``%`` text header, 32-bit little-endian words; type
              = bits 31-28: CD_OFF 0x0 / CD_ON 0x1 (t low 6 bits 27-22, x 21-11, y 10-0),
              EVT_TIME_HIGH 0x8 (t bits 33-6 in 27-0), EXT_TRIGGER 0xA, OTHERS 0xE,
              CONTINUED 0xF.
``evt3``      Prophesee EVT 3.0 ``.raw``: 16-bit words; type = bits 15-12: EVT_ADDR_Y 0x0,
              EVT_ADDR_X 0x2 (pol bit 11, x 10-0), VECT_BASE_X 0x3, VECT_12 0x4, VECT_8 0x5,
              EVT_TIME_LOW 0x6, CONTINUED_4 0x7, EVT_TIME_HIGH 0x8, EXT_TRIGGER 0xA,
              OTHERS 0xE, CONTINUED_12 0xF; 24-bit time, wrap-around every 2^24 µs.
``dat``       Prophesee ``.dat``: ``%`` header, then event type and size bytes, then 8-byte
              events ``uint32 t``, ``uint32 data`` (v2: x 0-13, y 14-27, p 28-31; v1: x 0-8,
              y 9-16, p 17).
``aedat4``    iniVation AEDAT 4.0: ``#!AER-DAT4.0\\r\\n``, an IOHeader flatbuffer, then packets
              ``int32 stream id, int32 size`` + (LZ4 / Zstd compressed) flatbuffers; event
              packets (``EVTS``) hold ``Event {int64 t; int16 x; int16 y; bool on}`` structs.
``aedat3``    iniVation AEDAT 3.1 (DVS128 Gesture): ``#`` text header, packets with a 28-byte
              header; polarity events (type 1) of 8 bytes ``uint32 data`` (valid bit 0,
              polarity bit 1, y bits 2-16, x bits 17-31) and ``int32 t`` (+ overflow << 31).
``es``        Event Stream (neuromorphic-paris): ``Event Stream`` magic, version, type (DVS 1,
              ATIS 2), width / height, then byte-coded time deltas and events.
``npy``       ``.npy`` structured array with fields x, y, t, p, or an ``(N, 4)`` array.
``npz``       ``events`` (structured) or ``x, y, t, p`` arrays; optional ``sensor_size``.
``hdf5``      ``events/x``, ``events/y``, ``events/t``, ``events/p`` datasets (h5py); optional
              ``width`` / ``height`` or ``sensor_size`` attributes on the file or the group.
============  ==========================================================================

Truncated or malformed input raises ``EventFileError`` (a ``ValueError``) naming the file and
the byte offset where decoding failed; nothing returns a silently shortened result.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])

FORMATS = ("nmnist", "evt2", "evt3", "dat", "aedat4", "aedat3", "es", "npy", "npz", "hdf5")

_EXTENSIONS = {".bin": "nmnist", ".dat": "dat", ".aedat4": "aedat4", ".aedat": "aedat3",
               ".es": "es", ".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5",
               ".hdf": "hdf5"}

DEFAULT_CHUNK = 1 << 20


class EventFileError(ValueError):
    """A malformed or truncated event file; the message names the file and the byte offset."""

    def __init__(self, path: str | os.PathLike, offset: int | None, message: str):
        self.path, self.offset = str(path), offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {message}")


class Recording(NamedTuple):
    """``events`` (N,) of ``EVENT_DTYPE`` sorted by ``t``; ``sensor_size`` ``(W, H, 2)`` or None."""

    events: np.ndarray
    sensor_size: tuple[int, int, int] | None


def make_events(x, y, t, p) -> np.ndarray:
    """A structured array of ``EVENT_DTYPE`` from four equal-length 1-D columns."""
    n = len(t)
    out = np.empty(n, dtype=EVENT_DTYPE)
    out["x"], out["y"], out["t"], out["p"] = x, y, t, np.asarray(p) > 0
    return out


def _sorted(events: np.ndarray) -> np.ndarray:
    t = events["t"]
    if t.size > 1 and bool(np.any(t[1:] < t[:-1])):
        return events[np.argsort(t, kind="stable")]
    return events


# ------------------------------------------------------------------------------ public API

def detect_format(path: str | os.PathLike) -> str:
    """The format name of ``path`` (one of ``FORMATS``), from its extension and header.

    ``.raw`` files are EVT 2.0 or 3.0 by their ``% evt`` / ``% format`` header line; ``.bin``
    and unknown extensions are checked for the AEDAT4 / Event Stream / ``%`` header magic.
    Raises ``ValueError`` when nothing matches.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"#!AER-DAT3"):
        return "aedat3"
    if head.startswith(b"Event Stream"):
        return "es"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    suffix = path.suffix.lower()
    if suffix == ".raw" or head.startswith(b"%"):
        header = _text_header(path)[0]
        fmt = _raw_kind(header)
        if fmt is not None:
            return fmt
        if suffix == ".dat":
            return "dat"
        if suffix == ".raw":
            raise ValueError(f"{path}: a .raw file without an 'evt 2.0' / 'evt 3.0' / "
                             "'format EVT2|EVT3' header line; pass format='evt2' or 'evt3'")
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if head.startswith(b"PK"):
        return "npz"
    raise ValueError(f"{path}: cannot tell the event format from extension '{suffix}' or the "
                     f"header; pass format= one of {', '.join(FORMATS)}")


def read_events(path: str | os.PathLike, format: str | None = None) -> Recording:
    """Read a whole event file (see the module docstring for the formats).

    Args:
        path: the file.
        format: one of ``FORMATS``, default None = ``detect_format(path)``.

    Returns:
        ``Recording(events (N,) EVENT_DTYPE sorted by t, sensor_size (W, H, 2) or None)``.

    Raises:
        FileNotFoundError: no such file.
        EventFileError: truncated or malformed content (names the file and byte offset).
        ValueError: unknown ``format``.
    """
    reader = _open(path, format)
    chunks = list(reader.chunks(DEFAULT_CHUNK * 4))
    events = np.concatenate(chunks) if chunks else np.empty(0, EVENT_DTYPE)
    return Recording(_sorted(events), reader.sensor_size)


def iter_events(path: str | os.PathLike, format: str | None = None,
                chunk_size: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Stream a file as chunks ``(n <= chunk_size,)`` of ``EVENT_DTYPE`` in file order.

    Memory stays ``O(chunk_size)`` for every binary format (whole-file formats - ``npz`` - are
    memory-mapped or loaded lazily where the container allows it). Each chunk is sorted by
    ``t``; consecutive chunks of a time-ordered file are ordered too.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    reader = _open(path, format)
    for chunk in reader.chunks(int(chunk_size)):
        yield _sorted(chunk)


def sensor_size_of(path: str | os.PathLike, format: str | None = None
                   ) -> tuple[int, int, int] | None:
    """The ``(W, H, 2)`` the file's header states, without decoding events (None if none)."""
    return _open(path, format).sensor_size


def _open(path: str | os.PathLike, format: str | None):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    if format is None:
        format = detect_format(path)
    if format not in _READERS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)} or None, got {format!r}")
    return _READERS[format](path)


# -------------------------------------------------------------------------- shared helpers

def _text_header(path: Path, prefix: bytes = b"%") -> tuple[list[str], int]:
    """Lines of a text header whose lines start with ``prefix``; returns (lines, body offset).

    The header ends at the first line not starting with ``prefix`` or right after a line
    ``<prefix> end``.
    """
    lines, offset = [], 0
    with open(path, "rb") as f:
        while True:
            pos = f.tell()
            first = f.read(1)
            if first != prefix[:1]:
                offset = pos
                break
            line = first + f.readline()
            lines.append(line.decode("latin-1").rstrip("\r\n"))
            if line[1:].strip().lower() == b"end":
                offset = f.tell()
                break
    return lines, offset


def _raw_kind(header: list[str]) -> str | None:
    for line in header:
        low = line.lower()
        m = re.search(r"format\s+evt\s*([23])", low) or re.search(r"^%\s*evt\s+([23])", low)
        if m:
            return f"evt{m.group(1)}"
    return None


def _geometry(header: list[str]) -> tuple[int, int, int] | None:
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


class _Reader:
    """One open file: ``sensor_size`` and ``chunks(n)`` yielding ``EVENT_DTYPE`` arrays."""

    sensor_size: tuple[int, int, int] | None = None

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size

    def error(self, offset: int | None, message: str) -> EventFileError:
        return EventFileError(self.path, offset, message)

    def chunks(self, n: int) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _records(self, start: int, record: int, n: int, what: str) -> Iterator[tuple[int, bytes]]:
        """Raw fixed-size records from ``start``: ``(offset, bytes of <= n records)``; raises
        on a trailing partial record (a truncated file)."""
        body = self.size - start
        if body < 0:
            raise self.error(self.size, f"file ends inside its header (expected data from "
                                        f"byte {start})")
        if body % record:
            bad = start + body - body % record
            raise self.error(bad, f"truncated {what}: {body % record} trailing byte(s), "
                                  f"expected whole {record}-byte records")
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            while True:
                buf = f.read(record * n)
                if not buf:
                    return
                if len(buf) % record:  # the file shrank while being read
                    raise self.error(offset + len(buf) - len(buf) % record,
                                     f"truncated {what}: file ended inside a record")
                yield offset, buf
                offset += len(buf)


# ---------------------------------------------------------------------------- N-MNIST .bin

class _NMNIST(_Reader):
    """N-MNIST / N-Caltech101 binary (5 bytes per event); the file states no geometry.

    As in the dataset authors' reader, a record with ``y == 240`` is a timestamp-overflow
    marker, not an event: it adds 2^13 µs to every later timestamp.
    """

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        overflows = 0
        for _, buf in self._records(0, 5, n, "N-MNIST event"):
            b = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
            t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
            marker = b[:, 1] == 240
            t = t + ((overflows + np.cumsum(marker)) << 13)
            overflows += int(marker.sum())
            keep = ~marker
            yield make_events(b[keep, 0], b[keep, 1], t[keep], b[keep, 2] >> 7)




# ----------------------------------------------------------------------- Prophesee EVT 2.0

_EVT2_TYPES = {0x0, 0x1, 0x8, 0xA, 0xE, 0xF}


class _EVT2(_Reader):
    """Prophesee EVT 2.0: 32-bit words after a ``%`` header.

    Events before the first EVT_TIME_HIGH word have no time base and are dropped (as the
    Metavision decoder does). A decrease of the 28-bit time-high counter is a wrap-around of
    the 34-bit timestamp and adds 2^34 µs.
    """

    def __init__(self, path: Path):
        super().__init__(path)
        header, self.start = _text_header(path)
        self.sensor_size = _geometry(header)

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


# ----------------------------------------------------------------------- Prophesee EVT 3.0

class _EVT3(_Reader):
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
        header, self.start = _text_header(path)
        self.sensor_size = _geometry(header)

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


# ---------------------------------------------------------------------------- Prophesee .dat

class _DAT(_Reader):
    """Prophesee ``.dat`` (CD events): ``%`` header with ``Version``, ``Width``, ``Height``."""

    def __init__(self, path: Path):
        super().__init__(path)
        header, start = _text_header(path)
        self.version = 2
        for line in header:
            m = re.match(r"%\s*version\s+(\d+)", line.lower())
            if m:
                self.version = int(m.group(1))
        self.sensor_size = _geometry(header)
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


# ------------------------------------------------------------------------------ AEDAT 4.0

def _fb_table(buf: bytes, pos: int) -> tuple[int, list[int]]:
    """Flatbuffer table at ``pos``: (pos, field offsets relative to it, 0 = absent)."""
    import struct
    vt = pos - struct.unpack_from("<i", buf, pos)[0]
    vsize = struct.unpack_from("<H", buf, vt)[0]
    return pos, list(struct.unpack_from(f"<{(vsize - 4) // 2}H", buf, vt + 4))


class _AEDAT4(_Reader):
    """iniVation AEDAT 4.0: IOHeader flatbuffer, then ``(int32 stream id, int32 size)`` packets
    of size-prefixed flatbuffers, LZ4- or Zstd-framed as the header says. Only streams whose
    ``typeIdentifier`` is ``EVTS`` are decoded (frames, IMU and triggers are skipped)."""

    MAGIC = b"#!AER-DAT4.0\r\n"

    def __init__(self, path: Path):
        import struct
        super().__init__(path)
        with open(path, "rb") as f:
            head = f.read(len(self.MAGIC) + 4)
            if not head.startswith(self.MAGIC):
                raise self.error(0, f"not an AEDAT 4.0 file (expected magic {self.MAGIC!r}, got "
                                    f"{head[:len(self.MAGIC)]!r})")
            if len(head) < len(self.MAGIC) + 4:
                raise self.error(len(head), "truncated AEDAT 4.0 header")
            hsize = struct.unpack_from("<i", head, len(self.MAGIC))[0]
            # A corrupt size may be negative (f.read raises) or huge (f.read allocates it).
            hdr = f.read(min(hsize, self.size - len(head))) if hsize > 0 else b""
        if hsize <= 0 or len(hdr) < hsize:
            raise self.error(len(self.MAGIC) + 4 + len(hdr),
                             f"truncated AEDAT 4.0 IOHeader (expected {hsize} bytes)")
        try:
            root = struct.unpack_from("<I", hdr, 0)[0]
            pos, fields = _fb_table(hdr, root)
            get = lambda i: fields[i] if i < len(fields) else 0  # noqa: E731
            self.compression = struct.unpack_from("<i", hdr, pos + get(0))[0] if get(0) else 0
            self.table_pos = struct.unpack_from("<q", hdr, pos + get(1))[0] if get(1) else -1
            info = ""
            if get(2):
                spos = pos + get(2) + struct.unpack_from("<I", hdr, pos + get(2))[0]
                slen = struct.unpack_from("<I", hdr, spos)[0]
                info = hdr[spos + 4: spos + 4 + slen].decode("utf-8", "replace")
        except struct.error as err:
            raise self.error(len(self.MAGIC) + 4, f"malformed AEDAT 4.0 IOHeader ({err})") from err
        if self.compression not in (0, 1, 2, 3, 4):
            raise self.error(len(self.MAGIC) + 4,
                             f"unknown AEDAT 4.0 compression type {self.compression}")
        self.start = len(self.MAGIC) + 4 + hsize
        self.event_streams, self.sensor_size = self._streams(info)

    @staticmethod
    def _streams(info: str) -> tuple[set[int], tuple[int, int, int] | None]:
        import xml.etree.ElementTree as ET
        streams, size = set(), None
        try:
            root = ET.fromstring(info)
        except ET.ParseError:
            return streams, size
        for out in root.iter("node"):
            if out.get("name") != "outInfo":
                continue
            for stream in out.findall("node"):
                attrs = {a.get("key"): (a.text or "") for a in stream.iter("attr")}
                if attrs.get("typeIdentifier") == "EVTS" and stream.get("name", "").isdigit():
                    streams.add(int(stream.get("name")))
                    if "sizeX" in attrs and "sizeY" in attrs and size is None:
                        size = (int(attrs["sizeX"]), int(attrs["sizeY"]), 2)
        return streams, size

    def _decompress(self, data: bytes, offset: int) -> bytes:
        try:
            if self.compression in (1, 2):
                import importlib

                from geossm._compat import require
                require("lz4", "AEDAT 4.0 LZ4 packets")
                return importlib.import_module("lz4.frame").decompress(data)
            if self.compression in (3, 4):
                from geossm._compat import require
                zstd = require("zstandard", "AEDAT 4.0 Zstd packets")
                return zstd.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            raise
        except Exception as err:  # lz4 / zstd raise their own error types
            raise self.error(offset, f"cannot decompress AEDAT 4.0 packet ({err})") from err
        return data

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        import struct
        end = self.table_pos if self.table_pos and self.table_pos > 0 else self.size
        pending: list[np.ndarray] = []
        count = 0
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start
            while offset < end:
                head = f.read(8)
                if len(head) < 8:
                    raise self.error(offset, "truncated AEDAT 4.0 packet header "
                                             f"({len(head)} of 8 bytes)")
                sid, size = struct.unpack("<ii", head)
                data = f.read(min(size, self.size - offset - 8)) if size >= 0 else b""
                if size < 0 or len(data) < size:
                    raise self.error(offset, f"truncated AEDAT 4.0 packet: stream {sid} declares "
                                             f"{size} bytes, {len(data)} remain")
                if not self.event_streams or sid in self.event_streams:
                    ev = self._events(self._decompress(data, offset + 8), offset + 8)
                    if ev is not None:
                        pending.append(ev)
                        count += len(ev)
                        if count >= n:
                            merged = np.concatenate(pending)
                            for i in range(0, len(merged) - len(merged) % n, n):
                                yield merged[i:i + n]
                            rest = merged[len(merged) - len(merged) % n:]
                            pending, count = ([rest], len(rest)) if len(rest) else ([], 0)
                offset += 8 + size
        if pending:
            yield np.concatenate(pending)

    def _events(self, buf: bytes, offset: int) -> np.ndarray | None:
        import struct
        try:
            # Size-prefixed flatbuffer: uint32 size, uint32 root offset, 4-byte identifier.
            if buf[8:12] != b"EVTS":
                return None
            body = buf[4:]
            pos, fields = _fb_table(body, struct.unpack_from("<I", body, 0)[0])
            if not fields or not fields[0]:
                return np.empty(0, EVENT_DTYPE)
            vpos = pos + fields[0] + struct.unpack_from("<I", body, pos + fields[0])[0]
            count = struct.unpack_from("<I", body, vpos)[0]
            if vpos + 4 + 16 * count > len(body):
                raise struct.error(f"event vector of {count} events overruns the packet")
            rec = np.frombuffer(body, dtype=np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"),
                                                      ("on", "u1"), ("pad", "V3")]),
                                count=count, offset=vpos + 4)
        except struct.error as err:
            raise self.error(offset, f"malformed AEDAT 4.0 event packet ({err})") from err
        if self.sensor_size is not None and count:
            w, h, _ = self.sensor_size
            if (rec["x"].min() < 0 or rec["x"].max() >= w or rec["y"].min() < 0
                    or rec["y"].max() >= h):
                # LZ4 frames carry no checksum here: a corrupt packet shows as stray pixels.
                raise self.error(offset, f"malformed AEDAT 4.0 event packet: coordinates "
                                         f"outside the {w}x{h} sensor")
        return make_events(rec["x"], rec["y"], rec["t"], rec["on"])


# ------------------------------------------------------------------------------ AEDAT 3.1

class _AEDAT3(_Reader):
    """iniVation AEDAT 3.1 (DVS128 Gesture): ``#`` text header, then packets of a 28-byte
    header (``int16 type, int16 source, int32 size, int32 ts offset, int32 ts overflow, int32
    capacity, int32 number, int32 valid``) and ``number * size`` bytes. Polarity packets
    (type 1) give 8-byte events; only valid events are kept; t = overflow << 31 | ts."""

    def __init__(self, path: Path):
        super().__init__(path)
        header, self.start = _text_header(path, b"#")
        self.sensor_size = None
        for line in header:
            m = re.search(r"(dvs128|davis\s*240|davis\s*346)", line.lower())
            if m:
                self.sensor_size = {"dvs128": (128, 128, 2), "davis240": (240, 180, 2),
                                    "davis346": (346, 260, 2)}[m.group(1).replace(" ", "")]

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        import struct
        pending, count = [], 0
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start
            while offset < self.size:
                head = f.read(28)
                if len(head) < 28:
                    raise self.error(offset, f"truncated AEDAT 3.1 packet header ({len(head)} "
                                             "of 28 bytes)")
                etype, _, esize, _, overflow, _, number, _ = struct.unpack("<hhiiiiii", head)
                if esize <= 0 or number < 0:
                    raise self.error(offset, f"malformed AEDAT 3.1 packet header (event size "
                                             f"{esize}, number {number})")
                # Compared before reading: a corrupt header may declare up to 2^62 bytes, which
                # f.read would try to allocate.
                remaining = self.size - offset - 28
                data = f.read(min(esize * number, max(remaining, 0)))
                if len(data) < esize * number:
                    raise self.error(offset, f"truncated AEDAT 3.1 packet: {number} events of "
                                             f"{esize} bytes declared, {len(data)} bytes remain")
                if etype == 1:
                    rec = np.frombuffer(data, dtype=np.dtype([("d", "<u4"), ("t", "<i4")]
                                                             + ([("pad", f"V{esize - 8}")]
                                                                if esize > 8 else [])))
                    d = rec["d"].astype(np.int64)
                    ok = (d & 1) == 1
                    d = d[ok]
                    t = (np.int64(overflow) << 31) | rec["t"][ok].astype(np.int64)
                    pending.append(make_events((d >> 17) & 0x7FFF, (d >> 2) & 0x7FFF, t,
                                               (d >> 1) & 1))
                    count += int(ok.sum())
                    if count >= n:
                        yield np.concatenate(pending)
                        pending, count = [], 0
                offset += 28 + esize * number
        if pending:
            yield np.concatenate(pending)


# ------------------------------------------------------------------------- Event Stream .es

def _es_decode(buf, kind, t, final):
    """Sequential Event Stream state machine over ``buf`` (uint8) from time ``t``.

    Returns ``(x, y, t, p, n, t_end, consumed, error)``: ``n`` decoded events, the bytes
    consumed (an event cut by the buffer's end is left for the next call unless ``final``),
    and ``error`` = index of the first byte of an incomplete event when ``final``, else -1.
    ``kind`` 1 = DVS (7-bit time delta, overflow 0xFF adds 127, reset 0xFE), 2 = ATIS (6-bit
    delta, ``0b111111xx``: reset if ``xx == 0`` else ``xx * 63``; threshold crossings skipped).
    """
    m = buf.shape[0]
    xs = np.empty(m // 5 + 1, np.int64)
    ys = np.empty(m // 5 + 1, np.int64)
    ts = np.empty(m // 5 + 1, np.int64)
    ps = np.empty(m // 5 + 1, np.int64)
    n = 0
    i = 0
    while i < m:
        b = buf[i]
        if kind == 1:
            if b == 0xFF:
                t += 127
                i += 1
                continue
            if b == 0xFE:
                i += 1
                continue
        else:
            if b >= 0xFC:
                t += 63 * (b & 0x3)
                i += 1
                continue
        if i + 5 > m:
            if final:
                return xs[:n], ys[:n], ts[:n], ps[:n], n, t, i, i
            return xs[:n], ys[:n], ts[:n], ps[:n], n, t, i, -1
        if kind == 1:
            t += b >> 1
            pol = b & 1
            keep = True
        else:
            t += b >> 2
            pol = (b >> 1) & 1
            keep = (b & 1) == 0
        if keep:
            xs[n] = buf[i + 1] | (np.int64(buf[i + 2]) << 8)
            ys[n] = buf[i + 3] | (np.int64(buf[i + 4]) << 8)
            ts[n] = t
            ps[n] = pol
            n += 1
        i += 5
    return xs[:n], ys[:n], ts[:n], ps[:n], n, t, m, -1


_es_decode_jit = None


def _es_kernel():
    global _es_decode_jit
    if _es_decode_jit is None:
        import numba
        # cache=False: the repository may be read-only (CI); compiling takes about a second.
        _es_decode_jit = numba.njit(_es_decode)
    return _es_decode_jit


class _ES(_Reader):
    """Event Stream 2.x (DVS and ATIS streams; generic, display and colour streams carry no
    polarity events and are refused)."""

    def __init__(self, path: Path):
        super().__init__(path)
        with open(path, "rb") as f:
            head = f.read(20)
        if not head.startswith(b"Event Stream"):
            raise self.error(0, f"not an Event Stream file (magic {head[:12]!r})")
        if len(head) < 16:
            raise self.error(len(head), "truncated Event Stream header")
        major = head[12]
        if major != 2:
            raise self.error(12, f"unsupported Event Stream version {major}.{head[13]}.{head[14]} "
                                 "(expected 2.x)")
        self.kind = head[15]
        if self.kind not in (1, 2):
            raise self.error(15, f"Event Stream type {self.kind} has no DVS/ATIS events "
                                 "(expected 1 = DVS or 2 = ATIS)")
        if len(head) < 20:
            raise self.error(len(head), "truncated Event Stream header (no width / height)")
        w = head[16] | head[17] << 8
        h = head[18] | head[19] << 8
        self.sensor_size = (w, h, 2)
        self.start = 20

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        decode = _es_kernel()
        t = 0
        carry = b""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start  # file offset of carry[0]
            while True:
                data = f.read(5 * n)
                final = not data
                buf = np.frombuffer(carry + data, dtype=np.uint8)
                if final and not len(buf):
                    return
                x, y, ts, p, _, t, used, err = decode(buf, self.kind, t, final)
                if err >= 0:
                    raise self.error(offset + err, f"truncated Event Stream event "
                                                   f"({len(buf) - err} of 5 bytes)")
                if len(ts):
                    yield make_events(x, y, ts, p)
                carry = bytes(buf[used:])
                offset += used
                if final:
                    return


# ------------------------------------------------------------------------- NumPy and HDF5

def _from_array(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.dtype.names:
        missing = [f for f in "xytp" if f not in arr.dtype.names]
        if missing:
            raise EventFileError(path, None, f"{what}: structured array lacks fields {missing} "
                                             f"(has {arr.dtype.names})")
        return make_events(arr["x"], arr["y"], arr["t"], arr["p"])
    if arr.ndim == 2 and arr.shape[1] == 4:
        return make_events(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
    raise EventFileError(path, None, f"{what}: expected a structured array with fields x, y, "
                                     f"t, p or shape (N, 4), got dtype {arr.dtype} shape "
                                     f"{arr.shape}")


class _NPY(_Reader):
    def chunks(self, n: int) -> Iterator[np.ndarray]:
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise self.error(None, f"cannot read .npy ({err})") from err
        for i in range(0, len(arr), n):
            yield _from_array(np.asarray(arr[i:i + n]), self.path, ".npy")


class _NPZ(_Reader):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "sensor_size" in z.files:
                    s = [int(v) for v in np.asarray(z["sensor_size"]).reshape(-1)]
                    self.sensor_size = (s[0], s[1], s[2] if len(s) > 2 else 2)
        except (ValueError, OSError, EOFError) as err:
            raise self.error(None, f"cannot read .npz ({err})") from err

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if "events" in z.files:
                    ev = _from_array(z["events"], self.path, ".npz 'events'")
                elif all(k in z.files for k in "xytp"):
                    ev = make_events(z["x"], z["y"], z["t"], z["p"])
                else:
                    raise self.error(None, f".npz: expected an 'events' array or 'x', 'y', 't', "
                                           f"'p' arrays, got {z.files}")
        except (OSError, EOFError, __import__("zipfile").BadZipFile) as err:
            raise self.error(None, f"cannot read .npz ({err})") from err
        for i in range(0, len(ev), n):
            yield ev[i:i + n]


class _HDF5(_Reader):
    def __init__(self, path: Path):
        from geossm._compat import require
        super().__init__(path)
        self.h5py = require("h5py", "HDF5 event files")
        with self._file() as f:
            if "events" not in f:
                raise self.error(None, f"HDF5: expected a group 'events' with x, y, t, p "
                                       f"datasets, got keys {list(f.keys())}")
            g = f["events"]
            missing = [k for k in "xytp" if k not in g]
            if missing:
                raise self.error(None, f"HDF5: group 'events' lacks datasets {missing}")
            lengths = {k: g[k].shape[0] for k in "xytp"}
            if len(set(lengths.values())) != 1:
                raise self.error(None, f"HDF5: events/x, y, t, p differ in length {lengths}")
            self.length = lengths["t"]
            for node in (g, f):
                a = dict(node.attrs)
                if "sensor_size" in a:
                    s = [int(v) for v in np.asarray(a["sensor_size"]).reshape(-1)]
                    self.sensor_size = (s[0], s[1], s[2] if len(s) > 2 else 2)
                    break
                if "width" in a and "height" in a:
                    self.sensor_size = (int(a["width"]), int(a["height"]), 2)
                    break

    def _file(self):
        try:
            return self.h5py.File(self.path, "r")
        except OSError as err:
            raise self.error(None, f"cannot open HDF5 ({err})") from err

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        with self._file() as f:
            g = f["events"]
            for i in range(0, self.length, n):
                try:
                    cols = [g[k][i:i + n] for k in "xytp"]
                except OSError as err:
                    raise self.error(None, f"HDF5: cannot read events {i}..{i + n} ({err})"
                                     ) from err
                yield make_events(*cols)


_READERS: dict[str, Any] = {"nmnist": _NMNIST, "evt2": _EVT2, "evt3": _EVT3, "dat": _DAT,
                            "aedat4": _AEDAT4, "aedat3": _AEDAT3, "es": _ES, "npy": _NPY,
                            "npz": _NPZ, "hdf5": _HDF5}

__all__ = ["EVENT_DTYPE", "FORMATS", "EventFileError", "Recording", "read_events",
           "iter_events", "detect_format", "sensor_size_of", "make_events"]
