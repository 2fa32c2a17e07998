"""What every event-file reader shares: the event dtype, the error type, the ``Recording``
result, text headers, and ``Reader`` (one open file read as fixed-size records or a stream)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np


EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


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


def text_header(path: Path, prefix: bytes = b"%") -> tuple[list[str], int]:
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


class Reader:
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
