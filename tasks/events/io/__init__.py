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

One reader module per vendor format: ``nmnist``, ``prophesee`` (``evt2``, ``evt3``, ``dat``),
``aedat`` (``aedat4``, ``aedat3``), ``eventstream`` (``es``) and ``arrays`` (``npy``, ``npz``,
``hdf5``); ``base`` holds what they share (``EVENT_DTYPE``, ``Reader``, ``EventFileError``).
This module picks the reader (``READERS``, ``detect_format``) and sorts what it yields.

Truncated or malformed input raises ``EventFileError`` (a ``ValueError``) naming the file and
the byte offset where decoding failed; nothing returns a silently shortened result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .aedat import AEDAT3Reader, AEDAT4Reader
from .arrays import HDF5Reader, NPYReader, NPZReader
from .base import EVENT_DTYPE, EventFileError, Reader, Recording, make_events, text_header
from .eventstream import EventStreamReader
from .nmnist import NMNISTReader
from .prophesee import DATReader, EVT2Reader, EVT3Reader, raw_kind


FORMATS = ("nmnist", "evt2", "evt3", "dat", "aedat4", "aedat3", "es", "npy", "npz", "hdf5")

_EXTENSIONS = {".bin": "nmnist", ".dat": "dat", ".aedat4": "aedat4", ".aedat": "aedat3",
               ".es": "es", ".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5",
               ".hdf": "hdf5"}

DEFAULT_CHUNK = 1 << 20

#: Format name -> reader class (one module per vendor format).
READERS: dict[str, type[Reader]] = {
    "nmnist": NMNISTReader, "evt2": EVT2Reader, "evt3": EVT3Reader, "dat": DATReader,
    "aedat4": AEDAT4Reader, "aedat3": AEDAT3Reader, "es": EventStreamReader, "npy": NPYReader,
    "npz": NPZReader, "hdf5": HDF5Reader}


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
        header = text_header(path)[0]
        fmt = raw_kind(header)
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


def _open(path: str | os.PathLike, format: str | None) -> Reader:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    if format is None:
        format = detect_format(path)
    if format not in READERS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)} or None, got {format!r}")
    return READERS[format](path)


__all__ = ["EVENT_DTYPE", "FORMATS", "READERS", "EventFileError", "Recording", "read_events",
           "iter_events", "detect_format", "sensor_size_of", "make_events"]
